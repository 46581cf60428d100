"""Tables, figures, ``summary.json``, ``report.md`` and ``report.html`` of a study, from its store alone.

Nothing here builds a model: every number comes from the stored predictions and metrics, so
``funclens report OUT`` can redo any report, whichever executor or machine trained the runs.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from funclens import __version__, metrics, paths
from funclens.gallery import add_gallery
from funclens.pairwise import pairwise
from funclens.plan import ROLES
from funclens.rfd import CI, INDEPENDENT_ABOVE, N_BOOT

_CI = f"{CI:.0%}"  # the intervals' coverage, as table heads print it
from funclens.store import Store, atomic_write_bytes, atomic_write_text
from funclens.summary import COST_KEYS, RunView, StudyView, analyse, load_study

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# ---------------------------------------------------------------- tables

def _column(row: dict) -> str:
    """A row's column head: its setting; a custom compressor's name says so, as it may read like a scheme.

    Example:
        >>> _column({"method": "quantize", "setting": "8-bit"}), _column({"method": "custom", "setting": "8-bit"})
        ('8-bit', 'custom 8-bit')
    """
    return f"custom {row['setting']}" if row["method"] == "custom" else row["setting"]


def paper_columns(summary: dict) -> list[str]:
    """Column heads in the paper's order: alphas, quantization, pruning amounts (then fine-tuned), then custom
    compressors."""
    return [_column(r) for r in summary["rows"] if r["method"] in ("distill", "quantize", "prune", "custom")]


def _num(v: float | None, spec: str) -> str:
    """A number as ``spec`` formats it; empty for a value that could not be computed (``None``)."""
    return "" if v is None else format(v, spec)


def _fmt_dev(row: dict) -> str:
    v = _num(row["accuracy_deviation_pct"], ".2f")
    return v + (f" (±{row['accuracy_deviation_std']:.2f})" if row["accuracy_deviation_std"] is not None else "")


def _csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def _accuracy_tables(summaries: list[dict]) -> tuple[str, str]:
    """The paper's Tables 1-3 layout: one row per study, one column (and its std) per setting. (CSV, Markdown)"""
    cols = list(dict.fromkeys(c for s in summaries for c in paper_columns(s)))
    rows = [["dataset", "architecture", "base_accuracy"] + [h for c in cols for h in (c, c + " std")]]
    md = ["| Architecture | base acc. | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for s in summaries:
        by = {_column(r): r for r in s["rows"] if r["method"] != "independent"}
        cells = []
        for c in cols:
            r = by.get(c, {"accuracy_deviation_pct": None, "accuracy_deviation_std": None})
            cells += [_num(r["accuracy_deviation_pct"], ".4f"), _num(r["accuracy_deviation_std"], ".4f")]
        rows.append([s["dataset"], s["arch"], f"{s['base']['accuracy']:.4f}"] + cells)
        md.append(f"| {s['arch']} | {100 * s['base']['accuracy']:.2f}% | "
                  + " | ".join(_fmt_dev(by[c]) if c in by else "" for c in cols) + " |")
    return _csv(rows), "\n".join(md) + "\n"


def _size(r: dict) -> list[str]:
    """(about how many parameters, bytes as computed with, bytes stored compressed, sparsity) of a row's model;
    empty where the run recorded no size (trained models)."""
    fp32, w, sparse, sp = (r.get(k) for k in ("fp32_bytes", "weight_bytes", "sparse_bytes", "sparsity"))
    return ["" if fp32 is None else f"{fp32 // 4:,}", "" if w is None else f"{w:,}",
            "" if sparse is None else f"{sparse:,}", "" if sp is None else f"{100 * sp:.1f}%"]


def _distance_tables(summaries: list[dict]) -> tuple[str, str]:
    """Distances, RFD with both intervals, p, verdict and model size of every row. (CSV, Markdown)"""
    rows = [["dataset", "architecture", "role", "method", "setting", "runs", "accuracy", "accuracy_deviation_pct",
             "disagreement", "js", "tv", "rfd", "rfd_lo", "rfd_hi", "rfd_yardstick_lo", "rfd_yardstick_hi",
             "rfd_hier", "rfd_hier_lo", "rfd_hier_hi", "p_closer", "verdict", "fp32_bytes", "weight_bytes",
             "sparse_bytes", "sparsity"]]
    md = ["| Architecture | method | setting | acc. dev. % | disagreement | JS (bits) | " + f"RFD [{_CI} CI] | "
          f"yardstick range | RFD, models then inputs [{_CI} CI] | p(closer) | verdict | ≈ parameters | bytes | "
          "compressed bytes | sparsity |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        for r in s["rows"]:
            lo, hi = r["rfd_ci"]
            ylo, yhi = r.get("rfd_ci_yardstick") or (None, None)
            hlo, hhi = r.get("rfd_ci_hier") or (None, None)
            rows.append([s["dataset"], s["arch"], r.get("role", ""), r["method"], r["setting"], " ".join(r["runs"]),
                         f"{r['accuracy']:.4f}", _num(r["accuracy_deviation_pct"], ".4f"),
                         f"{r['disagreement']:.6f}", f"{r['js']:.6f}", f"{r['tv']:.6f}", _num(r["rfd"], ".4f"),
                         _num(lo, ".4f"), _num(hi, ".4f"), _num(ylo, ".4f"), _num(yhi, ".4f"),
                         _num(r.get("rfd_hier"), ".4f"), _num(hlo, ".4f"), _num(hhi, ".4f"),
                         _num(r["p_closer"], ".4f"), r["verdict"]]
                        + [str(r.get(k, "")) for k in ("fp32_bytes", "weight_bytes", "sparse_bytes", "sparsity")])
            md.append(f"| {s['arch']} | {r['method']} | {r['setting']} | {_fmt_dev(r)} | {r['disagreement']:.4f} | "
                      f"{r['js']:.4f} | {_ci(r)} | {_yard(r)} | {_hier(r)} | "
                      f"{'' if r['verdict'] == 'yardstick' else _p(r)} | "
                      f"{r['verdict']} | "
                      + " | ".join(_size(r)) + " |")
    return _csv(rows), "\n".join(md) + "\n"


def _pair(r: dict, before: str, after: str, spec: str) -> str:
    """``before → after`` of two of a row's numbers, as ``spec`` formats them; empty where neither was recorded."""
    a, b = r.get(before), r.get(after)
    return "" if a is None and b is None else f"{_num(a, spec) or '?'} → {_num(b, spec) or '?'}"


def _speedup(r: dict) -> str:
    fp32, ms = r.get("fp32_latency_ms"), r.get("latency_ms")
    return f"{fp32 / ms:.2f}x" if fp32 and ms else ""


def cost_md(summaries: list[dict]) -> str:
    """What the compressed models cost, for the rows whose runs measured it (the field's libraries): bytes,
    parameters and MACs against the model compressed, latency of one batch against fp32 in the same run, and
    the library. Empty when no row has any of those measurements.

    Args:
        summaries: ``summary.json`` of each study.

    Example:
        >>> row = {"method": "quantize", "setting": "PT2E int8", "fp32_bytes": 900, "weight_bytes": 300,
        ...        "latency_ms": 2.0, "fp32_latency_ms": 5.0, "latency_batch": 64, "library": "torch 2.14.1"}
        >>> cost_md([{"arch": "lenet", "rows": [row]}]).splitlines()[-1]
        '| lenet | quantize | PT2E int8 | torch 2.14.1 | 900 → 300 |  |  | 5.000 → 2.000 (64) | 2.50x |'
        >>> cost_md([{"arch": "lenet", "rows": [{"method": "prune", "setting": "50%", "fp32_bytes": 900}]}])
        ''
    """
    rows = [(s["arch"], r) for s in summaries for r in s["rows"] if any(r.get(k) is not None for k in COST_KEYS)]
    if not rows:
        return ""
    md = ["| Architecture | method | setting | library | bytes (fp32 → compressed) | parameters | "
          "MACs per image | latency ms (fp32 → compressed, batch) | speed-up |", "|---" * 9 + "|"]
    for arch, r in rows:
        batch = r.get("latency_batch")
        latency = _pair(r, "fp32_latency_ms", "latency_ms", ".3f")
        md.append(f"| {arch} | {r['method']} | {r['setting']} | {r.get('library') or ''} | "
                  f"{_pair(r, 'fp32_bytes', 'weight_bytes', ',')} | {_pair(r, 'base_params', 'params', ',')} | "
                  f"{_pair(r, 'base_macs', 'macs', ',')} | {latency}{f' ({batch})' if latency and batch else ''} | "
                  f"{_speedup(r)} |")
    return "\n".join(md) + "\n"


def write_tables(out: Path, summaries: list[dict]) -> tuple[str, str]:
    """``tables/accuracy_deviation`` and ``tables/functional_distance``, each as CSV and Markdown; returns both
    Markdown tables."""
    paths.tables_dir(out).mkdir(parents=True, exist_ok=True)
    written = []
    for name, (text_csv, text_md) in (("accuracy", _accuracy_tables(summaries)),
                                      ("distance", _distance_tables(summaries))):
        file_of = paths.accuracy_table if name == "accuracy" else paths.distance_table
        atomic_write_text(file_of(out, "csv"), text_csv)
        atomic_write_text(file_of(out, "md"), text_md)
        written.append(text_md)
    return written[0], written[1]


# ---------------------------------------------------------------- figures

def _final_label(r: RunView) -> str:
    return r.setting if r.role not in ("student", "control", "start") else f"{r.setting} s{r.seed}"


def _landscape_points(sv: StudyView) -> tuple[list[np.ndarray], list[dict]]:
    """Every checkpoint: each epoch of every trajectory, and every post-hoc model."""
    store = Store(sv.out)
    preds, points = [], []
    for r in sv.runs:
        # test accuracy after each epoch, as training recorded it; a post-hoc model has only its own
        acc = {h.get("epoch"): h.get("test_acc") for h in store.load_metrics(r.run).get("history", [])}
        for e in r.epochs:
            preds.append(r.final if e == r.epochs[-1] else store.load_preds(r.run, e))
            points.append({"role": r.role, "letter": ROLES[r.role].letter, "label": _final_label(r),
                           "trajectory": r.run, "epoch": e, "final": e == r.epochs[-1],
                           "accuracy": r.accuracy if e == r.epochs[-1] else acc.get(e)})
    return preds, points


def _save_fig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _write_landscape_table(out: Path, coords: np.ndarray, points: list[dict]) -> None:
    """The embedding itself, so the picture can be checked and redrawn elsewhere."""
    rows = [["run", "role", "label", "epoch", "x", "y"]]
    rows += [[p["trajectory"], p["role"], p["label"], p["epoch"], f"{x:.6f}", f"{y:.6f}"]
             for (x, y), p in zip(coords, points)]
    paths.tables_dir(out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths.landscape_table(out), _csv(rows))


def figures(sv: StudyView, summary: dict) -> dict[Path, Figure]:
    """The report's figures as matplotlib Figures, by file path (not yet saved); writes the landscape table and
    the interactive landscape page."""
    from funclens import landscape

    preds, points = _landscape_points(sv)
    coords = landscape.embed(preds, seed=0)
    _write_landscape_table(sv.out, coords, points)
    what = f"{sv.study.model.arch} on {sv.study.data.dataset}"
    paths.figures_dir(sv.out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths.landscape_interactive(sv.out),
                      landscape.landscape_html(coords, points, title=f"Functional landscape: {what}"))
    metric = summary["metric"]
    dist = pairwise([r.final for r in sv.runs], metric)
    return {
        paths.landscape_figure(sv.out): landscape.plot_landscape(coords, points,
                                                                 title=f"Functional landscape: {what}"),
        paths.accuracy_figure(sv.out): landscape.plot_accuracy_vs_distance(
            summary["rows"], title=f"Accuracy deviation vs functional distance: {what}"),
        paths.distances_figure(sv.out): landscape.plot_distance_matrix(
            dist, [{"role": r.role, "label": _final_label(r)} for r in sv.runs], metric=metric,
            title=f"Functional distance among all final models: {what}"),
    }


def write_figures(sv: StudyView, summary: dict) -> list[Path]:
    """Save :func:`figures` as PNG files under ``figures/``; returns their paths."""
    paths.figures_dir(sv.out).mkdir(parents=True, exist_ok=True)
    figs = figures(sv, summary)
    for path, fig in figs.items():
        _save_fig(fig, path)
    return list(figs)


# ---------------------------------------------------------------- words

def _ci(r: dict) -> str:
    if r["rfd"] is None:
        return "undefined"
    lo, hi = (_num(v, ".2f") or "inf" for v in r["rfd_ci"])
    return f"{r['rfd']:.2f} [{lo}, {hi}]"


def _p(r: dict) -> str:
    """p at the bootstrap's floor 1 / (B + 1) says only that it is below 1 / B.

    Example:
        >>> _p({"p_closer": 1 / 1001}), _p({"p_closer": 0.0123}), _p({"p_closer": None})
        ('< 0.001', '= 0.012', 'n/a')
    """
    if r.get("p_closer") is None:
        return "n/a"
    return f"< {1 / N_BOOT:.3g}" if r["p_closer"] <= 1 / (N_BOOT + 1) + 1e-12 else f"= {r['p_closer']:.3f}"


_WORDS = {"preserves": "preserves the base function",
          "partial": "keeps part of the base function: nearer the base than independent models, but not near",
          "independent-like": "is as different from the base as an independently trained model",
          "undetermined": "cannot be decided"}
BADGE_COLOURS = {"preserves": "#2e7d32", "partial": "#ef6c00", "independent-like": "#c62828",
                 "undetermined": "#757575", "yardstick": "#1565c0"}


def _acc_change(r: dict) -> str:
    if r["accuracy_deviation_pct"] is None:
        return "n/a"
    std = r.get("accuracy_deviation_std")
    return f"{r['accuracy_deviation_pct']:+.2f}%" + (f" (±{std:.2f})" if std is not None else "")


def _yard(r: dict) -> str:
    """The interval again with each independent model alone as the yardstick (its own noise included)."""
    lo, hi = r.get("rfd_ci_yardstick") or (None, None)
    return "" if lo is None else f"[{lo:.2f}, {'inf' if hi is None else format(hi, '.2f')}]"


def _hier(r: dict) -> str:
    """RFD with its interval of resampling models (seeds), then inputs; empty where a row has none.

    Example:
        >>> _hier({"rfd_hier": 0.31, "rfd_ci_hier": [0.12, None]}), _hier({})
        ('0.31 [0.12, inf]', '')
    """
    lo, hi = r.get("rfd_ci_hier") or (None, None)
    if r.get("rfd_hier") is None or lo is None:
        return ""
    return f"{r['rfd_hier']:.2f} [{lo:.2f}, {'inf' if hi is None else format(hi, '.2f')}]"


def _is_control(r: dict) -> bool:
    return r.get("role") == "control"


def _row_sentence(r: dict, n_test: int, pairs: int) -> str:
    name = f"{r['method']} {r['setting']}"
    if _is_control(r):
        lo, hi = r["rfd_ci"]
        near_one = lo is not None and (hi is None or lo <= 1.0 <= hi or lo > INDEPENDENT_ABOVE)
        words = ("as far from the base as an independent model, as expected of a student taught by another model"
                 if near_one else _WORDS[r["verdict"]] + " (its teacher is an independent model)")
        name = f"control student ({r['setting']}, taught by an independent model)"
    elif r.get("role") == "start":
        words = _WORDS[r["verdict"]] + " with no teacher at all: what the shared start alone keeps"
        name = "no-teacher control (the base's initial weights, another data order, alpha 0)"
    elif r.get("role") == "fresh":
        words = _WORDS[r["verdict"]] + " from its own initial weights: what the teacher gives without the shared start"
        name = f"fresh-start student ({r['setting'].removesuffix(' (fresh start)')}, its own seed's initial weights)"
    elif r.get("role") == "noise":
        words = _WORDS[r["verdict"]] + " (a noise floor, not a compression)"
        name = f"noise floor {r['setting']} (Gaussian weight noise, {r['setting']} the 8-bit error)"
    else:
        words = _WORDS[r["verdict"]]
    s = f"{name}: RFD {_ci(r)}, accuracy {_acc_change(r)}, {100 * r['disagreement']:.2f}% of predictions changed → {words}"
    if r["verdict"] == "undetermined":
        return s + f": {r.get('verdict_reason', 'RFD is undefined')}."
    models = f"; models then inputs resampled {_hier(r)}" if _hier(r) and r.get("members", 1) > 1 else ""
    s += (f" (p {_p(r)}; with one independent alone as yardstick {_yard(r)}{models}). Rests on {n_test} test inputs "
          f"and a yardstick of {pairs} independent model{'s' if pairs != 1 else ''}")
    if r.get("caveats"):
        s += ". Weak where: " + "; ".join(r["caveats"])
    s += "."
    if r["setting"] == "dynamic-int8":
        s += (" Note: torch's dynamic quantization (quantize_dynamic) quantizes Linear layers only; "
              f"{r.get('conv_layers_compressed', 0)} convolutions were quantized, so this says little about "
              "quantizing the whole network.")
    return s


def _control_sentence(summary: dict) -> list[str]:
    students = [r for r in summary["rows"] if r.get("role") == "student" and r["rfd"] is not None]
    control = [r for r in summary["rows"] if _is_control(r) and r["rfd"] is not None]
    if not (students and control):
        return []
    best, c = min(students, key=lambda r: r["rfd"]), control[0]
    closer = None not in (best["rfd_ci"][1], c["rfd_ci"][0]) and best["rfd_ci"][1] < c["rfd_ci"][0]
    return [f"Random control: a student taught by an independent model sits at RFD {_ci(c)} from the base; "
            f"the nearest base-taught student at {_ci(best)}. "
            + ("Distillation from the base does move the student toward the base."
               if closer else "The intervals overlap: distilling from the base did not measurably move the "
               "student toward the base beyond what any teacher does.")]


def _start_sentence(summary: dict) -> list[str]:
    """What the start gives and what the teacher adds: the base-init students beside the no-teacher control."""
    rows = summary["rows"]
    start = next((r for r in rows if r.get("role") == "start"), None)
    setup = summary.get("setup", {})
    if start is None:
        # asked for, yet not planned: the base was given as a checkpoint, without the weights it started from
        asked = setup.get("distill_no_teacher") and setup.get("distill_seeds")
        return ["No no-teacher control: a given base has no initial weights to start it from."] if asked else []
    if start["rfd"] is None:
        return []
    out = []
    for r in rows:
        if r.get("role") == "student" and r["rfd"] is not None:
            gap = start["rfd"] - r["rfd"]
            out.append(f"Start or teacher ({r['setting']}): from the same initial weights with no teacher, the "
                       f"control ends at RFD {_ci(start)}; the students, taught by the base, at {_ci(r)}: the "
                       f"teacher moves them {abs(gap):.2f} {'nearer to' if gap >= 0 else 'farther from'} the base "
                       "than the start alone leaves them.")
    return out


def units_note(summary: dict) -> str:
    """What the numbers mean, said once: units, ±, p, and both intervals."""
    m, t = summary["metric"], summary["thresholds"]
    pairs = summary["reference"]["pairs"]
    rough = {1: "; with 1 independent model the yardstick has no spread over models to show",
             2: "; with 2 independent models the yardstick's spread is rough (a resample holds one of them twice "
                "or both)"}.get(pairs, "")
    return (f"Units: disagreement is the fraction of test inputs whose top-1 prediction differs; JS is the "
            f"Jensen-Shannon divergence in bits (0 to 1); the distance behind RFD is {m} "
            f"({metrics.METRIC_UNITS[m]}). Accuracy changes are in % of the base's accuracy; ± is the sample "
            f"standard deviation over student seeds. RFD [a, b]: the {t['ci']:.0%} percentile bootstrap interval over "
            f"test inputs ({t['bootstrap']} resamples, the same resampled inputs for every model). The second interval "
            f"takes the yardstick from each independent model alone and spans the lowest to the highest end: the "
            f"yardstick's own noise, which the first leaves out. p: one-sided bootstrap p-value against 'no "
            f"closer to the base than the independent models are'; at its floor it prints p < {1 / t['bootstrap']:.3g}. "
            f"'Models then inputs' resamples a row's models (student seeds; a population's compressed models) and "
            f"the independent models with replacement, then the same test inputs: the spread over seeds"
            + rough + ". "
            f"Verdicts come from the first interval: 'preserves' when its upper end is below "
            f"{t['preserves_below']}, 'independent-like' when its lower end is above {t['independent_above']}, "
            f"'partial' otherwise, 'undetermined' when the independent models agree with the base on every input.")


def verdict_sentences(summary: dict) -> list[str]:
    """One sentence per compressed setting (what it rests on, where it is weak), and the random control's."""
    out = [_row_sentence(r, summary["num_test"], summary["reference"]["pairs"]) for r in summary["rows"]
           if r["method"] != "independent"]
    return out + _control_sentence(summary) + _start_sentence(summary)


def yardstick_md(summary: dict) -> str:
    """The independent models, the yardstick every RFD divides by: each one's distance to the base, their mean
    and spread, and how far they are from each other."""
    m, ref = summary["metric"], summary["reference"]
    lines = [f"| independent model | run | accuracy | {m} to the base |", "|---|---|---|---|"]
    for i in ref.get("independents", []):
        lines.append(f"| {i['setting']} | {i['run']} | {100 * i['accuracy']:.2f}% | {_num(i.get(m), '.4f')} |")
    lines.append(f"| mean (the yardstick) | | | {ref['independent_mean']:.4f} |")
    lines.append(f"| std over {ref['pairs']} models | | | {ref['independent_std']:.4f} |")
    if ref.get("between_independents") is not None:
        lines.append(f"| mean over all pairs among base and independents | | | {ref['between_independents']:.4f} |")
    return "\n".join(lines) + "\n"


_SETUP_NAMES = {"data_content_sha256": "data content (sha256)", "batch_size": "batch size",
                "prune_structured": "channel pruning (Torch-Pruning)", "finetune_epochs": "fine-tuning epochs",
                "pt2e": "PT2E int8", "calibration_images": "calibration images",
                "custom": "custom compressors (source sha256)",
                "lr": "learning rate", "weight_decay": "weight decay", "distill_alphas": "distillation alphas",
                "distill_seeds": "student seeds", "temperature": "distillation T", "distill_init": "student init",
                "distill_control": "random control", "distill_no_teacher": "no-teacher control",
                "distill_fresh_student": "fresh-start student",
                "noise": "noise floor (x 8-bit error)", "prune_global": "global pruning",
                "funclens_versions": "funclens version of the runs", "git_commits": "git commit of the runs",
                "changed_from_preset": "changed from the preset", "recipe": "training recipe (by its values)",
                "normalize": "input normalisation", "prune_last": "pruning reaches the last layer"}


def setup_md(summary: dict) -> str:
    """The setup block: every field that went into the run ids, as a two-column table."""
    lines = ["| setting | value |", "|---|---|"]
    for k, v in summary.get("setup", {}).items():
        if k == "custom":
            v = [f"{c['name']} = {c['fn']} ({c.get('source_sha256') or 'not pinned'})" for c in v]
        if isinstance(v, list):
            v = ", ".join(str(x) for x in v) or "none"
        elif k in ("train_subset", "test_subset") and v == 0:
            v = "all"
        if k == "preset" and v is None:
            v = "none: a study of its own"
        lines.append(f"| {_SETUP_NAMES.get(k, k.replace('_', ' '))} | {v} |")
    return "\n".join(lines) + "\n"


def reduced_note(summary: dict) -> str:
    """One line when the study is a preset changed by flags or a file; empty otherwise."""
    st = summary.get("setup", {})
    changes = st.get("changed_from_preset") or []
    if not changes:
        return ""
    return (f"REDUCED: this study changes the preset '{st.get('preset')}' ({'; '.join(changes)}); its numbers are "
            f"not the preset's.")


def overview_rows(summary: dict) -> list[dict]:
    """The summary block, one entry per compressed setting: verdict, accuracy change, RFD with both intervals."""
    return [{"method": r["method"], "setting": r["setting"] if not _is_control(r) else r["setting"],
             "verdict": r["verdict"], "accuracy": _acc_change(r), "rfd": _ci(r), "yardstick": _yard(r),
             "flips": f"{100 * r['disagreement']:.2f}%", "caveats": len(r.get("caveats") or [])}
            for r in summary["rows"] if r["method"] != "independent"]


def overview_md(summary: dict) -> str:
    mark = {"preserves": "🟢", "partial": "🟠", "independent-like": "🔴", "undetermined": "⚪"}
    lines = [f"| method | setting | verdict | accuracy change | predictions changed | RFD [{_CI} CI] | "
             "yardstick range |", "|---|---|---|---|---|---|---|"]
    for o in overview_rows(summary):
        lines.append(f"| {o['method']} | {o['setting']} | {mark.get(o['verdict'], '')} {o['verdict']}"
                     f"{' *' if o['caveats'] else ''} | {o['accuracy']} | {o['flips']} | {o['rfd']} | "
                     f"{o['yardstick']} |")
    return "\n".join(lines) + "\n"


def _overview_html(summary: dict) -> str:
    head = ("<tr><th>method</th><th>setting</th><th>verdict</th><th>accuracy change</th>"
            f"<th>predictions changed</th><th>RFD [{_CI} CI]</th><th>yardstick range</th></tr>")
    trs = []
    for o in overview_rows(summary):
        badge = (f"<span class='badge' style='background:{BADGE_COLOURS.get(o['verdict'], '#757575')}'>"
                 f"{html.escape(o['verdict'])}</span>" + (" <span title='see its caveats'>*</span>"
                                                          if o["caveats"] else ""))
        cells = [html.escape(o["method"]), html.escape(o["setting"]), badge] + [
            html.escape(o[k]) for k in ("accuracy", "flips", "rfd", "yardstick")]
        trs.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table id='summary'><thead>{head}</thead><tbody>{''.join(trs)}</tbody></table>"


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def _md_table_to_html(md: str) -> str:
    lines = [l for l in md.strip().splitlines() if l.strip()]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [[c.strip() for c in l.strip("|").split("|")] for l in lines[2:]]
    th = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.3em .6em}"
        "th{background:#f3f3f3}li{margin:.3em 0}"
        ".badge{color:#fff;border-radius:.8em;padding:.1em .6em;font-weight:600;white-space:nowrap}"
        ".reduced{background:#fff3cd;border:2px solid #e0a800;padding:.5em .8em;font-weight:700}")


