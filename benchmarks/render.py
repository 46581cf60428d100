"""RESULTS.md from RESULTS.json: the Markdown is rendered from the data alone, so it can be regenerated and
never disagrees with it.

Usage:
    .venv/bin/python benchmarks/render.py benchmarks/RESULTS.json              # -> benchmarks/RESULTS.md
    .venv/bin/python benchmarks/render.py RESULTS-quick.json -o /tmp/quick.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GIB, MIB  # noqa: E402

from funclens.errors import FunclensError  # noqa: E402
from funclens.store import short_commit  # noqa: E402

FORMAT = 1  # RESULTS.json's layout; render refuses any other
SECTIONS = ("Targets", "1. Compute ceiling", "2. Reduced paper-mnist, end to end",
            "3. Training throughput", "4. Analysis of a CIFAR-100-sized study",
            "5. Full studies: wall time beside the FLOP limit")
# Rendered only where the results hold its measurement (results written before bf16.py existed do not).
BF16_SECTION = "6. bf16 training throughput"


class ResultsError(FunclensError):
    """A results file that cannot be read or rendered: missing, not JSON, or not a benchmark's output."""


def fmt_s(s: float) -> str:
    """Seconds as people read them: seconds below 2 min, minutes below an hour, hours above.

    Args:
        s: seconds.

    Example:
        >>> fmt_s(22.114), fmt_s(504.0), fmt_s(5822.0)
        ('22.11 s', '8.4 min', '1.62 h')
    """
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    return f"{s:.2f} s"


def _met(ok: bool | None) -> str:
    return "-" if ok is None else "yes" if ok else "**no**"


def _row(cells: list[Any]) -> str:
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    return [_row(head), "|" + "---|" * len(head), *(_row(r) for r in rows)]


