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
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from funclens import __version__, metrics, paths
from funclens.gallery import add_gallery
from funclens.pairwise import pairwise
from funclens.plan import ROLES
from funclens.rfd import INDEPENDENT_ABOVE, N_BOOT, PRESERVE_BELOW
from funclens.store import Store, atomic_write_bytes, atomic_write_text
from funclens.summary import RunView, StudyView, analyse, load_study

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# ---------------------------------------------------------------- tables

def paper_columns(summary: dict) -> list[str]:
    """Column heads in the paper's order: alphas, quantization, then pruning amounts."""
    return [r["setting"] for r in summary["rows"] if r["method"] in ("distill", "quantize", "prune")]


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
        by = {r["setting"]: r for r in s["rows"]}
        cells = []
        for c in cols:
            r = by.get(c, {"accuracy_deviation_pct": None, "accuracy_deviation_std": None})
            cells += [_num(r["accuracy_deviation_pct"], ".4f"), _num(r["accuracy_deviation_std"], ".4f")]
        rows.append([s["dataset"], s["arch"], f"{s['base']['accuracy']:.4f}"] + cells)
        md.append(f"| {s['arch']} | {100 * s['base']['accuracy']:.2f}% | "
                  + " | ".join(_fmt_dev(by[c]) if c in by else "" for c in cols) + " |")
    return _csv(rows), "\n".join(md) + "\n"


def _distance_tables(summaries: list[dict]) -> tuple[str, str]:
    """Distances, RFD with its interval, p and verdict of every row. (CSV, Markdown)"""
    rows = [["dataset", "architecture", "role", "method", "setting", "runs", "accuracy", "accuracy_deviation_pct",
             "disagreement", "js", "tv", "rfd", "rfd_lo", "rfd_hi", "p_closer", "verdict"]]
    md = ["| Architecture | method | setting | acc. dev. % | disagreement | JS (bits) | RFD [95% CI] | p(closer) | "
          "verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        for r in s["rows"]:
            lo, hi = r["rfd_ci"]
            rows.append([s["dataset"], s["arch"], r.get("role", ""), r["method"], r["setting"], " ".join(r["runs"]),
                         f"{r['accuracy']:.4f}", _num(r["accuracy_deviation_pct"], ".4f"),
                         f"{r['disagreement']:.6f}", f"{r['js']:.6f}", f"{r['tv']:.6f}", _num(r["rfd"], ".4f"),
                         _num(lo, ".4f"), _num(hi, ".4f"), f"{r['p_closer']:.4f}", r["verdict"]])
            md.append(f"| {s['arch']} | {r['method']} | {r['setting']} | {_fmt_dev(r)} | {r['disagreement']:.4f} | "
                      f"{r['js']:.4f} | {_ci(r)} | {_p(r)} | {r['verdict']} |")
    return _csv(rows), "\n".join(md) + "\n"


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
    return r.setting if r.role not in ("student", "control") else f"{r.setting} s{r.seed}"


def _landscape_points(sv: StudyView) -> tuple[list[np.ndarray], list[dict]]:
    """Every checkpoint: each epoch of every trajectory, and every post-hoc model."""
    store = Store(sv.out)
    preds, points = [], []
    for r in sv.runs:
        for e in r.epochs:
            preds.append(r.final if e == r.epochs[-1] else store.load_preds(r.run, e))
            points.append({"role": r.role, "letter": ROLES[r.role].letter, "label": _final_label(r),
                           "trajectory": r.run, "epoch": e, "final": e == r.epochs[-1]})
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
    """The report's figures as matplotlib Figures, by file path (not yet saved); writes the landscape table."""
    from funclens import landscape

    preds, points = _landscape_points(sv)
    coords = landscape.embed(preds, seed=0)
    _write_landscape_table(sv.out, coords, points)
    what = f"{sv.study.model.arch} on {sv.study.data.dataset}"
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
    """p at the bootstrap's floor 1 / (B + 1) says only that it is below 1 / B."""
    return f"< {1 / N_BOOT:.3g}" if r["p_closer"] <= 1 / (N_BOOT + 1) + 1e-12 else f"= {r['p_closer']:.3f}"


_WORDS = {"preserves": "preserves the base function",
          "partial": "moves part of the way toward an independent model",
          "independent-like": "is at least as different from the base as an independently trained model",
          "undetermined": "cannot be decided"}


def _row_sentence(r: dict) -> str:
    s = (f"{r['method']} {r['setting']}: RFD {_ci(r)}, accuracy deviation {_fmt_dev(r)}% "
         f"→ {_WORDS[r['verdict']]}")
    if r["verdict"] == "undetermined":
        return s + f": {r.get('verdict_reason', 'RFD is undefined')}."
    s += (f" (bootstrap p {_p(r)} against 'no closer to the base than the independent models are').")
    if r["setting"] == "dynamic-int8":
        s += (" Note: torch's dynamic quantization (quantize_dynamic) quantizes Linear layers only; "
              f"{r.get('conv_layers_compressed', 0)} convolutions were quantized, so this says little about "
              "quantizing the whole network.")
    return s


def _control_sentence(summary: dict) -> list[str]:
    students = [r for r in summary["rows"] if r.get("role") == "student" and r["rfd"] is not None]
    control = [r for r in summary["rows"] if r.get("role") == "control" and r["rfd"] is not None]
    if not (students and control):
        return []
    best, c = min(students, key=lambda r: r["rfd"]), control[0]
    closer = None not in (best["rfd_ci"][1], c["rfd_ci"][0]) and best["rfd_ci"][1] < c["rfd_ci"][0]
    return [f"Random control: a student taught by an independent model sits at RFD {_ci(c)} from the base; "
            f"the nearest base-taught student at {_ci(best)}. "
            + ("Distillation from the base does move the student toward the base."
               if closer else "The intervals overlap: distilling from the base did not measurably move the "
               "student toward the base beyond what any teacher does.")]


def verdict_sentences(summary: dict) -> list[str]:
    """One sentence per compressed setting, and the rules behind the verdicts."""
    m = summary["metric"]
    ref = summary["reference"]
    out = [f"Yardstick: the independently trained models differ from the base by {m} "
           f"{ref['independent_mean']:.4f} (std {ref['independent_std']:.4f} over {ref['pairs']} models; "
           f"{m} is the {metrics.METRIC_UNITS[m]}); RFD divides a model's {m} to the base by that mean, so 0 is "
           f"the base's own function and 1 is as different as a model trained from scratch."]
    out += [_row_sentence(r) for r in summary["rows"] if r["method"] != "independent"]
    out += _control_sentence(summary)
    out.append(f"Verdicts from the 95% bootstrap interval of RFD over test inputs ({N_BOOT} resamples, every model "
               f"resampled with the same inputs): 'preserves' when its upper bound is below {PRESERVE_BELOW}, "
               f"'independent-like' when its lower bound is above {INDEPENDENT_ABOVE}, 'partial' otherwise; "
               "'undetermined' when the independent models agree with the base on every test input, so there is "
               "no yardstick. ± is the standard deviation over seeds.")
    return out


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
        "th{background:#f3f3f3}li{margin:.3em 0}")