def _study_blocks(summary: dict, prefix: str = "") -> list[tuple[str, str, str]]:
    """(heading, Markdown, HTML) of one study's summary, setup and yardstick blocks, in reading order."""
    over = overview_md(summary)
    star = "\n\\* the verdict has caveats, listed under Verdicts.\n"
    return [(f"{prefix}Summary: which compressions kept the base function?", over + star,
             _overview_html(summary) + "<p><small>* the verdict has caveats, listed under Verdicts.</small></p>"),
            (f"{prefix}Setup", setup_md(summary), _md_table_to_html(setup_md(summary))),
            (f"{prefix}Yardstick: the independently trained models", yardstick_md(summary),
             _md_table_to_html(yardstick_md(summary)))]


_COST_HEAD = "Cost: size, parameters, MACs and latency (where the compressing library measured them)"


def write_documents(out: Path, title: str, intro: str, summaries: list[dict], acc_md: str, dist_md: str,
                    sentences: list[str], figures: list[tuple[Path, str]]) -> Path:
    """``report.md`` and ``report.html``: the reduced mark, summary, setup and yardstick of every study first,
    then verdicts, tables and figures. Returns the path of ``report.html``."""
    many = len(summaries) > 1
    notes = [n for n in (reduced_note(s) for s in summaries) if n]
    blocks = [b for s in summaries for b in _study_blocks(s, f"[{s['arch']}] " if many else "")]
    units = units_note(summaries[0])
    diag_md, diag_html = diagnostics_sections({"studies": summaries})
    md = [f"# {title}", ""] + [f"> **{n}**\n" for n in notes] + [intro, ""]
    for head, text_md, _ in blocks:
        md += [f"## {head}", "", text_md]
    md += ["## Verdicts", "", units, ""] + [f"- {x}" for x in sentences]
    md += ["", "## Accuracy deviation (%, relative to the base; the paper's Tables 1-3)", "", acc_md,
           "## Functional distance to the base, and model sizes", "", dist_md]
    cost = cost_md(summaries)
    if cost:
        md += [f"## {_COST_HEAD}", "", cost]
    md += [diag_md, "## Figures", ""]
    md += [f"![{cap}]({p.relative_to(out).as_posix()})" for p, cap in figures]
    md += [f"\nInteractive landscape (hover a point for its run, epoch and accuracy): [{p}]({p})"
           for p in _interactive_links(out, figures)]
    atomic_write_text(paths.report_md(out), "\n".join(md) + "\n")
    body = [f"<h1>{html.escape(title)}</h1>"] + [f"<p class='reduced'>{html.escape(n)}</p>" for n in notes]
    body += [f"<p>{html.escape(intro)}</p>"]
    body += [f"<h2>{html.escape(head)}</h2>{text_html}" for head, _, text_html in blocks]
    body += ["<h2>Verdicts</h2>", f"<p><small>{html.escape(units)}</small></p><ul>"]
    body += [f"<li>{html.escape(x)}</li>" for x in sentences] + ["</ul>"]
    body += ["<h2>Accuracy deviation (%, relative to the base)</h2>", _md_table_to_html(acc_md),
             "<h2>Functional distance to the base, and model sizes</h2>", _md_table_to_html(dist_md)]
    if cost:
        body += [f"<h2>{html.escape(_COST_HEAD)}</h2>", _md_table_to_html(cost)]
    body += [diag_html, "<h2>Figures</h2>"]
    body += [f"<figure>{_img_tag(p, cap)}<figcaption>{html.escape(cap)}</figcaption></figure>" for p, cap in figures]
    body += [f"<p><a href='{html.escape(p)}'>Interactive landscape</a> (hover a point for its run, epoch and "
             f"accuracy; one file, works offline)</p>" for p in _interactive_links(out, figures)]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")
    atomic_write_text(paths.report_html(out), page)
    return paths.report_html(out)


