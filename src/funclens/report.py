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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from funclens import __version__, metrics, paths
from funclens.config import FunclensError, StudyCfg, from_dict
from funclens.plan import LETTERS
from funclens.store import Store, StoreError, atomic_write_bytes, atomic_write_text

METHOD_OF_ROLE = {"independent": "independent", "student": "distill", "control": "distill",
                  "quantize": "quantize", "prune": "prune"}
N_BOOT = 1000


@dataclass
class RunView:
    run: str
    role: str
    setting: str
    seed: int | None
    accuracy: float
    final: np.ndarray  # [N, C] float16 softmax after the last epoch (or the post-hoc model's)
    epochs: list[int] = field(default_factory=list)
    info: dict = field(default_factory=dict)


@dataclass
class StudyView:
    out: Path
    study: StudyCfg
    runs: list[RunView]

    @property
    def base(self) -> RunView:
        return next(r for r in self.runs if r.role == "base")

    def of(self, role: str) -> list[RunView]:
        return [r for r in self.runs if r.role == role]


def load_study(out: Path) -> StudyView:
    """Read a study's plan and every run's final predictions, refusing damaged or unfinished runs."""
    out = Path(out)
    store = Store(out)
    rec = store.read_study()
    study = from_dict(StudyCfg, rec["study"])
    views = []
    for r in rec["runs"]:
        rid = r["run"]
        if not store.is_done(rid):
            raise StoreError(f"run {rid} ({r['role']} {r['setting']}) is not finished; run `funclens study` first")
        problems = store.verify_run(rid)
        if problems:
            raise StoreError(problems[0] + "; rerun `funclens study` to recompute it")
        m = store.load_metrics(rid)
        info = {k: m[k] for k in ("weight_bytes", "fp32_bytes", "sparse_bytes", "sparsity", "layers_compressed",
                                  "conv_layers_compressed", "layers_total", "precision", "device") if k in m}
        views.append(RunView(rid, r["role"], r["setting"], r.get("seed"), float(m["test_acc"]),
                             store.load_preds(rid), store.pred_epochs(rid), info))
    return StudyView(out, study, views)


# ---------------------------------------------------------------- analysis

def _row(sv: StudyView, method: str, setting: str, members: list[RunView], ref_vecs: list[np.ndarray],
         metric: str, seed: int) -> dict:
    base = sv.base
    num = np.mean([metrics.per_example(base.final, m.final, metric) for m in members], axis=0)
    den = np.mean(ref_vecs, axis=0)
    r = metrics.ratio_bootstrap(num, den, n_boot=N_BOOT, seed=seed)
    devs = [metrics.accuracy_deviation(m.accuracy, base.accuracy) for m in members]
    acc = float(np.mean([m.accuracy for m in members]))
    row = {
        "method": method, "setting": setting, "runs": [m.run for m in members], "accuracy": acc,
        "accuracy_deviation_pct": float(np.mean(devs)),
        # the paper's (±std) over seeds; sample std (ddof=1), null for a single model
        "accuracy_deviation_std": float(np.std(devs, ddof=1)) if len(devs) > 1 else None,
        "disagreement": float(np.mean([metrics.distance(base.final, m.final, "disagreement") for m in members])),
        "js": float(np.mean([metrics.distance(base.final, m.final, "js") for m in members])),
        "tv": float(np.mean([metrics.distance(base.final, m.final, "tv") for m in members])),
        "rfd": r["ratio"], "rfd_ci": r["ci"],
        "p_closer": r["p_less_than_one"],
        "verdict": metrics.verdict(r["ci"]),
    }
    for k in ("weight_bytes", "fp32_bytes", "sparse_bytes", "sparsity", "conv_layers_compressed", "layers_total"):
        if k in members[0].info:
            row[k] = members[0].info[k]
    return row