def write_documents(out: Path, title: str, intro: str, acc_md: str, dist_md: str, sentences: list[str],
                    figures: list[tuple[Path, str]]) -> Path:
    diag_md, diag_html = diagnostics_sections(json.loads(paths.summary_file(out).read_text()))
    md = [f"# {title}", "", intro, "", "## Verdicts", ""] + [f"- {s}" for s in sentences]
    md += ["", "## Accuracy deviation (%, relative to the base; the paper's Tables 1-3)", "", acc_md,
           "## Functional distance to the base", "", dist_md, diag_md, "## Figures", ""]
    md += [f"![{cap}]({p.relative_to(out).as_posix()})" for p, cap in figures]
    atomic_write_text(paths.report_md(out), "\n".join(md) + "\n")
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>", "<h2>Verdicts</h2><ul>"]
    body += [f"<li>{html.escape(s)}</li>" for s in sentences] + ["</ul>"]
    body += ["<h2>Accuracy deviation (%, relative to the base)</h2>", _md_table_to_html(acc_md),
             "<h2>Functional distance to the base</h2>", _md_table_to_html(dist_md), diag_html,
             "<h2>Figures</h2>"]
    body += [f"<figure>{_img_tag(p, cap)}<figcaption>{html.escape(cap)}</figcaption></figure>" for p, cap in figures]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")
    atomic_write_text(paths.report_html(out), page)
    return paths.report_html(out)


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
    html = write_documents(out, f"funclens report: {sv.study.name}", intro, acc_md, dist_md,
                           verdict_sentences(summary), _figure_list(out))
    add_gallery(out, sv)  # tables/exemplars.csv, and the gallery at the end of report.md and report.html
    store.record_outputs()
    return html


def build_combined_report(out: Path, study_dirs: list[Path]) -> Path:
    """One report over several studies (one per architecture), with a row per architecture."""
    out = Path(out)
    summaries = [json.loads(paths.summary_file(d).read_text()) for d in study_dirs]
    acc_md, dist_md = write_tables(out, summaries)
    sentences = [f"[{s['arch']}] {t}" for s in summaries for t in verdict_sentences(s)]
    figs = [f for d, s in zip(study_dirs, summaries) for f in _figure_list(d, prefix=f"{s['arch']}: ")]
    atomic_write_text(paths.summary_file(out), json.dumps({"studies": summaries}, indent=2, allow_nan=False))
    intro = (f"{len(summaries)} studies on {summaries[0]['dataset']}: "
             + ", ".join(f"{s['arch']} (base {100 * s['base']['accuracy']:.2f}%)" for s in summaries) + ".")
    return write_documents(out, f"funclens report: {summaries[0]['dataset']}", intro, acc_md, dist_md,
                           sentences, figs)


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
             "calibration error, 15 bins; classes hurt: largest per-class accuracy falls in percentage points, "
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
    body = [f"<h2>Where the function moved</h2><p>Base ECE (15 bins): {html.escape(eces)}. Each row opens to its "
            "details; rows over several seeds hold means over them.</p>"]
    body += [_row_details(s["arch"], r) for s in studies for r in s["rows"]]
    return _diagnostics_md(studies) + f"\nBase ECE (15 bins): {eces}.\n", "".join(body)