def _interactive_links(out: Path, figures: list[tuple[Path, str]]) -> list[str]:
    """Relative links from ``out`` to every study's interactive landscape that exists."""
    dirs = dict.fromkeys(p.parent.parent for p, _ in figures)
    return [Path(os.path.relpath(paths.landscape_interactive(d), out)).as_posix() for d in dirs
            if paths.landscape_interactive(d).exists()]


_CAPTIONS = {
    "landscape": "Functional landscape (t-SNE of every checkpoint's test predictions; "
                 + ", ".join(f"{r.letter} {r.legend}" for r in ROLES.values()) + ")",
    "accuracy": "Accuracy deviation against RFD, one point per model, coloured by role",
    "distances": "Functional distance between every pair of final models, ordered by role "
                 "(darker: closer; clusters are models computing similar functions)",
}


def _figure_list(out: Path, prefix: str = "") -> list[tuple[Path, str]]:
    return [(paths.landscape_figure(out), prefix + _CAPTIONS["landscape"]),
            (paths.accuracy_figure(out), prefix + _CAPTIONS["accuracy"]),
            (paths.distances_figure(out), prefix + _CAPTIONS["distances"])]


def build_report(out: Path) -> Path:
    """Every report file of one study, from its store. Returns the path of ``report.html``."""
    out = Path(out)
    sv = load_study(out)
    store = Store(out)
    store.begin_outputs()
    summary = analyse(sv)
    atomic_write_text(paths.summary_file(out), json.dumps(summary, indent=2, allow_nan=False))
    acc_md, dist_md = write_tables(out, [summary])
    write_figures(sv, summary)
    intro = (f"Study {sv.study.name}: {sv.study.model.arch} on {sv.study.data.dataset} "
             f"({summary['num_test']} test images, {summary['num_classes']} classes), base accuracy "
             f"{100 * summary['base']['accuracy']:.2f}%, distance '{summary['metric']}'. funclens {__version__}.")
    title = f"funclens report: {sv.study.name}" + (" (REDUCED)" if reduced_note(summary) else "")
    html = write_documents(out, title, intro, [summary], acc_md, dist_md, verdict_sentences(summary),
                           _figure_list(out))
    add_gallery(out, sv)  # tables/exemplars.csv, and the gallery at the end of report.md and report.html
    store.record_outputs()
    return html