def analyse(sv: StudyView) -> dict:
    """The ``summary.json`` of a study (DESIGN.md's contract, plus ``tv``, ``p_closer`` and sizes)."""
    metric = sv.study.metric
    base, indeps = sv.base, sv.of("independent")
    ref_vecs = [metrics.per_example(base.final, i.final, metric) for i in indeps]
    ref = metrics.independent_reference(base.final, [i.final for i in indeps], metric)
    rows = []
    for k, i in enumerate(indeps):
        rows.append(_row(sv, "independent", i.setting, [i], ref_vecs, metric, seed=k))
    groups: dict[tuple[str, str], list[RunView]] = {}
    for r in sv.runs:
        if r.role in ("student", "control", "quantize", "prune"):
            setting = r.setting if r.role != "control" else f"control {r.setting}"
            groups.setdefault((METHOD_OF_ROLE[r.role], setting), []).append(r)
    for k, ((method, setting), members) in enumerate(groups.items()):
        rows.append(_row(sv, method, setting, members, ref_vecs, metric, seed=100 + k))
    return {
        "funclens_version": __version__, "study": sv.study.name, "dataset": sv.study.data.dataset,
        "arch": sv.study.model.arch, "num_test": int(base.final.shape[0]), "num_classes": int(base.final.shape[1]),
        "metric": metric, "base": {"run": base.run, "accuracy": base.accuracy},
        "reference": {"independent_mean": ref["mean"], "independent_std": ref["std"], "pairs": ref["pairs"],
                      "between_independents": ref.get("between")},
        "thresholds": {"preserves_below": metrics.PRESERVE_BELOW, "independent_above": metrics.INDEPENDENT_ABOVE,
                       "ci": 0.95, "bootstrap": N_BOOT},
        "rows": rows,
    }


# ---------------------------------------------------------------- tables

def paper_columns(summary: dict) -> list[str]:
    """Column heads in the paper's order: alphas, quantization, then pruning amounts."""
    return [r["setting"] for r in summary["rows"] if r["method"] in ("distill", "quantize", "prune")]


def _fmt_dev(row: dict) -> str:
    v = f"{row['accuracy_deviation_pct']:.2f}"
    return v + (f" (±{row['accuracy_deviation_std']:.2f})" if row["accuracy_deviation_std"] is not None else "")