def _ordinal(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def header(r: dict[str, Any]) -> list[str]:
    """The title, the command and date, the machine and the load."""
    info, load = r["machine"], r["load"]
    made = " (what `make bench` runs)." if r["command"].endswith("benchmarks/run.py") else "."
    out = ["# funclens benchmarks" + (" (--quick smoke run: tiny sizes, figures mean nothing)" if r["quick"]
                                      else ""), "",
           f"Measured {info['date']} with `{r['command']}`{made}", "",
           f"Machine: {info['nproc']} cores usable ({info['cpu_count']} reported), {info['cpu']}, "
           f"{info['mem_bytes'] / GIB:.1f} GiB RAM; Python {info['python']}, torch {info['torch']} "
           f"({info['torch_threads']} threads by default), numpy {info['numpy']}; funclens {info['funclens']} at "
           f"commit {info['commit'][:12]}.",
           f"Load average (1 min) at the start {load['start']:.2f}, at the end {load['end']:.2f}: other work on "
           "the machine lowers every figure below, and the interleaving shares it out between the two sides."]
    if r.get("provenance"):
        out += ["", r["provenance"]]
    return out + [""]


def _train_cells(th: float, v: float, r: dict[str, Any]) -> list[str]:
    used, thr = r["ceiling"]["used"], r["ceiling"]["threads"]
    return [f"LeNet training at >= {th:g}% of the measured fp32 ceiling, averaged over a study",
            f"{v:.1f}% of {used['fp32_all']:.1f} GFLOP/s ({thr} threads)"]


def _speedup_cells(th: float, v: float, r: dict[str, Any]) -> list[str]:
    e2e = r["end_to_end"]
    med, n = e2e["medians"], len(e2e["runs"]["funclens"])
    return [f"reduced paper-mnist end to end >= {th:g}x faster than the baseline",
            f"{v:.2f}x ({fmt_s(med['baseline'])} vs {fmt_s(med['funclens'])}, medians of {n})"]


def _analysis_cells(th: float, v: float, r: dict[str, Any]) -> list[str]:
    a = r["analysis"]["full"]
    what = "distances, landscape" + (" and per-row diagnostics" if "diagnostics" in a["times"] else "")
    return [f"analysis of {a['m']} x {a['n']:,} x {a['c']} ({what}) in < {th:g} s", f"{v:.2f} s"]


def _memory_cells(th: float, v: float, r: dict[str, Any]) -> list[str]:
    inp = r["analysis"]["full"]["input_bytes"] / GIB
    return [f"... with peak memory < {th:g} GiB", f"{v:.2f} GiB total peak RSS (input {inp:.2f} GiB)"]


def _bf16_cells(th: float, v: float, r: dict[str, Any]) -> list[str]:
    b = r["bf16"]
    speeds = f"{b['bf16']['images_per_s']:,.0f} vs {b['fp32']['images_per_s']:,.0f} images/s"
    return [f"LeNet training in bf16 >= {th:g}x the images/s of fp32 (one thread, same run)",
            f"{v:.2f}x ({speeds}, medians of {b['repeats']}); see section 6"]


def _full_study_cells(th: float, v: float | None, r: dict[str, Any]) -> list[str]:
    pm = r["full_studies"][0]
    what = f"full {pm['preset']} wall time beside the FLOP limit"
    if v is None:
        return [what, f"not run here (no {pm['folder']}.time)"]
    return [what, f"{fmt_s(v)} (commit {short_commit(pm['measured']['commit'])}) vs {fmt_s(pm['limit_s'])} at 100% of "
                  f"the ceiling ({pm['pct_of_ceiling']:.1f}% of the ceiling); see section 5"]


def _full_mnist_cells(precision: str):
    def cells(th: float, v: float | None, r: dict[str, Any]) -> list[str]:
        s = next(s for s in r["full_studies"] if s["preset"] == "paper-mnist" and s.get("precision") == precision)
        what = f"full LeNet MNIST study ({s['flags']}) in {precision} on 2 cores < {fmt_s(th)}"
        if v is None:
            return [what, f"not run here (no {s['folder']}.time)"]
        return [what, f"{fmt_s(v)} (commit {short_commit(s['measured']['commit'])}), {s['pct_of_ceiling']:.1f}% of the "
                      f"{precision} ceiling; see section 5"]
    return cells


# target key -> what the target asks and what was measured, in words, from its threshold, value and the data
_TARGET_CELLS = {"train_pct_of_ceiling": _train_cells, "speedup": _speedup_cells,
                 "analysis_seconds": _analysis_cells, "analysis_peak_gib": _memory_cells,
                 "bf16_speedup": _bf16_cells, "full_study_wall_s": _full_study_cells,
                 "full_mnist_fp32_s": _full_mnist_cells("fp32"), "full_mnist_bf16_s": _full_mnist_cells("bf16")}


def _target_cells(t: dict[str, Any], r: dict[str, Any]) -> list[str]:
    """What a target asks and what was measured, in words, from the target's key and the data beside it."""
    cells = _TARGET_CELLS.get(t["key"])
    if cells is None:
        raise ResultsError(f"unknown target {t['key']!r} in the results file")
    return cells(t["threshold"], t["value"], r)


def targets_section(r: dict[str, Any]) -> list[str]:
    rows = [[*_target_cells(t, r), _met(t["met"])] for t in r["targets"]]
    return [f"## {SECTIONS[0]}", "", *_table(["target", "measured", "met"], rows), ""]


def ceiling_section(r: dict[str, Any]) -> list[str]:
    c = r["ceiling"]
    thr, c0, c1, u = c["threads"], c["start"], c["end"], c["used"]
    rows = [["fp32", thr, f"{c0['fp32_all']:.1f}", f"{c1['fp32_all']:.1f}", f"**{u['fp32_all']:.1f}**"],
            ["fp32", 1, f"{c0['fp32_1']:.1f}", f"{c1['fp32_1']:.1f}", f"{u['fp32_1']:.1f}"],
            ["bf16 (reference only)", thr, f"{c0['bf16_all']:.1f}", f"{c1['bf16_all']:.1f}", f"{u['bf16_all']:.1f}"]]
    out = [f"## {SECTIONS[1]}", "",
           f"`torch.matmul` of two {c['n']}x{c['n']} matrices (2 n^3 FLOPs), best of {c['tries']} after a warm-up "
           "call; measured at the start and again at the end of the run.", "",
           *_table(["dtype", "threads", "start, GFLOP/s", "end, GFLOP/s", "used below"], rows), "",
           f"\"The ceiling\" below is the fp32 figure with {thr} threads, the better of the two measurements "
           "(other work on the machine only ever lowers one)."]
    if c["disturbed"]:
        out.append(f"**Warning: with {thr} threads fp32 measured slower than with 1 thread** (threads waiting on "
                   "each other while other processes held the cores), so the 1-thread figure stands in for it: "
                   "the machine was busy, and every percentage of the ceiling below may be too high, by up to a "
                   "factor of the number of cores.")
    return out + [""]


def _work_sentence(w: dict[str, Any]) -> str:
    def join(xs: list[Any], f: str = "{}") -> str:
        return ", ".join(f.format(x) for x in xs)

    return (f"Work: {w['dataset'].upper()}, first {w['train_subset']:,} training and {w['test_subset']:,} test "
            f"images; {'LeNet' if w['arch'] == 'lenet' else w['arch']}, {w['epochs']} epoch"
            f"{'s' if w['epochs'] != 1 else ''}, {w['optimizer'].upper()} lr {w['lr']} momentum {w['momentum']}, "
            f"batch {w['batch_size']}; seeds {join(w['seeds'])} (the first is the base); students alpha "
            f"{join(w['alphas'], '{:g}')} x seeds {join(w['student_seeds'])} (T = {w['temperature']:g}, "
            f"{w['init']}, {'with' if w['control'] else 'no'} control); quantization {join(w['quantize'])}; "
            f"per-layer L1 pruning {join(w['prune'], '{:.0%}')}: {w['trainings']} trainings and {w['posthoc']} "
            "post-hoc models; analysis, tables and figures over every checkpoint.")


def _runs_table(e2e: dict[str, Any]) -> list[str]:
    bl, fl = e2e["runs"]["baseline"], e2e["runs"]["funclens"]
    runs = bl + fl
    head = ["", *(f"baseline {i + 1}" for i in range(len(bl))), *(f"funclens {i + 1}" for i in range(len(fl)))]
    rows = [[label, *(fmt_s(x[key]) for x in runs)]
            for label, key in (("end to end", "total"), ("training phase (wall)", "train_phase"),
                               ("data, training, compression (wall)", "before_analysis"),
                               ("analysis + report (wall)", "analysis"))]
    rows.append(["base model's test accuracy", *(f"{100 * x['base_accuracy']:.2f}%" for x in runs)])
    return _table(head, rows)


def endtoend_section(r: dict[str, Any]) -> list[str]:
    e2e = r["end_to_end"]
    med, n = e2e["medians"], len(e2e["runs"]["funclens"])
    return [f"## {SECTIONS[2]}", "", _work_sentence(e2e["work"]), "",
            "- **funclens**: `funclens.study.run_study(StudyCfg, RunContext(out=<fresh temp folder>, "
            f"offline=True), jobs={e2e['jobs']}, report=True)`: its local executor, {e2e['jobs']} forked "
            "single-thread worker processes, default settings (channels-last, cached teacher logits), the report "
            "(summary, tables, landscape, HTML) included.",
            "- **baseline**: `benchmarks/baseline.py`'s `run_pipeline`, one step after another in this process "
            f"with torch's default {e2e['baseline_threads']} threads: per-item PIL Dataset + torchvision "
            "transforms + DataLoader, teacher forward at every step, np.save per epoch, Python loop over pairs, "
            "t-SNE of raw vectors.",
            "- Both read the same canonical IDX files with `funclens.data.read_idx`, inside the measured time "
            "(a fraction of a second; funclens reads once, in the parent, whose forked workers inherit the "
            "arrays).",
            "- Run interleaved in this one process: " + ", ".join(["baseline, funclens"] * n) + ".", "",
            *_runs_table(e2e), "",
            f"**Speedup, end to end: {e2e['speedup']:.2f}x** (median baseline {fmt_s(med['baseline'])} / median "
            f"funclens {fmt_s(med['funclens'])}; per interleaved pair: "
            f"{', '.join(f'{x:.2f}x' for x in e2e['pair_speedups'])}). The baseline's compression took "
            f"{fmt_s(med['baseline_compress'])} of its time (median); funclens runs compression in its worker "
            "processes beside training, so it has no separate line.", ""]


def _throughput_rows(r: dict[str, Any]) -> list[list[str]]:
    tp, thr = r["throughput"], r["ceiling"]["threads"]
    label = {"fp32_all": f"{thr}-thread fp32", "fp32_1": "1-thread fp32"}
    rows = []
    for key, what in (("funclens_aggregate", "funclens, study aggregate"),
                      ("funclens_loop", "funclens, one worker inside its training loop"),
                      ("baseline_aggregate", "baseline, study aggregate"),
                      ("baseline_loop", "baseline, inside its training loop")):
        t = tp[key]
        pct = f"{t['pct']:.1f}%"
        rows.append([what, f"{t['images_per_s']:,.0f}", f"{t['gflops']:.1f}",
                     f"{f'**{pct}**' if key == 'funclens_aggregate' else pct} of {label[t['ceiling']]}"])
    return rows


def throughput_section(r: dict[str, Any]) -> list[str]:
    fl = r["flops"]
    macs = fl["macs"]
    shape = "x".join(map(str, fl["in_shape"]))
    return [f"## {SECTIONS[3]}", "",
            f"LeNet on {shape}, multiply-accumulates per image: {', '.join(f'{k} {v:,}' for k, v in macs.items())}; "
            f"total {sum(macs.values()):,}. Forward = 2 x MACs = {fl['forward']:,} FLOPs; **training = 3 x forward "
            f"= {fl['train']:,} FLOPs per image** (bias, ReLU and pooling left out; the 3x rule credits conv1 with "
            f"an input gradient it does not need, {200 * macs.get('conv1', 0) / fl['train']:.1f}% of the training "
            "FLOPs). Only the trained model's FLOPs count as useful work: the baseline's teacher forward passes "
            "and both sides' test evaluations are not credited.", "",
            *_table(["", "images / s", "GFLOP/s", "% of ceiling"], _throughput_rows(r)), "",
            "How each is computed (medians over the repeats):", "",
            "- *study aggregate* = total images trained (every training run, every epoch) / wall time of the "
            "study's training phase, from the start of the first training epoch to the end of the last one, "
            "whichever process ran it. With several worker processes this is the sum of the concurrently running "
            "processes' throughputs, and the time between epochs (test evaluation, saving) and any moment with "
            "fewer runs ready than workers count against it.",
            "- funclens's epoch times come from each run's `metrics.json` history: an epoch ends at its "
            "`preds/ep_NNN.npy` file's mtime (written right after the test evaluation) and starts `train_seconds` "
            "before that (late by one test evaluation, a few % of an epoch, for the first epoch only). Workers "
            f"spent on average {r['throughput']['funclens_concurrency']:.2f} processes' worth of time inside "
            "training loops during that phase (sum of `train_seconds` / phase wall time).",
            "- *inside the training loop* = total images / sum of per-epoch training-loop seconds (funclens: "
            "`train_seconds`, one thread per worker, so compared with the 1-thread ceiling; baseline: the loop "
            "over its DataLoader including per-item transforms and teacher forwards).",
            "- The baseline's phase runs from its first epoch's start to the last training epoch's saved "
            "predictions, the same span.", ""]


def _funclens_analysis(an: dict[str, Any]) -> list[str]:
    rows = []
    for a in (an["full"], an["small"]):
        t = a["times"]
        diag = f"{t['diagnostics']:.2f} s" if "diagnostics" in t else "-"
        rows.append([a["m"], f"{t['disagreement']:.2f} s", f"{t['hellinger']:.2f} s", f"{t['embed']:.2f} s", diag,
                     f"**{t['total']:.2f} s**", f"{a['peak'] / MIB:,.0f} MiB", f"{a['input_bytes'] / MIB:,.0f} MiB",
                     f"{(a['peak'] - a['input_bytes']) / MIB:,.0f} MiB", f"{a['rss_before'] / MIB:,.0f} MiB",
                     f"{(a['peak'] - a['rss_before']) / MIB:,.0f} MiB"])
    head = ["checkpoints", "disagreement", "hellinger", "embed", "diagnostics", "total", "peak RSS", "input",
            "peak - input", "RSS before the step", "step's own (peak - before)"]
    return ["**funclens**: `pairwise(preds, \"disagreement\")` + `pairwise(preds, \"hellinger\")` + "
            "`landscape.embed(preds)`, on the [M, N, C] float16 array; on the full size also every row's "
            "diagnostics as a summary has them (`summary.diagnose`: flips, McNemar, KL tails, true-class change, "
            "margin deciles, ECE, per class) for the final checkpoint of every trajectory against the first, with "
            "synthetic labels.", "", *_table(head, rows), "",
            "RSS before the step = interpreter, libraries (torch, scikit-learn, matplotlib) and the input.",
            f"On {an['small']['m']} checkpoints, funclens's `pairwise(preds, \"js\")` (the baseline's metric) took "
            f"{an['small']['times']['js']:.2f} s.", ""]


def _baseline_analysis(an: dict[str, Any]) -> list[str]:
    full, plain, tsne = an["full"], an["plain"], an["plain_tsne"]
    m, k, tp = full["m"], plain["m"], plain["times"]
    rows = [[f"{k}, every {_ordinal(an['stride'])} (measured)", f"{tp['pair_loop']:.2f} s", f"{tp['tsne']:.2f} s",
             f"{tp['total']:.2f} s", f"{plain['peak'] / MIB:,.0f} MiB", f"{plain['input_bytes'] / MIB:,.0f} MiB"],
            [m, f"{fmt_s(an['plain_loop_est'])} (**scaled** from {k})", f"{tsne['times']['tsne']:.2f} s (measured)",
             f"**{fmt_s(an['plain_time_est'])}**", f"{tsne['peak'] / MIB:,.0f} MiB (t-SNE step)",
             f"{tsne['input_bytes'] / MIB:,.0f} MiB"]]
    return ["**baseline**, on float32 arrays (what its files hold): disagreement and JS per pair in a Python loop "
            "over pairs, then `sklearn.manifold.TSNE` on the raw flattened vectors.", "",
            *_table(["checkpoints", "pair loop", "t-SNE", "total", "peak RSS", "input"], rows), "",
            f"The baseline's pair loop on {m} checkpoints is **not measured**: its time on {k} is scaled by the "
            f"pair count, {m}*{m - 1}/({k}*{k - 1}) = {an['pair_scale']:.1f} (every pair costs the same: two "
            f"[{full['n']:,}, {full['c']}] arrays). Its t-SNE is measured on all {m}, since a fixed 1000 "
            "iterations, not the pair count, dominate it at small sizes; the loop needs only the same input plus "
            "one pair's temporaries, so the t-SNE step's peak is the baseline's. Against that, funclens is "
            f"{an['speedup_est']:.0f}x faster on {m}; measured on the same {k} checkpoints, "
            f"{an['speedup_small']:.1f}x.", ""]


def analysis_section(r: dict[str, Any]) -> list[str]:
    a = r["analysis"]["full"]
    return [f"## {SECTIONS[4]}", "",
            f"Synthetic softmax outputs, float16, {a['m']} checkpoints x {a['n']:,} inputs x {a['c']} classes, "
            "built with a fixed seed as trajectories of correlated checkpoints (shared task signal, one offset "
            "per trajectory, noise per checkpoint; `synthetic_preds` in analysis.py). Each measurement runs in "
            "a child process of its own; the data are generated there first, then the peak RSS (VmHWM) is reset "
            "(`/proc/self/clear_refs`) so the peak is the step's own, plus the interpreter, libraries and input "
            "already resident.", "", *_funclens_analysis(r["analysis"]), *_baseline_analysis(r["analysis"])]


def _full_row(s: dict[str, Any]) -> list[Any]:
    name = f"`{s['flags']}`"
    # rows written before bf16 studies were timed carry no precision: fp32, beside the fp32 ceiling
    precision = [s["precision"], f"{s['ceiling_gflops']:.1f}"] if "precision" in s else []
    if "measured" not in s:
        return [name, *precision, s["trainings"], s["posthoc"], f"not run here (no `{s['folder']}`)", *[""] * 8]
    rec = s["measured"]
    return [name, *precision, s["trainings"], s["posthoc"], *(f"{v:.3e}" for v in s["parts"].values()),
            f"{s['total']:.3e}", fmt_s(s["limit_s"]), f"**{fmt_s(rec['wall_s'])}**", f"{s['pct_of_ceiling']:.1f}%",
            short_commit(rec["commit"])]


def _full_sources(studies: list[dict[str, Any]]) -> list[str]:
    out = []
    for s in studies:
        if "measured" in s:
            rec = s["measured"]
            where = ("kept in `benchmarks/full_studies.json`, reported " if s["historical"]
                     else "read from `{}.time` by this run, first seen ".format(s["folder"]))
            out.append(f"- `{s['flags']}`: {rec['wall_s']:,.0f} s, {where}{rec['reported']}, commit "
                       f"{short_commit(rec['commit'])}; {rec['note']}.")
    return out


def fullstudy_section(r: dict[str, Any]) -> list[str]:
    studies = r["full_studies"]
    parts = next((list(s["parts"]) for s in studies if "parts" in s), [
        "training", "test evaluation", "teacher logits (once per teacher)", "post-hoc evaluation"])
    by_precision = any("precision" in s for s in studies)
    head = ["study", *(["precision", "its ceiling, GFLOP/s"] if by_precision else []), "trainings", "post-hoc",
            *parts, "total FLOPs", "at 100% of the ceiling", "measured wall time", "% of the ceiling", "commit"]
    ceiling = (f"the ceiling of its training precision measured above ({r['ceiling']['used']['fp32_all']:.1f} "
               f"GFLOP/s in fp32, {r['ceiling']['used']['bf16_all']:.1f} in bf16, all cores; a bf16 study's "
               "forward passes run in bf16, its backward passes partly, so neither ceiling is exact for it)"
               if by_precision else f"the ceiling measured above ({r['ceiling']['used']['fp32_all']:.1f} GFLOP/s)")
    return [f"## {SECTIONS[5]}", "",
            "Each full study as funclens plans it (3 seeds, 9 students and the controls, 16/8-bit, 5 pruning "
            "amounts, 25 epochs on every training image, test evaluation after every epoch), its FLOPs counted "
            f"as in section 3, the time that work takes at 100% of {ceiling}, and the real run's wall time on "
            "this machine, read from `<folder>.time` (written by the command that ran it); the study's own files "
            "give the image counts, the counts of the runs it planned and the commit that ran it. Where the "
            "study's folder is not here, the newest entry kept in `benchmarks/full_studies.json` (one per "
            "measured run) stands in.", "",
            *_table(head, [_full_row(s) for s in studies]), "", *_full_sources(studies), "",
            "A full run takes an hour or more of both cores, so this command does not repeat them: each row's "
            "wall time is from its commit, which may predate the code measured in sections 2 and 3. Compare the "
            "commit with the one at the top of this file.", "", *_bf16_cost_lines(studies)]


def _bf16_cost_lines(studies: list[dict[str, Any]]) -> list[str]:
    """The functional cost of bf16 training, where a full study's precision check measured it."""
    out = []
    for s in studies:
        c = s.get("bf16_cost")
        if not c:
            continue
        rows = [[r["setting"], f"{r['rfd']:.2f} [{r['rfd_ci'][0]:.2f}, {r['rfd_ci'][1]:.2f}]", r["verdict"],
                 f"{100 * r['disagreement']:.2f}%", f"{r['accuracy_deviation_pct']:+.2f}"] for r in c["rows"]]
        out += [f"**The functional cost of bf16 training** (`{s['flags']}` with `precision_check = true`, commit "
                f"{c['commit']}, reported {c['reported']}): each bf16-trained model against the fp32 model of "
                "its own seed (same initial weights, same data order), as RFD: its distance over the mean "
                f"distance of independently trained fp32 models from the base ({100 * c['independent_mean']:.2f}% "
                f"of the {c['num_test']:,} test inputs), 95% interval over test inputs.", "",
                *_table(["bf16 twin of", "RFD [95% CI]", "verdict", "disagreement with its fp32 self",
                         "acc. dev. %"], rows), ""]
    return out


def bf16_section(r: dict[str, Any]) -> list[str]:
    """LeNet training in fp32 and bf16, interleaved, beside the 1-thread matmul ceilings of both dtypes."""
    if "bf16" not in r:
        return []
    b = r["bf16"]
    c, used = b["ceiling"], b["ceiling"]["used"]
    rows = [[p, *(f"{x:,.0f}" for x in b[p]["runs"]), f"**{b[p]['images_per_s']:,.0f}**", f"{b[p]['best']:,.0f}",
             f"{b[p]['gflops']:.1f}", f"{b[p]['pct']:.1f}% of {used[f'{p}_1']:.1f}"] for p in ("fp32", "bf16")]
    head = ["precision", *(f"repeat {i + 1}" for i in range(b["repeats"])), "median, images / s", "best",
            "GFLOP/s (median)", "% of the 1-thread ceiling of its dtype"]
    return [f"## {BF16_SECTION}", "",
            f"funclens's training loop (`funclens.train.train`, LeNet, batch 64, SGD) on {b['train_images']:,} "
            "MNIST-shaped images (seeded random uint8, 1x28x28, 10 classes), one epoch per precision per repeat, "
            "fp32 first in every other repeat, one thread; each epoch's figure is its training loop alone "
            "(`train_seconds`). bf16 is `torch.autocast(\"cpu\", dtype=torch.bfloat16)` around the forward pass; "
            "the weights, the loss and the optimizer stay fp32. GFLOP/s count the "
            f"{b['train_flops']:,} training FLOPs per image of section 3.", "",
            *_table(head, rows), "",
            f"**bf16 / fp32: {b['ratio']:.2f}x** (ratio of the medians; of the best epochs {b['best_ratio']:.2f}x; per "
            f"interleaved pair: {', '.join(f'{x:.2f}x' for x in b['pair_ratios'])}). The 1-thread matmul ceilings "
            f"({c['n']}x{c['n']}, best of {c['tries']}, at the start and the end) are {used['fp32_1']:.1f} GFLOP/s "
            f"in fp32 and {used['bf16_1']:.1f} in bf16, a ratio of {c['ratio']:.2f}x: what bf16 could give if "
            "LeNet's step were all matmul.", ""]


def render(results: dict[str, Any]) -> str:
    """RESULTS.md's text for the content of a RESULTS.json.

    Args:
        results: what ``benchmarks/run.py`` wrote (see ``load_results``).

    Example:
        >>> md = render(load_results(Path(__file__).with_name("RESULTS.json")))
        >>> all(f"## {s}" in md for s in SECTIONS)
        True
    """
    if results.get("format") != FORMAT:
        raise ResultsError(f"results format {results.get('format')!r}, expected {FORMAT}")
    try:
        parts = (header, targets_section, ceiling_section, endtoend_section, throughput_section,
                 analysis_section, fullstudy_section, bf16_section)
        return "\n".join(line for part in parts for line in part(results))
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise ResultsError(f"results file lacks or garbles a value: {type(e).__name__} {e}") from None


def load_results(path: Path) -> dict[str, Any]:
    """The content of a RESULTS.json.

    Args:
        path: the file ``benchmarks/run.py`` wrote.

    Example:
        >>> load_results(Path(__file__).with_name("RESULTS.json"))["format"]
        1
    """
    try:
        results = json.loads(Path(path).read_text())
    except OSError as e:
        raise ResultsError(f"cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path} is not JSON: {e}") from None
    if not isinstance(results, dict):
        raise ResultsError(f"{path} holds no benchmark results")
    return results


def render_file(json_path: Path, md_path: Path) -> str:
    """Render ``json_path`` into ``md_path``; the Markdown written.

    Args:
        json_path: a RESULTS.json.
        md_path: where the Markdown goes.
    """
    text = render(load_results(json_path))
    Path(md_path).write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="render a benchmark's RESULTS.json as Markdown")
    ap.add_argument("results", type=Path, help="RESULTS.json written by benchmarks/run.py")
    ap.add_argument("-o", "--output", type=Path, default=None, help="default: beside it, with .md")
    a = ap.parse_args(argv)
    try:
        render_file(a.results, a.output or a.results.with_suffix(".md"))
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