def build_combined_report(out: Path, study_dirs: list[Path]) -> Path:
    """One report over several studies (one per architecture, or per entry of a sweep), with a row per study."""
    out = Path(out)
    summaries = [json.loads(paths.summary_file(d).read_text()) for d in study_dirs]
    acc_md, dist_md = write_tables(out, summaries)
    # studies of one architecture (a sweep's) are told apart by name
    by_arch = len({s["arch"] for s in summaries}) == len(summaries)
    names = [s["arch"] if by_arch else s.get("study", s["arch"]) for s in summaries]
    sentences = [f"[{n}] {t}" for n, s in zip(names, summaries) for t in verdict_sentences(s)]
    figs = [f for d, n in zip(study_dirs, names) for f in _figure_list(d, prefix=f"{n}: ")]
    atomic_write_text(paths.summary_file(out), json.dumps({"studies": summaries}, indent=2, allow_nan=False))
    intro = (f"{len(summaries)} studies on {summaries[0]['dataset']}: "
             + ", ".join(f"{n} (base {100 * s['base']['accuracy']:.2f}%)" for n, s in zip(names, summaries)) + ".")
    reduced = any(reduced_note(s) for s in summaries)
    return write_documents(out, f"funclens report: {summaries[0]['dataset']}" + (" (REDUCED)" if reduced else ""),
                           intro, summaries, acc_md, dist_md, sentences, figs)


