"""Write the measured tables of docs/REPRODUCTION.md from studies' summary.json, beside the paper's.

Usage (from the repository root, after the studies ran):
    .venv/bin/python docs/reproduction.py results/paper-mnist results/cifar10-lenet-reduced ...

Each argument is a study folder (or a folder of per-architecture studies), or ``KEY=FOLDER`` to name a
one-study folder's blocks KEY rather than by its study's name. Each study's tables go between
its own markers, ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` (NAME: KEY, or the study's name), inside
``<!-- tables:start -->`` ... ``<!-- tables:end -->`` of docs/REPRODUCTION.md: a study named here replaces
its own block (or adds one at the end), the others' blocks stay as they were. Where a study's rows carry the
diagnostics (flips, tails, margins, classes), its "where the function moved" table goes between
``<!-- where:NAME -->`` and ``<!-- /where:NAME -->``, and where its runs measured sizes, MACs or latency
(the field's compressors), its cost table between ``<!-- cost:NAME -->`` and ``<!-- /cost:NAME -->``, when
the document holds those markers. The prose around
the tables is written by hand from them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from funclens.report import cost_md

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
    """The studies of ``folder``'s summary.json; a folder without a readable one is refused in one line."""
    try:
        s = json.loads((folder / "summary.json").read_text())
        return s["studies"] if "studies" in s else [s]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"error: {folder} has no readable summary.json ({e.__class__.__name__}); "
                         f"finish the study and run `funclens report {folder}` first") from None


def dev(row: dict) -> str:
    v = f"{row['accuracy_deviation_pct']:.2f}"
    return v + (f" (±{row['accuracy_deviation_std']:.2f})" if row.get("accuracy_deviation_std") is not None else "")


def table(folder: Path) -> str:
    return "\n".join(table_one(s, folder) for s in summaries(folder))


def table_one(s: dict, folder: Path) -> str:
    """The tables of one study's summary ``s``, read from ``folder``, beside the paper's."""
    out = []
    by = {r["setting"]: r for r in s["rows"]}
    # The paper's pruning columns take one scope: the global threshold's rows where the study has them (the
    # fitted presets), else each layer's; the other scope's rows go beyond the grid.
    glob = any(f"global {c}" in by for c in COLS)
    if glob:
        by = {**by, **{c: by[f"global {c}"] for c in COLS if f"global {c}" in by}}
    paper_base, paper = PAPER.get((s["dataset"], s["arch"]), (None, [""] * len(COLS)))
    out.append(f"**{s['arch']} on {s['dataset']}** (study `{s.get('study', '')}`, `{folder}`): base accuracy "
               f"{100 * s['base']['accuracy']:.2f}% here"
               + (f", {paper_base:.2f}% in the paper" if paper_base else "")
               + ("; the pruning columns: one global L1 threshold" if glob else "")
               + ".\n")
    out.append("| | " + " | ".join(COLS) + " |")
    out.append("|---|" + "---|" * len(COLS))
    out.append("| paper: acc. dev. % | " + " | ".join(paper) + " |")
    out.append("| funclens: acc. dev. % | " + " | ".join(dev(by[c]) if c in by else "–" for c in COLS) + " |")
    out.append("| funclens: RFD [95% CI] | " + " | ".join(
        f"{by[c]['rfd']:.2f} [{by[c]['rfd_ci'][0]:.2f}, {by[c]['rfd_ci'][1]:.2f}]" if c in by else "–"
        for c in COLS) + " |")
    out.append("| funclens: verdict | " + " | ".join(by[c]["verdict"] if c in by else "–" for c in COLS) + " |")
    used = {id(by[c]) for c in COLS if c in by}
    extra = [r for r in s["rows"] if id(r) not in used]
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


def _pct(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}"


def _low_margin_share(row: dict, fraction: float = 0.2) -> str:
    """The share of a row's flips (either way) that sit on the base's least sure ``fraction`` of test inputs."""
    m = row.get("flips_by_margin") or {}
    if not m.get("flips"):
        return "–"
    counts = [f * c for f, c in zip(m["flips"], m["count"])]
    low = round(len(counts) * fraction)
    return "–" if sum(counts) == 0 else f"{100 * sum(counts[:low]) / sum(counts):.0f}%"


def _hurt(row: dict) -> str:
    hurt = row.get("classes_hurt") or []
    return ", ".join(f"{h['class']} ({100 * h['accuracy_change']:+.1f}{'*' if h['beyond_independents'] else ''})"
                     for h in hurt[:3]) or "none"


def where(folder: Path) -> dict[str, str]:
    """Per study: where each row's function moved from the base's, from the diagnostics in its summary."""
    out = {}
    for s in summaries(folder):
        if not any("flips_correct_to_wrong" in r for r in s["rows"]):
            continue
        lines = ["| method | setting | flips right→wrong % | flips wrong→right % | McNemar p | KL(base‖m) p99 | "
                 "disagreement %, least sure / surest tenth | flips on the least sure 20% | classes hurt most "
                 "(acc. change, points) |", "|---|---|---|---|---|---|---|---|---|"]
        for r in s["rows"]:
            m = r.get("flips_by_margin") or {"disagreement": [None]}
            kl, p = (r.get("kl_base_model") or {}).get("p99"), r.get("mcnemar_p")
            lines.append(f"| {r['method']} | {r['setting']} | {_pct(r.get('flips_correct_to_wrong'))} | "
                         f"{_pct(r.get('flips_wrong_to_correct'))} | "
                         f"{'–' if p is None else f'{p:.3g}'} | "
                         f"{'–' if kl is None else f'{kl:.3g}'} | "
                         f"{_pct(m['disagreement'][0], 1)} / {_pct(m['disagreement'][-1], 1)} | "
                         f"{_low_margin_share(r)} | {_hurt(r)} |")
        out[s.get("study", "")] = "\n".join(lines)
    return out


def _replace(text: str, begin: str, end: str, body: str, before: str | None = None) -> str:
    """``text`` with what lies between ``begin`` and ``end`` replaced by ``body``; where the markers are not in
    ``text``, the block is added just before ``before`` (or nothing happens when ``before`` is None)."""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return f"{head}{begin}\n{body}\n{end}{rest.split(end, 1)[1]}"
    if before is None:
        return text
    head, tail = text.split(before, 1)
    return f"{head}{begin}\n{body}\n{end}\n\n{before}{tail}"


def main(folders: list[str]) -> None:
    """Write every named study's blocks. An argument ``KEY=FOLDER`` names the blocks of the study in FOLDER by
    KEY instead of the study's name: two runs of one preset (before and after its recipe changed) keep a table
    each."""
    text = DOC.read_text()
    for arg in folders:
        key, _, f = arg.rpartition("=") if "=" in arg else ("", "", arg)
        for s in summaries(Path(f)):
            name = s.get("study", "")
            one = Path(f) / name if (Path(f) / name / "summary.json").is_file() else Path(f)  # per-arch folders
            k = key or name
            text = _replace(text, f"<!-- table:{k} -->", f"<!-- /table:{k} -->", table_one(s, one),
                            before="<!-- tables:end -->")
            body = cost_md([s])
            if body:
                text = _replace(text, f"<!-- cost:{k} -->", f"<!-- /cost:{k} -->", body.rstrip("\n"))
        for name, body in where(Path(f)).items():
            k = key or name
            text = _replace(text, f"<!-- where:{k} -->", f"<!-- /where:{k} -->", body)
    DOC.write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
