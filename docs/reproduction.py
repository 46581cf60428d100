"""Write the measured tables of docs/REPRODUCTION.md from studies' summary.json, beside the paper's.

Usage (from the repository root, after the studies ran):
    .venv/bin/python docs/reproduction.py results/paper-mnist results/cifar10-lenet-reduced ...

Each argument is a study folder (or a folder of per-architecture studies). The tables go between the
markers ``<!-- tables:start -->`` and ``<!-- tables:end -->`` of docs/REPRODUCTION.md; the prose around
them is written by hand from these tables.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DOC = Path(__file__).with_name("REPRODUCTION.md")
COLS = ["alpha=0.1", "alpha=0.5", "alpha=0.9", "16-bit", "8-bit", "10%", "30%", "50%", "70%", "90%"]

# The paper's Tables 1-3 (relative accuracy deviation in %, "(±std)" over 3 student seeds), and the base
# accuracies from their captions and from section 4.2/4.3, copied from
# seed/functional-perspective-paper.md.
PAPER = {
    ("mnist", "lenet"): (99.15, ["-0.178 (±0.057)", "-0.124 (±0.042)", "-0.215 (±0.076)", "-0.07", "-0.05", "-0.07",
                                 "-0.08", "-0.01", "-1.04", "-22.55"]),
    ("cifar10", "lenet"): (63.38, ["8.74 (±0.65)", "8.93 (±0.45)", "8.57 (±0.72)", "-0.62", "-0.33", "-0.25", "-0.60",
                                   "-2.95", "-14.56", "-78.466"]),
    ("cifar10", "resnet50"): (67.37, ["-0.74 (±1.16)", "-3.41 (±1.35)", "0.09 (±0.9)", "0.00", "-0.56", "-0.08",
                                      "0.48", "-0.03", "-0.04", "-85.30"]),
    ("cifar10", "mobilenet_v1"): (68.70, ["-18.25 (±0.56)", "-20.08 (±0.77)", "-21.15 (±1.48)", "0.02", "0.07",
                                          "-16.84", "-83.70", "-85.43", "-83.84", "-85.40"]),
    ("cifar100", "lenet"): (33.0, ["15.64 (±1.56)", "15.71 (±0.51)", "15.63 (±1.56)", "0.00", "-0.16", "-0.13",
                                   "-0.7", "-4", "-32.31", "-85.62"]),
    ("cifar100", "resnet50"): (37.0, ["-5.20 (±3.89)", "0 (±2.55)", "1.56 (±2.43)", "-0.08", "-0.16", "0.05",
                                      "-0.16", "-1.45", "-96.97", "-97.34"]),
    ("cifar100", "mobilenet_v1"): (29.12, ["-26.66 (±1.17)", "-25.63 (±2.66)", "-27.35 (±3.40)", "0.17", "-0.03",
                                           "-36.26", "-95.74", "-96.01", "-96.43", "-96.57"]),
}


def summaries(folder: Path) -> list[dict]:
    s = json.loads((folder / "summary.json").read_text())
    return s["studies"] if "studies" in s else [s]


def dev(row: dict) -> str:
    v = f"{row['accuracy_deviation_pct']:.2f}"
    return v + (f" (±{row['accuracy_deviation_std']:.2f})" if row.get("accuracy_deviation_std") is not None else "")


def table(folder: Path) -> str:
    out = []
    for s in summaries(folder):
        by = {r["setting"]: r for r in s["rows"]}
        paper_base, paper = PAPER.get((s["dataset"], s["arch"]), (None, [""] * len(COLS)))
        out.append(f"**{s['arch']} on {s['dataset']}** (study `{s.get('study', '')}`, `{folder}`): base accuracy "
                   f"{100 * s['base']['accuracy']:.2f}% here"
                   + (f", {paper_base:.2f}% in the paper" if paper_base else "") + ".\n")
        out.append("| | " + " | ".join(COLS) + " |")
        out.append("|---|" + "---|" * len(COLS))
        out.append("| paper: acc. dev. % | " + " | ".join(paper) + " |")
        out.append("| funclens: acc. dev. % | " + " | ".join(dev(by[c]) if c in by else "–" for c in COLS) + " |")
        out.append("| funclens: RFD [95% CI] | " + " | ".join(
            f"{by[c]['rfd']:.2f} [{by[c]['rfd_ci'][0]:.2f}, {by[c]['rfd_ci'][1]:.2f}]" if c in by else "–"
            for c in COLS) + " |")
        out.append("| funclens: verdict | " + " | ".join(by[c]["verdict"] if c in by else "–" for c in COLS) + " |")
        extra = [r for r in s["rows"] if r["setting"] not in COLS]
        if extra:
            out.append("\nBeyond the paper's grid:\n")
            out.append("| method | setting | acc. dev. % | disagreement | RFD [95% CI] | p(closer) | verdict |")
            out.append("|---|---|---|---|---|---|---|")
            for r in extra:
                out.append(f"| {r['method']} | {r['setting']} | {dev(r)} | {r['disagreement']:.4f} | "
                           f"{r['rfd']:.2f} [{r['rfd_ci'][0]:.2f}, {r['rfd_ci'][1]:.2f}] | {r['p_closer']:.3f} | "
                           f"{r['verdict']} |")
        ref = s["reference"]
        out.append(f"\nYardstick: independent models disagree with the base on {100 * ref['independent_mean']:.2f}% "
                   f"of test inputs (std {100 * ref['independent_std']:.2f} points over {ref['pairs']}).\n")
    return "\n".join(out)


def main(folders: list[str]) -> None:
    text = DOC.read_text()
    start, end = "<!-- tables:start -->", "<!-- tables:end -->"
    body = "\n\n".join(table(Path(f)) for f in folders)
    head, rest = text.split(start)
    _, tail = rest.split(end)
    DOC.write_text(f"{head}{start}\n{body}\n{end}{tail}")


if __name__ == "__main__":
    main(sys.argv[1:])