# ---------------------------------------------------------------- where the function moved, per row

def _f(v: float | None, spec: str = ".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def _hurt(r: dict) -> str:
    """The classes a row hurts most, ``*`` marking a fall below every independent model's for that class."""
    hurt = r.get("classes_hurt")
    if not hurt:
        return "n/a" if hurt is None else "none"
    return ", ".join(f"{h['class']} ({100 * h['accuracy_change']:+.1f} pp{'*' if h['beyond_independents'] else ''})"
                     for h in hurt[:3])


def _diagnostics_md(studies: list[dict]) -> str:
    lines = ["## Where the function moved", "",
             "Flips: fractions of the test set whose answer went from right to wrong (c→w) or back (w→c); "
             "McNemar: exact two-sided p on those counts; KL(base‖model) per input in nats; ECE: expected "
             f"calibration error, {metrics.ECE_BINS} bins; classes hurt: largest per-class accuracy falls in percentage points, "
             "* when below every independent model's change for that class. Rows over several seeds: means.", "",
             "| Architecture | method | setting | flips c→w | flips w→c | McNemar p | KL mean | KL p99 | KL max | "
             "ECE | classes hurt |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in studies:
        for r in s["rows"]:
            kl = r.get("kl_base_model") or {}
            lines.append(f"| {s['arch']} | {r['method']} | {r['setting']} | {_f(r.get('flips_correct_to_wrong'))} | "
                         f"{_f(r.get('flips_wrong_to_correct'))} | {_f(r.get('mcnemar_p'), '.3g')} | "
                         f"{_f(kl.get('mean'), '.3g')} | {_f(kl.get('p99'), '.3g')} | {_f(kl.get('max'), '.3g')} | "
                         f"{_f(r.get('ece'))} | {_hurt(r)} |")
    return "\n".join(lines) + "\n"


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _row_details(arch: str, r: dict) -> str:
    """One row's diagnostics as a collapsible HTML section."""
    tails = [(name, r.get(key)) for name, key in (("KL(base‖model), nats", "kl_base_model"),
                                                 ("KL(model‖base), nats", "kl_model_base"),
                                                 ("true class probability, model − base", "true_class_prob_change"))]
    keys = list(dict.fromkeys(k for _, t in tails if t for k in t))
    parts = [_html_table(["per input"] + keys, [[n] + [_f(t.get(k), ".4g") if k in t else "" for k in keys]
                                                for n, t in tails if t])]
    m = r.get("flips_by_margin")
    if m:
        parts.append("<p>By decile of the base's top-1 margin (least sure first): fraction of inputs whose top-1 "
                     "class changed, and whose correctness changed.</p>" + _html_table(
                         ["margin", "inputs", "disagreement", "flips"],
                         [[f"{lo:.3f}–{hi:.3f}", str(n), _f(d), _f(fl)] for lo, hi, n, d, fl in zip(
                             m["margin_lo"], m["margin_hi"], m["count"], m["disagreement"],
                             m["flips"] or [None] * len(m["count"]))]))
    pc = r.get("per_class")
    if pc:
        parts.append("<p>Per class (accuracy change in percentage points).</p>" + _html_table(
            ["class", "inputs", "base accuracy", "accuracy change", "disagreement"],
            [[str(k), f"{n:g}", _f(a), _f(None if c is None else 100 * c, "+.2f"), _f(d)] for k, (n, a, c, d)
             in enumerate(zip(pc["count"], pc["base_accuracy"], pc["accuracy_change"], pc["disagreement"]))]))
    head = (f"{arch} {r['method']} {r['setting']}: flips {_f(r.get('flips_correct_to_wrong'))} right→wrong, "
            f"{_f(r.get('flips_wrong_to_correct'))} wrong→right (McNemar p {_f(r.get('mcnemar_p'), '.3g')}); "
            f"top-1 agreement {_f(r.get('top1_agreement'))}; ECE {_f(r.get('ece'))}; classes hurt {_hurt(r)}")
    return f"<details><summary>{html.escape(head)}</summary>{''.join(parts)}</details>"


def diagnostics_sections(summary: dict) -> tuple[str, str]:
    """Where each row's function moved: a compact Markdown table, and HTML with one collapsible ``<details>``
    section per row (KL tails, true-class change, margin deciles, per-class table).

    Args:
        summary: a study's ``summary.json``, or a combined one (``{"studies": [...]}``).

    Returns:
        (Markdown, HTML).

    Example:
        >>> md, page = diagnostics_sections({"arch": "lenet", "base": {"ece": None}, "rows": [
        ...     {"method": "prune", "setting": "50%", "flips_correct_to_wrong": 0.01}]})
        >>> [line for line in md.splitlines() if line.startswith("| lenet")], page.count("<details>")
        (['| lenet | prune | 50% | 0.0100 | n/a | n/a | n/a | n/a | n/a | n/a | n/a |'], 1)
    """
    studies = summary.get("studies", [summary])
    eces = "; ".join(f"{s['arch']} {_f(s['base'].get('ece'))}" for s in studies)
    body = [f"<h2>Where the function moved</h2><p>Base ECE ({metrics.ECE_BINS} bins): {html.escape(eces)}. Each row opens to its "
            "details; rows over several seeds hold means over them.</p>"]
    body += [_row_details(s["arch"], r) for s in studies for r in s["rows"]]
    return _diagnostics_md(studies) + f"\nBase ECE ({metrics.ECE_BINS} bins): {eces}.\n", "".join(body)