def write_tables(out: Path, summaries: list[dict]) -> tuple[str, str]:
    """``tables/accuracy_deviation.csv`` (+ Markdown) and ``tables/functional_distance.csv``; returns both
    Markdown tables."""
    tdir = paths.tables_dir(out)
    tdir.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(c for s in summaries for c in paper_columns(s)))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["dataset", "architecture", "base_accuracy"] + [h for c in cols for h in (c, c + " std")])
    md = ["| Architecture | base acc. | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for s in summaries:
        by = {r["setting"]: r for r in s["rows"]}
        cells = []
        for c in cols:
            r = by.get(c)
            cells += ([f"{r['accuracy_deviation_pct']:.4f}",
                       "" if r["accuracy_deviation_std"] is None else f"{r['accuracy_deviation_std']:.4f}"]
                      if r else ["", ""])
        w.writerow([s["dataset"], s["arch"], f"{s['base']['accuracy']:.4f}"] + cells)
        md.append(f"| {s['arch']} | {100 * s['base']['accuracy']:.2f}% | "
                  + " | ".join(_fmt_dev(by[c]) if c in by else "" for c in cols) + " |")
    atomic_write_text(tdir / "accuracy_deviation.csv", buf.getvalue())
    acc_md = "\n".join(md) + "\n"
    atomic_write_text(tdir / "accuracy_deviation.md", acc_md)

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["dataset", "architecture", "method", "setting", "runs", "accuracy", "accuracy_deviation_pct",
                "disagreement", "js", "tv", "rfd", "rfd_lo", "rfd_hi", "p_closer", "verdict"])
    md = ["| Architecture | method | setting | acc. dev. % | disagreement | JS | RFD [95% CI] | p(closer) | verdict |",
          "|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        for r in s["rows"]:
            w.writerow([s["dataset"], s["arch"], r["method"], r["setting"], " ".join(r["runs"]),
                        f"{r['accuracy']:.4f}", f"{r['accuracy_deviation_pct']:.4f}", f"{r['disagreement']:.6f}",
                        f"{r['js']:.6f}", f"{r['tv']:.6f}", f"{r['rfd']:.4f}", f"{r['rfd_ci'][0]:.4f}",
                        f"{r['rfd_ci'][1]:.4f}", f"{r['p_closer']:.4f}", r["verdict"]])
            md.append(f"| {s['arch']} | {r['method']} | {r['setting']} | {_fmt_dev(r)} | {r['disagreement']:.4f} | "
                      f"{r['js']:.4f} | {r['rfd']:.2f} [{r['rfd_ci'][0]:.2f}, {r['rfd_ci'][1]:.2f}] | "
                      f"{r['p_closer']:.3f} | {r['verdict']} |")
    atomic_write_text(tdir / "functional_distance.csv", buf.getvalue())
    dist_md = "\n".join(md) + "\n"
    atomic_write_text(tdir / "functional_distance.md", dist_md)
    return acc_md, dist_md


# ---------------------------------------------------------------- figures

def _landscape_points(sv: StudyView) -> tuple[list[np.ndarray], list[dict]]:
    """Every checkpoint: each epoch of every trajectory, and every post-hoc model."""
    store = Store(sv.out)
    preds, points = [], []
    for r in sv.runs:
        for e in r.epochs:
            preds.append(r.final if e == r.epochs[-1] else store.load_preds(r.run, e))
            label = r.setting if r.role not in ("student", "control") else f"{r.setting} s{r.seed}"
            points.append({"role": r.role, "letter": LETTERS[r.role],
                           "label": label, "trajectory": r.run, "epoch": e, "final": e == r.epochs[-1]})
    return preds, points


def _save_fig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def write_figures(sv: StudyView, summary: dict) -> list[Path]:
    from funclens import landscape

    fdir = paths.figures_dir(sv.out)
    fdir.mkdir(parents=True, exist_ok=True)
    preds, points = _landscape_points(sv)
    coords = landscape.embed(preds, seed=0)
    buf = io.StringIO()  # the embedding itself, so the picture can be checked and redrawn elsewhere
    w = csv.writer(buf)
    w.writerow(["run", "role", "label", "epoch", "x", "y"])
    for (x, y), p in zip(coords, points):
        w.writerow([p["trajectory"], p["role"], p["label"], p["epoch"], f"{x:.6f}", f"{y:.6f}"])
    paths.tables_dir(sv.out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths.tables_dir(sv.out) / "landscape.csv", buf.getvalue())
    title = f"Functional landscape: {sv.study.model.arch} on {sv.study.data.dataset}"
    _save_fig(landscape.plot_landscape(coords, points, title=title), fdir / "landscape.png")
    _save_fig(landscape.plot_accuracy_vs_distance(
        summary["rows"], title=f"Accuracy deviation vs functional distance: {sv.study.model.arch} on {sv.study.data.dataset}"),
        fdir / "accuracy_vs_distance.png")
    return [fdir / "landscape.png", fdir / "accuracy_vs_distance.png"]


# ---------------------------------------------------------------- words

def _ci(r: dict) -> str:
    return f"{r['rfd']:.2f} [{r['rfd_ci'][0]:.2f}, {r['rfd_ci'][1]:.2f}]"


def verdict_sentences(summary: dict) -> list[str]:
    """One sentence per compressed setting, and the rules behind the verdicts."""
    m = summary["metric"]
    ref = summary["reference"]
    out = [f"Yardstick: the independently trained models differ from the base by {m} "
           f"{ref['independent_mean']:.4f} (std {ref['independent_std']:.4f} over {ref['pairs']} models); "
           f"RFD divides a model's {m} to the base by that mean, so 0 is the base's own function and 1 is "
           f"as different as a model trained from scratch."]
    words = {"preserves": "preserves the base function",
             "partial": "moves part of the way toward an independent model",
             "independent-like": "is at least as different from the base as an independently trained model"}
    for r in summary["rows"]:
        if r["method"] == "independent":
            continue
        s = (f"{r['method']} {r['setting']}: RFD {_ci(r)}, accuracy deviation {_fmt_dev(r)}% "
             f"→ {words[r['verdict']]} (bootstrap p = {r['p_closer']:.3f} against 'no closer to the base "
             f"than the independent models are').")
        if r["setting"] == "dynamic-int8":
            s += (" Note: torch's dynamic quantization (quantize_dynamic) quantizes Linear layers only; "
                  f"{r.get('conv_layers_compressed', 0)} convolutions were quantized, so this says little about "
                  "quantizing the whole network.")
        out.append(s)
    students = [r for r in summary["rows"] if r["method"] == "distill" and not r["setting"].startswith("control")]
    control = [r for r in summary["rows"] if r["setting"].startswith("control")]
    if students and control:
        best = min(students, key=lambda r: r["rfd"])
        c = control[0]
        closer = best["rfd_ci"][1] < c["rfd_ci"][0]
        out.append(f"Random control: a student taught by an independent model sits at RFD {_ci(c)} from the base; "
                   f"the nearest base-taught student at {_ci(best)}. "
                   + ("Distillation from the base does move the student toward the base."
                      if closer else "The intervals overlap: distilling from the base did not measurably move the "
                      "student toward the base beyond what any teacher does."))
    out.append(f"Verdicts from the 95% bootstrap interval of RFD over test inputs ({N_BOOT} resamples): "
               f"'preserves' when its upper bound is below {metrics.PRESERVE_BELOW}, 'independent-like' when its "
               f"lower bound is above {metrics.INDEPENDENT_ABOVE}, 'partial' otherwise.")
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
    md = [f"# {title}", "", intro, "", "## Verdicts", ""] + [f"- {s}" for s in sentences]
    md += ["", "## Accuracy deviation (%, relative to the base; the paper's Tables 1-3)", "", acc_md,
           "## Functional distance to the base", "", dist_md, "## Figures", ""]
    md += [f"![{cap}]({p.relative_to(out).as_posix()})" for p, cap in figures]
    atomic_write_text(paths.report_md(out), "\n".join(md) + "\n")
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>", "<h2>Verdicts</h2><ul>"]
    body += [f"<li>{html.escape(s)}</li>" for s in sentences] + ["</ul>"]
    body += ["<h2>Accuracy deviation (%, relative to the base)</h2>", _md_table_to_html(acc_md),
             "<h2>Functional distance to the base</h2>", _md_table_to_html(dist_md), "<h2>Figures</h2>"]
    body += [f"<figure>{_img_tag(p, cap)}<figcaption>{html.escape(cap)}</figcaption></figure>" for p, cap in figures]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")
    atomic_write_text(paths.report_html(out), page)
    return paths.report_html(out)


def build_report(out: Path) -> Path:
    """Every report file of one study, from its store. Returns the path of ``report.html``."""
    out = Path(out)
    sv = load_study(out)
    store = Store(out)
    store.begin_outputs()
    summary = analyse(sv)
    atomic_write_text(paths.summary_file(out), json.dumps(summary, indent=2))
    acc_md, dist_md = write_tables(out, [summary])
    figs = write_figures(sv, summary)
    intro = (f"Study {sv.study.name}: {sv.study.model.arch} on {sv.study.data.dataset} "
             f"({summary['num_test']} test images, {summary['num_classes']} classes), base accuracy "
             f"{100 * summary['base']['accuracy']:.2f}%, distance '{summary['metric']}'. funclens {__version__}.")
    html = write_documents(out, f"funclens report: {sv.study.name}", intro, acc_md, dist_md,
                           verdict_sentences(summary),
                           [(figs[0], "Functional landscape (t-SNE of every checkpoint's test predictions; "
                                      "B base, I independent, D distilled, C control, Q quantized, P pruned)"),
                            (figs[1], "Accuracy deviation against RFD, one point per model")])
    store.record_outputs()
    return html


def build_combined_report(out: Path, study_dirs: list[Path]) -> Path:
    """One report over several studies (one per architecture), with a row per architecture."""
    out = Path(out)
    summaries = [json.loads(paths.summary_file(d).read_text()) for d in study_dirs]
    acc_md, dist_md = write_tables(out, summaries)
    sentences = [f"[{s['arch']}] {t}" for s in summaries for t in verdict_sentences(s)]
    figures = [(paths.figures_dir(d) / f, f"{s['arch']}: {cap}") for d, s in zip(study_dirs, summaries)
               for f, cap in (("landscape.png", "functional landscape"), ("accuracy_vs_distance.png",
                                                                          "accuracy deviation vs RFD"))]
    atomic_write_text(paths.summary_file(out), json.dumps({"studies": summaries}, indent=2))
    intro = (f"{len(summaries)} studies on {summaries[0]['dataset']}: "
             + ", ".join(f"{s['arch']} (base {100 * s['base']['accuracy']:.2f}%)" for s in summaries) + ".")
    return write_documents(out, f"funclens report: {summaries[0]['dataset']}", intro, acc_md, dist_md,
                           sentences, figures)


# ---------------------------------------------------------------- compare

def _load_array(path: Path) -> np.ndarray:
    """Predictions from a run folder (its last epoch), or a .npy / single-array .npz file."""
    path = Path(path)
    if path.is_dir():
        st = Store(path.parent.parent) if path.parent.name == "runs" else None
        if st is None:
            raise FunclensError(f"{path}: not a run folder (expected .../runs/<id>)")
        problems = st.verify_run(path.name)
        if problems:
            raise StoreError(problems[0])
        return st.load_preds(path.name)
    if not path.is_file():
        raise FunclensError(f"{path}: no such file or run folder")
    try:
        with open(path, "rb") as f:
            obj = np.load(f, allow_pickle=False)
            if isinstance(obj, np.lib.npyio.NpzFile):
                keys = list(obj.keys())
                if len(keys) != 1:
                    raise FunclensError(f"{path}: .npz must hold one array, holds {len(keys)} ({', '.join(keys)})")
                return np.asarray(obj[keys[0]])
            return np.asarray(obj)
    except (ValueError, OSError, EOFError) as e:
        raise FunclensError(f"{path}: not a readable .npy/.npz array ({e})") from None


def compare_table(items: list[Path], *, labels: Path | None = None, metric: str = "disagreement",
                  as_json: bool = False) -> str:
    """Distances of every model to the first (the base); with ``indep:`` items, RFD and verdicts too."""
    if len(items) < 2:
        raise FunclensError("compare needs at least two models: the base and one to compare")
    named: dict[str, np.ndarray] = {}
    indep_names = []
    for it in items:
        s = str(it)
        is_indep = s.startswith("indep:")
        p = Path(s[6:] if is_indep else s)
        name = s
        named[name] = metrics.check_predictions(_load_array(p), str(p))
        if is_indep:
            indep_names.append(name)
    metrics.check_same_shape(named)
    y = None
    if labels is not None:
        y = _load_array(labels)
        first = next(iter(named.values()))
        if y.ndim != 1 or len(y) != len(first) or not np.issubdtype(y.dtype, np.integer):
            raise FunclensError(f"{labels}: labels must be integers [N] with N = {len(first)}, got {y.dtype} {y.shape}")
        if y.min() < 0 or y.max() >= first.shape[1]:
            raise FunclensError(f"{labels}: labels outside 0..{first.shape[1] - 1}")
    names = list(named)
    base_name, base = names[0], named[names[0]]
    indeps = [named[n] for n in indep_names]
    ref_vecs = [metrics.per_example(base, i, metric) for i in indeps]
    rows = []
    for k, n in enumerate(names[1:]):
        p = named[n]
        row = {"model": n, "disagreement": metrics.distance(base, p, "disagreement"),
               "js": metrics.distance(base, p, "js"), "tv": metrics.distance(base, p, "tv")}
        if y is not None:
            row["accuracy"] = metrics.accuracy(p, y)
            row["accuracy_deviation_pct"] = metrics.accuracy_deviation(row["accuracy"], metrics.accuracy(base, y))
        if ref_vecs and n not in indep_names:
            r = metrics.ratio_bootstrap(metrics.per_example(base, p, metric), np.mean(ref_vecs, axis=0),
                                        n_boot=N_BOOT, seed=k)
            row.update(rfd=r["ratio"], rfd_ci=r["ci"], p_closer=r["p_less_than_one"], verdict=metrics.verdict(r["ci"]))
        rows.append(row)
    result = {"base": base_name, "metric": metric, "independents": indep_names, "rows": rows}
    if y is not None:
        result["base_accuracy"] = metrics.accuracy(base, y)
    if as_json:
        return json.dumps(result, indent=2)
    cols = ["model", "disagreement", "js", "tv"] + (["accuracy", "accuracy_deviation_pct"] if y is not None else []) \
        + (["rfd", "rfd_ci", "p_closer", "verdict"] if ref_vecs else [])
    lines = [f"base: {base_name}" + (f" (accuracy {result['base_accuracy']:.4f})" if y is not None else ""),
             "  ".join(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"[{v[0]:.3f}, {v[1]:.3f}]" if c == "rfd_ci" and v != "" else
                         f"{v:.4f}" if isinstance(v, float) else str(v))
        lines.append("  ".join(cells))
    if not ref_vecs:
        lines.append("(pass independent models as indep:FILE for RFD and verdicts)")
    return "\n".join(lines)
