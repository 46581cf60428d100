"""A study at the machine's limit, measured against the pipeline researchers write by hand.

One process measures, in this order, so every comparison shares the same run on the same (possibly noisy)
machine:

1. the compute ceiling: ``torch.matmul`` of two 2048x2048 fp32 matrices with all cores and with one thread
   (best of several, GFLOP/s), and bf16 for reference;
2. a reduced paper-mnist study (MNIST subset, LeNet, 3 seeds, 3 students, 16/8-bit, 5 pruning amounts), run
   end to end by funclens (``funclens.study.run_study`` into a fresh folder, report included) and by the plain
   pipeline of ``benchmarks/baseline.py``, interleaved (baseline, funclens, baseline, funclens, ...);
3. training throughput of both against the ceiling, from LeNet's FLOPs per image counted analytically;
4. the analysis of a synthetic CIFAR-100-sized study (300 checkpoints x 10,000 inputs x 100 classes,
   float16): all pairwise distances and the landscape, time and peak memory, in a child process each, beside
   the baseline's plain way: its Python loop over pairs measured on 30 checkpoints and scaled by pair count,
   its t-SNE of the raw vectors measured on all 300;
5. the full paper-mnist study's FLOPs and its time at 100% of the ceiling, beside the real run's wall time
   when ``results/paper-mnist.time`` holds it;

then writes ``benchmarks/RESULTS.md`` (``--quick``: tiny sizes, ``benchmarks/RESULTS-quick.md``).

Usage:
    make bench                                   # = .venv/bin/python benchmarks/run.py
    .venv/bin/python benchmarks/run.py --quick   # smoke test, tens of seconds
"""

# Imports at the top are kept light on purpose: funclens's worker processes are spawned, and spawning
# re-runs this file's top level in every worker; torchvision, PIL and scikit-learn (the baseline's) are
# imported where they are used, so they do not slow funclens's workers down.
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
# Full studies whose real wall time is set beside their FLOP count: (preset, arch, input shape, classes, the
# study's folder). Whoever runs one writes its wall seconds to <folder>.time (first word); the study's own files give
# the image counts and the commit that ran it.
FULL_STUDIES = (("paper-mnist", "lenet", (1, 28, 28), 10, REPO / "results" / "paper-mnist"),
                ("paper-cifar10", "lenet", (3, 32, 32), 10, REPO / "results" / "paper-cifar10-lenet"))
GIB = 1 << 30
MIB = 1 << 20

# The targets.
TARGET_TRAIN_PCT = 50.0  # LeNet training, % of the measured fp32 ceiling, averaged over a study
TARGET_SPEEDUP = 2.5  # reduced paper-mnist end to end, baseline time / funclens time
TARGET_ANALYSIS_S = 20.0  # 300 x 10,000 x 100: all pairwise distances + landscape
TARGET_ANALYSIS_GIB = 4.0  # peak memory of that step


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the real run and ``--quick``."""

    matmul_n: int = 2048
    matmul_tries: int = 5
    train_subset: int = 12000
    test_subset: int = 2000
    epochs: int = 2
    seeds: tuple[int, ...] = (0, 1, 2)
    student_seeds: tuple[int, ...] = (2, 24, 42)
    prune: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    repeats: int = 2
    analysis_m: int = 300  # checkpoints
    analysis_n: int = 10000  # test inputs
    analysis_c: int = 100  # classes
    baseline_m: int = 30  # the baseline's analysis is measured on this many and scaled by pair count


QUICK = Sizes(matmul_n=512, matmul_tries=2, train_subset=256, test_subset=128, epochs=1, seeds=(0, 1),
              student_seeds=(2,), prune=(0.5, 0.9), repeats=1, analysis_m=24, analysis_n=500, analysis_c=100,
              baseline_m=6)


def reduced_study(sz: Sizes):
    """The reduced paper-mnist study: the paper's recipe on an MNIST subset, one alpha, no control student."""
    from funclens.config import DataCfg, DistillGrid, ModelCfg, StudyCfg, TrainCfg

    return StudyCfg(name="bench-mnist", data=DataCfg("mnist", train_subset=sz.train_subset,
                                                     test_subset=sz.test_subset),
                    model=ModelCfg("lenet"), train=TrainCfg(epochs=sz.epochs), seeds=sz.seeds,
                    distill=DistillGrid(alphas=(0.5,), seeds=sz.student_seeds, control=False),
                    quantize=("16-bit", "8-bit"), prune=sz.prune)


def baseline_cfg(study, data_dir: Path):
    """The baseline's config, read off the same StudyCfg so both sides do the same work by construction."""
    import baseline as bl
    from funclens.report import N_BOOT

    t = study.train
    assert t.optimizer == "sgd" and not study.distill.control and not study.prune_global
    assert study.distill.init == "base-init" and study.data.dataset == "mnist" and study.model.arch == "lenet"
    return bl.BaselineCfg(data_dir=data_dir, train_subset=study.data.train_subset,
                          test_subset=study.data.test_subset, epochs=t.epochs, seeds=study.seeds,
                          alphas=study.distill.alphas, student_seeds=study.distill.seeds,
                          temperature=study.distill.temperature, quantize=study.quantize, prune=study.prune,
                          batch_size=t.batch_size, lr=t.lr, momentum=t.momentum, n_boot=N_BOOT)


# ---------------------------------------------------------------- machine and ceiling


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    from funclens import __version__
    from funclens.store import GIT_COMMIT

    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "cpu": cpu, "mem_bytes": mem,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "numpy": np.__version__,
            "python": platform.python_version(), "funclens": __version__, "commit": GIT_COMMIT or "unknown"}


def matmul_gflops(threads: int, dtype: torch.dtype, n: int, tries: int) -> float:
    """Best-of-``tries`` GFLOP/s of an n x n matmul (2 n^3 FLOPs) with ``threads`` threads."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        c = torch.empty(n, n, dtype=dtype)
        torch.matmul(a, b, out=c)  # warm-up: the first call picks kernels and touches the memory
        best = math.inf
        for _ in range(tries):
            t0 = time.perf_counter()
            torch.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t0)
        return 2.0 * n ** 3 / best / 1e9
    finally:
        torch.set_num_threads(prev)


def measure_ceiling(sz: Sizes) -> dict[str, Any]:
    threads = torch.get_num_threads()  # torch's default: one per core
    return {"threads": threads, "n": sz.matmul_n, "tries": sz.matmul_tries,
            "fp32_all": matmul_gflops(threads, torch.float32, sz.matmul_n, sz.matmul_tries),
            "fp32_1": matmul_gflops(1, torch.float32, sz.matmul_n, sz.matmul_tries),
            "bf16_all": matmul_gflops(threads, torch.bfloat16, sz.matmul_n, sz.matmul_tries)}


def combine_ceilings(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """The ceiling used below: the best of the measurements at the start and at the end of the run.

    A ceiling is the most the machine showed it can do, so the better of two measurements counts; other work
    on the machine only ever lowers a measurement. All cores can never be slower than one in principle: if
    they measured so (threads waiting on each other while other processes hold the cores), the one-thread
    figure is used for them too, and ``disturbed`` says so.
    """
    best = {k: max(first[k], last[k]) for k in ("fp32_all", "fp32_1", "bf16_all")}
    disturbed = best["fp32_all"] < best["fp32_1"]
    if disturbed:
        best["fp32_all"] = best["fp32_1"]
    return {**first, **best, "disturbed": disturbed, "start": first, "end": last}


def lenet_flops(in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> dict[str, Any]:
    """LeNet's multiply-accumulates per image, layer by layer, counted from the layer shapes.

    A forward pass on one image records each layer's output shape; the count is then analytic: a Conv2d does
    ``in_channels / groups * kh * kw`` MACs per output element, a Linear ``in_features`` per output. Biases,
    ReLU and pooling (under 1% of the work) are left out. FLOPs = 2 x MACs; training = 3 x forward
    (forward, gradient w.r.t. activations, gradient w.r.t. weights: the usual rule).
    """
    import torch.nn as nn

    from funclens.models import create_model

    model = create_model("lenet", in_shape=in_shape, num_classes=num_classes)
    macs: dict[str, int] = {}

    def hook(name: str):
        def fn(mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            per_out = (mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
                       if isinstance(mod, nn.Conv2d) else mod.in_features)
            macs[name] = int(out[0].numel()) * per_out
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, *in_shape))
    for h in handles:
        h.remove()
    fwd = 2 * sum(macs.values())
    return {"macs": macs, "forward": fwd, "train": 3 * fwd}


# ---------------------------------------------------------------- end to end


def funclens_once(study, data_dir: Path, jobs: int) -> dict[str, Any]:
    """One funclens study through its real code path into a fresh folder; times read back from the store.

    Epoch start and end times are not recorded by funclens, so they are reconstructed: an epoch ends when its
    prediction file is written (its mtime) and starts ``train_seconds`` (from metrics.json) before that; the
    test-set evaluation between the training loop and the file (a few % of an epoch) shifts that start a
    little late, which makes the measured phase slightly short for the first epoch only.
    """
    from funclens import execute, paths
    from funclens.execute import RunContext
    from funclens.plan import plan
    from funclens.store import Store
    from funclens.study import run_study

    # Each repeat reads its files, as the baseline does: forget the data set a previous repeat left loaded.
    execute._DATA_CACHE.clear()
    threads = torch.get_num_threads()  # run_local with jobs=1 leaves this process on one thread; restored below
    with tempfile.TemporaryDirectory(prefix="funclens-bench-") as tmp:
        out = Path(tmp)
        wall0, t0 = time.time(), time.perf_counter()
        try:
            run_study(study, RunContext(out=str(out), data_dir=str(data_dir), offline=True), jobs=jobs,
                      report=True)
        finally:
            torch.set_num_threads(threads)
        total = time.perf_counter() - t0
        wall1 = time.time()
        store = Store(out)
        epochs: list[dict] = []
        done_mtimes = []
        for p in plan(study):
            rdir = paths.run_dir(out, p.run_id)
            done_mtimes.append(os.path.getmtime(paths.done_file(rdir)))
            if p.spec.kind != "train":
                continue
            m = store.load_metrics(p.run_id)
            for h in m["history"]:
                end = os.path.getmtime(paths.preds_file(rdir, h["epoch"]))
                epochs.append({"run": p.run_id, "images": int(m["train_images"]), "train_seconds": h["train_seconds"],
                               "images_per_second": h["images_per_second"], "end": end,
                               "start": end - h["train_seconds"]})
        summary = json.loads(paths.summary_file(out).read_text())
    last_done = max(done_mtimes)
    return {"total": total, "read_and_runs": last_done - wall0, "analysis_report": wall1 - last_done,
            "train_phase": max(e["end"] for e in epochs) - min(e["start"] for e in epochs),
            "train_loop": sum(e["train_seconds"] for e in epochs), "images": sum(e["images"] for e in epochs),
            "base_accuracy": summary["base"]["accuracy"], "epochs": epochs}


def baseline_once(cfg) -> dict[str, Any]:
    import baseline as bl

    with tempfile.TemporaryDirectory(prefix="baseline-bench-") as tmp:
        tm = bl.run_pipeline(cfg, Path(tmp))
    return {"total": tm.total, "read": tm.read, "train_phase": tm.train_phase, "train_loop": tm.train_loop,
            "compress": tm.compress, "analysis": tm.analysis, "images": tm.images_trained,
            "base_accuracy": tm.base_accuracy}


def end_to_end(sz: Sizes, data_dir: Path, jobs: int) -> dict[str, Any]:
    study = reduced_study(sz)
    cfg = baseline_cfg(study, data_dir)
    from funclens.plan import plan

    planned = plan(study)
    runs: dict[str, list[dict]] = {"baseline": [], "funclens": []}
    for r in range(sz.repeats):
        log(f"end to end {r + 1}/{sz.repeats}: baseline (torch threads {torch.get_num_threads()})")
        runs["baseline"].append(baseline_once(cfg))
        log(f"  baseline {runs['baseline'][-1]['total']:.1f} s; funclens (jobs {jobs})")
        runs["funclens"].append(funclens_once(study, data_dir, jobs))
        log(f"  funclens {runs['funclens'][-1]['total']:.1f} s")
    return {"study": study, "runs": runs, "planned": len(planned),
            "trainings": sum(p.spec.kind == "train" for p in planned), "jobs": jobs}


# ---------------------------------------------------------------- analysis (child processes)


def synthetic_preds(indices: list[int], m_total: int, n: int, c: int, seed: int = 0) -> np.ndarray:
    """Softmax outputs ``[len(indices), n, c]`` float16 of checkpoints from a synthetic study of ``m_total``.

    The study is trajectories of ``E`` epochs (25 as in the paper, fewer for tiny studies). Every model shares
    a task signal (the true class stands out, plus input-level difficulty common to all models) that sharpens
    as training goes on; each trajectory adds its own fixed logits (its "seed"), each checkpoint a little
    noise that shrinks with training. So checkpoints of one trajectory are close and trajectories differ, as
    in a real study. Checkpoint ``i`` depends only on (seed, i), so any subset can be generated on its own.
    """
    epochs = max(2, min(25, m_total // 4))
    rng = np.random.default_rng([seed, 0])
    y = rng.integers(0, c, n)
    common = rng.standard_normal((n, c), dtype=np.float32)
    common[np.arange(n), y] += 3.0
    out = np.empty((len(indices), n, c), dtype=np.float16)
    traj: tuple[int, np.ndarray] | None = None
    for k, i in enumerate(indices):
        t, e = divmod(i, epochs)
        progress = (e + 1) / epochs
        if traj is None or traj[0] != t:
            traj = (t, np.random.default_rng([seed, 1, t]).standard_normal((n, c), dtype=np.float32))
        z = np.random.default_rng([seed, 2, i]).standard_normal((n, c), dtype=np.float32)
        logits = (0.5 + 2.5 * progress) * common + traj[1] + (0.1 + 0.4 * (1 - progress)) * z
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        out[k] = logits
    return out


def _status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS, so the peak measured is the step's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def analysis_child(spec: dict) -> dict[str, Any]:
    """Run one analysis measurement in this (child) process; the parent reads the JSON it prints."""
    import resource

    import sklearn.manifold  # noqa: F401  (imported before timing: the step measured is the computation)

    idx = list(range(0, spec["m_total"], spec["stride"]))
    preds = synthetic_preds(idx, spec["m_total"], spec["n"], spec["c"])
    times: dict[str, float] = {}
    if spec["impl"] == "funclens":
        from funclens.landscape import embed
        from funclens.metrics import pairwise

        inputs = preds
        rss_before = _status_bytes("VmRSS")
        peak_reset = _reset_peak()
        t0 = time.perf_counter()
        pairwise(inputs, "disagreement")
        times["disagreement"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        pairwise(inputs, "hellinger")
        times["hellinger"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        embed(inputs)
        times["embed"] = time.perf_counter() - t1
        times["total"] = time.perf_counter() - t0
        peak = _status_bytes("VmHWM")
        if spec.get("js"):  # the baseline's metric, for a like-for-like line; outside the step and its peak
            t1 = time.perf_counter()
            pairwise(inputs, "js")
            times["js"] = time.perf_counter() - t1
    else:
        sys.path.insert(0, str(BENCH_DIR))
        import baseline as bl

        # The baseline stores float32 softmax files and loads them as a list: that list is its input.
        inputs = [p.astype(np.float32) for p in preds]
        del preds
        rss_before = _status_bytes("VmRSS")
        peak_reset = _reset_peak()
        t0 = time.perf_counter()
        if "loop" in spec["parts"]:
            bl.pairwise_loop(inputs)
            times["pair_loop"] = time.perf_counter() - t0
        if "tsne" in spec["parts"]:
            t1 = time.perf_counter()
            bl.tsne_raw(inputs)
            times["tsne"] = time.perf_counter() - t1
        times["total"] = time.perf_counter() - t0
        peak = _status_bytes("VmHWM")
    input_bytes = sum(a.nbytes for a in inputs) if isinstance(inputs, list) else int(inputs.nbytes)
    if peak is None:  # no /proc: the process's lifetime peak (KiB on Linux)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"impl": spec["impl"], "m": len(idx), "n": spec["n"], "c": spec["c"], "times": times,
            "input_bytes": input_bytes, "rss_before": rss_before, "peak": peak, "peak_is_step_only": peak_reset}


def run_child(spec: dict) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"analysis child {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def analysis_bench(sz: Sizes) -> dict[str, Any]:
    base = {"m_total": sz.analysis_m, "n": sz.analysis_n, "c": sz.analysis_c}
    stride = max(1, sz.analysis_m // sz.baseline_m)
    log(f"analysis: funclens on {sz.analysis_m} x {sz.analysis_n} x {sz.analysis_c}")
    full = run_child({**base, "impl": "funclens", "stride": 1})
    log(f"  {full['times']['total']:.1f} s; funclens on every {stride}th checkpoint")
    small = run_child({**base, "impl": "funclens", "stride": stride, "js": True})
    log(f"  {small['times']['total']:.1f} s; baseline (pair loop, t-SNE) on every {stride}th checkpoint")
    plain = run_child({**base, "impl": "baseline", "stride": stride, "parts": ["loop", "tsne"]})
    log(f"  {plain['times']['total']:.1f} s; baseline t-SNE on all {sz.analysis_m}")
    plain_tsne = run_child({**base, "impl": "baseline", "stride": 1, "parts": ["tsne"]})
    log(f"  {plain_tsne['times']['total']:.1f} s")
    m, k = full["m"], plain["m"]
    # Every pair costs the same in the loop, so its time scales exactly with the pair count. t-SNE does not
    # (a fixed 1000 iterations dominate at small M), so it is measured on all M instead.
    scale = (m * (m - 1)) / (k * (k - 1))
    loop_est = plain["times"]["pair_loop"] * scale
    return {"full": full, "small": small, "plain": plain, "plain_tsne": plain_tsne, "stride": stride,
            "pair_scale": scale, "plain_loop_est": loop_est,
            "plain_time_est": loop_est + plain_tsne["times"]["tsne"]}


# ---------------------------------------------------------------- full paper-mnist


def full_estimate(ceiling: dict) -> list[dict[str, Any]]:
    """FLOPs of each full study in FULL_STUDIES as funclens plans it, its time at 100% of the ceiling, and
    the real run's wall time where it ran here."""
    from funclens.config import preset_study
    from funclens.plan import plan
    from funclens.store import Store

    out = []
    for preset, arch, in_shape, classes, folder in FULL_STUDIES:
        study = preset_study(preset, arch)
        planned = plan(study)
        trainings = [p for p in planned if p.spec.kind == "train"]
        students = [p for p in trainings if p.spec.distill is not None]
        teachers = {p.spec.distill.teacher for p in students}
        posthoc = [p for p in planned if p.spec.kind != "train"]
        base_id = next(p.run_id for p in planned if p.role == "base")
        store = Store(folder)
        base = store.load_metrics(base_id) if store.is_done(base_id) else None
        time_file = folder.with_suffix(".time")
        row: dict[str, Any] = {"preset": preset, "arch": arch, "folder": folder.relative_to(REPO),
                               "trainings": len(trainings), "students": len(students), "teachers": len(teachers),
                               "posthoc": len(posthoc), "epochs": study.train.epochs, "wall_s": None}
        if base is None:
            out.append(row)
            continue
        fl = lenet_flops(in_shape, classes)
        n_train, n_test, e = int(base["train_images"]), int(base["test_images"]), study.train.epochs
        parts = {
            "training": len(trainings) * e * n_train * fl["train"],
            "test evaluation after every epoch": len(trainings) * e * n_test * fl["forward"],
            # the least possible: each teacher's logits over the training set once (funclens: once per
            # worker process and teacher)
            "teacher logits, once per teacher": len(teachers) * n_train * fl["forward"],
            "post-hoc models' evaluation": len(posthoc) * n_test * fl["forward"],
        }
        total = sum(parts.values())
        if time_file.is_file():
            try:
                row["wall_s"] = float(time_file.read_text().split()[0])
            except (ValueError, IndexError):
                pass
        row.update(n_train=n_train, n_test=n_test, parts=parts, total=total,
                   limit_s=total / (ceiling["fp32_all"] * 1e9), commit=base.get("git_commit") or "unknown")
        out.append(row)
    return out


# ---------------------------------------------------------------- RESULTS.md


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def _fmt_s(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    return f"{s:.2f} s"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def throughput(e2e: dict, flops: dict, ceiling: dict) -> dict[str, Any]:
    """Training throughput of both sides, median over repeats (see RESULTS.md for how each is computed)."""
    f, c_all, c_1 = flops["train"], ceiling["fp32_all"] * 1e9, ceiling["fp32_1"] * 1e9
    fl, bl = e2e["runs"]["funclens"], e2e["runs"]["baseline"]
    agg_f = _med([r["images"] / r["train_phase"] for r in fl])
    loop_f = _med([r["images"] / r["train_loop"] for r in fl])
    conc_f = _med([r["train_loop"] / r["train_phase"] for r in fl])
    agg_b = _med([r["images"] / r["train_phase"] for r in bl])
    loop_b = _med([r["images"] / r["train_loop"] for r in bl])
    return {"f_agg": agg_f, "f_agg_pct": 100 * agg_f * f / c_all, "f_loop": loop_f,
            "f_loop_pct1": 100 * loop_f * f / c_1, "f_conc": conc_f,
            "b_agg": agg_b, "b_agg_pct": 100 * agg_b * f / c_all, "b_loop": loop_b,
            "b_loop_pct": 100 * loop_b * f / c_all}


def write_results(path: Path, *, info: dict, command: str, quick: bool, load: dict, ceiling: dict, flops: dict,
                  e2e: dict, analysis: dict, full: dict) -> str:
    tp = throughput(e2e, flops, ceiling)
    fl, bl = e2e["runs"]["funclens"], e2e["runs"]["baseline"]
    t_f, t_b = _med([r["total"] for r in fl]), _med([r["total"] for r in bl])
    speedup = t_b / t_f
    pair_ratios = [b["total"] / f["total"] for b, f in zip(bl, fl)]
    a_full, a_small, a_plain = analysis["full"], analysis["small"], analysis["plain"]
    st = e2e["study"]
    thr = ceiling["threads"]
    L: list[str] = []
    w = L.append
    w("# funclens benchmarks" + (" (--quick smoke run: tiny sizes, figures mean nothing)" if quick else ""))
    w("")
    w(f"Measured {info['date']} with `{command}`" + (" (what `make bench` runs)." if command.endswith(
        "benchmarks/run.py") else "."))
    w("")
    w(f"Machine: {info['nproc']} cores usable ({info['cpu_count']} reported), {info['cpu']}, "
      f"{info['mem_bytes'] / GIB:.1f} GiB RAM; Python {info['python']}, torch {info['torch']} "
      f"({info['torch_threads']} threads by default), numpy {info['numpy']}; funclens {info['funclens']} at "
      f"commit {info['commit'][:12]}.")
    w(f"Load average (1 min) at the start {load['start']:.2f}, at the end {load['end']:.2f}: other work on the "
      "machine lowers every figure below, and the interleaving shares it out between the two sides.")
    w("")
    w("## Targets of the issue")
    w("")
    w("| target | measured | met |")
    w("|---|---|---|")
    w(f"| LeNet training at >= {TARGET_TRAIN_PCT:.0f}% of the measured fp32 ceiling, averaged over a study "
      f"| {tp['f_agg_pct']:.1f}% of {ceiling['fp32_all']:.1f} GFLOP/s ({thr} threads) | "
      f"{_met(tp['f_agg_pct'] >= TARGET_TRAIN_PCT)} |")
    w(f"| reduced paper-mnist end to end >= {TARGET_SPEEDUP}x faster than the baseline | {speedup:.2f}x "
      f"({_fmt_s(t_b)} vs {_fmt_s(t_f)}, medians of {len(fl)}) | {_met(speedup >= TARGET_SPEEDUP)} |")
    w(f"| analysis of {a_full['m']} x {a_full['n']:,} x {a_full['c']} in < {TARGET_ANALYSIS_S:.0f} s | "
      f"{a_full['times']['total']:.2f} s | {_met(a_full['times']['total'] < TARGET_ANALYSIS_S)} |")
    w(f"| ... with peak memory < {TARGET_ANALYSIS_GIB:.0f} GiB | {a_full['peak'] / GIB:.2f} GiB total peak RSS "
      f"(input {a_full['input_bytes'] / GIB:.2f} GiB) | {_met(a_full['peak'] < TARGET_ANALYSIS_GIB * GIB)} |")
    pm = full[0]
    if pm.get("wall_s") is None:
        w("| full paper-mnist wall time beside the FLOP limit | not run here (no results/paper-mnist.time) | - |")
    else:
        w(f"| full paper-mnist wall time beside the FLOP limit | {_fmt_s(pm['wall_s'])} (commit "
          f"{pm['commit'][:7]}) vs {_fmt_s(pm['limit_s'])} at 100% of the ceiling "
          f"({100 * pm['limit_s'] / pm['wall_s']:.1f}% of the ceiling); see section 5 | - |")
    w("")

    w("## 1. Compute ceiling")
    w("")
    w(f"`torch.matmul` of two {ceiling['n']}x{ceiling['n']} matrices (2 n^3 FLOPs), best of {ceiling['tries']} "
      "after a warm-up call; measured at the start and again at the end of the run.")
    w("")
    w("| dtype | threads | start, GFLOP/s | end, GFLOP/s | used below |")
    w("|---|---|---|---|---|")
    c0, c1 = ceiling["start"], ceiling["end"]
    w(f"| fp32 | {thr} | {c0['fp32_all']:.1f} | {c1['fp32_all']:.1f} | **{ceiling['fp32_all']:.1f}** |")
    w(f"| fp32 | 1 | {c0['fp32_1']:.1f} | {c1['fp32_1']:.1f} | {ceiling['fp32_1']:.1f} |")
    w(f"| bf16 (reference only) | {thr} | {c0['bf16_all']:.1f} | {c1['bf16_all']:.1f} | {ceiling['bf16_all']:.1f} |")
    w("")
    w(f"\"The ceiling\" below is the fp32 figure with {thr} threads, the better of the two measurements (other "
      "work on the machine only ever lowers one).")
    if ceiling["disturbed"]:
        w(f"**Warning: with {thr} threads fp32 measured slower than with 1 thread** (threads waiting on each "
          "other while other processes held the cores), so the 1-thread figure stands in for it: the machine "
          "was busy, and every percentage of the ceiling below may be too high, by up to a factor of the "
          "number of cores.")
    w("")

    w("## 2. Reduced paper-mnist, end to end")
    w("")
    w(f"Work: MNIST, first {st.data.train_subset:,} training and {st.data.test_subset:,} test images; LeNet, "
      f"{st.train.epochs} epoch{'s' if st.train.epochs != 1 else ''}, SGD lr {st.train.lr} momentum "
      f"{st.train.momentum}, batch {st.train.batch_size}; "
      f"seeds {', '.join(map(str, st.seeds))} (the first is the base); students alpha "
      f"{', '.join(f'{a:g}' for a in st.distill.alphas)} x seeds {', '.join(map(str, st.distill.seeds))} "
      f"(T = {st.distill.temperature:g}, base-init, no control); quantization {', '.join(st.quantize)}; "
      f"per-layer L1 pruning {', '.join(f'{a:.0%}' for a in st.prune)}: {e2e['trainings']} trainings and "
      f"{e2e['planned'] - e2e['trainings']} post-hoc models; analysis, tables and figures over every "
      "checkpoint.")
    w("")
    w(f"- **funclens**: `funclens.study.run_study(StudyCfg, RunContext(out=<fresh temp folder>, offline=True), "
      f"jobs={e2e['jobs']}, report=True)`: its local executor, {e2e['jobs']} forked single-thread worker "
      "processes, default settings (channels-last, cached teacher logits), the report (summary, tables, "
      "landscape, HTML) included.")
    w(f"- **baseline**: `benchmarks/baseline.py`'s `run_pipeline`, one step after another in this process with "
      f"torch's default {info['torch_threads']} threads: per-item PIL Dataset + torchvision transforms + "
      "DataLoader, teacher forward at every step, np.save per epoch, Python loop over pairs, t-SNE of raw "
      "vectors.")
    w("- Both read the same canonical IDX files with `funclens.data.read_idx`, inside the measured time "
      "(a fraction of a second; funclens reads once, in the parent, whose forked workers inherit the arrays).")
    w("- Run interleaved in this one process: " + ", ".join(["baseline, funclens"] * len(fl)) + ".")
    w("")
    w("| | " + " | ".join(f"baseline {i + 1}" for i in range(len(bl))) + " | "
      + " | ".join(f"funclens {i + 1}" for i in range(len(fl))) + " |")
    w("|---|" + "---|" * (len(bl) + len(fl)))
    w("| end to end | " + " | ".join(_fmt_s(r["total"]) for r in bl) + " | "
      + " | ".join(_fmt_s(r["total"]) for r in fl) + " |")
    w("| training phase (wall) | " + " | ".join(_fmt_s(r["train_phase"]) for r in bl) + " | "
      + " | ".join(_fmt_s(r["train_phase"]) for r in fl) + " |")
    w("| data, training, compression (wall) | " + " | ".join(_fmt_s(r["total"] - r["analysis"]) for r in bl)
      + " | " + " | ".join(_fmt_s(r["read_and_runs"]) for r in fl) + " |")
    w("| analysis + report (wall) | " + " | ".join(_fmt_s(r["analysis"]) for r in bl) + " | "
      + " | ".join(_fmt_s(r["analysis_report"]) for r in fl) + " |")
    w("| base model's test accuracy | " + " | ".join(f"{100 * r['base_accuracy']:.2f}%" for r in bl) + " | "
      + " | ".join(f"{100 * r['base_accuracy']:.2f}%" for r in fl) + " |")
    w("")
    w(f"**Speedup, end to end: {speedup:.2f}x** (median baseline {_fmt_s(t_b)} / median funclens {_fmt_s(t_f)}; "
      f"per interleaved pair: {', '.join(f'{r:.2f}x' for r in pair_ratios)}). The baseline's compression took "
      f"{_fmt_s(_med([r['compress'] for r in bl]))} of its time (median); funclens runs compression in its "
      "worker processes beside training, so it has no separate line.")
    w("")

    w("## 3. Training throughput")
    w("")
    mac_cells = ", ".join(f"{k} {v:,}" for k, v in flops["macs"].items())
    w(f"LeNet on 1x28x28, multiply-accumulates per image: {mac_cells}; total {sum(flops['macs'].values()):,}. "
      f"Forward = 2 x MACs = {flops['forward']:,} FLOPs; **training = 3 x forward = {flops['train']:,} FLOPs "
      "per image** (bias, ReLU and pooling left out; the 3x rule credits conv1 with an input gradient it does "
      f"not need, {200 * flops['macs'].get('conv1', 0) / flops['train']:.1f}% of the training FLOPs). "
      "Only the trained model's FLOPs count as useful work: the baseline's teacher forward passes and both "
      "sides' test evaluations are not credited.")
    w("")
    w("| | images / s | GFLOP/s | % of ceiling |")
    w("|---|---|---|---|")
    w(f"| funclens, study aggregate | {tp['f_agg']:,.0f} | {tp['f_agg'] * flops['train'] / 1e9:.1f} | "
      f"**{tp['f_agg_pct']:.1f}%** of {thr}-thread fp32 |")
    w(f"| funclens, one worker inside its training loop | {tp['f_loop']:,.0f} | "
      f"{tp['f_loop'] * flops['train'] / 1e9:.1f} | {tp['f_loop_pct1']:.1f}% of 1-thread fp32 |")
    w(f"| baseline, study aggregate | {tp['b_agg']:,.0f} | {tp['b_agg'] * flops['train'] / 1e9:.1f} | "
      f"{tp['b_agg_pct']:.1f}% of {thr}-thread fp32 |")
    w(f"| baseline, inside its training loop | {tp['b_loop']:,.0f} | {tp['b_loop'] * flops['train'] / 1e9:.1f} | "
      f"{tp['b_loop_pct']:.1f}% of {thr}-thread fp32 |")
    w("")
    w("How each is computed (medians over the repeats):")
    w("")
    w("- *study aggregate* = total images trained (every training run, every epoch) / wall time of the study's "
      "training phase, from the start of the first training epoch to the end of the last one, whichever "
      "process ran it. With several worker processes this is the sum of the concurrently running processes' "
      "throughputs, and the time between epochs (test evaluation, saving) and any moment with fewer runs ready "
      "than workers count against it.")
    w("- funclens's epoch times come from each run's `metrics.json` history: an epoch ends at its "
      "`preds/ep_NNN.npy` file's mtime (written right after the test evaluation) and starts `train_seconds` "
      "before that (late by one test evaluation, a few % of an epoch, for the first epoch only)."
      f" Workers spent on average {tp['f_conc']:.2f} processes' worth of time "
      "inside training loops during that phase (sum of `train_seconds` / phase wall time).")
    w("- *inside the training loop* = total images / sum of per-epoch training-loop seconds (funclens: "
      "`train_seconds`, one thread per worker, so compared with the 1-thread ceiling; baseline: the loop over "
      "its DataLoader including per-item transforms and teacher forwards).")
    w("- The baseline's phase runs from its first epoch's start to the last training epoch's saved predictions, "
      "the same span.")
    w("")

    w("## 4. Analysis of a CIFAR-100-sized study")
    w("")
    w(f"Synthetic softmax outputs, float16, {a_full['m']} checkpoints x {a_full['n']:,} inputs x {a_full['c']} "
      "classes, built with a fixed seed as trajectories of correlated checkpoints (shared task signal, one "
      "offset per trajectory, noise per checkpoint; `synthetic_preds` in run.py). Each measurement runs in a "
      "child process of its own; the data are generated there first, then the peak RSS (VmHWM) is reset "
      "(`/proc/self/clear_refs`) so the peak is the step's own, plus the interpreter, libraries and input "
      "already resident.")
    w("")
    w("**funclens**: `pairwise(preds, \"disagreement\")` + `pairwise(preds, \"hellinger\")` + "
      "`landscape.embed(preds)`, on the [M, N, C] float16 array.")
    w("")
    w("| checkpoints | disagreement | hellinger | embed | total | peak RSS | input | peak - input | RSS before "
      "the step | step's own (peak - before) |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for a in (a_full, a_small):
        t = a["times"]
        w(f"| {a['m']} | {t['disagreement']:.2f} s | {t['hellinger']:.2f} s | {t['embed']:.2f} s | "
          f"**{t['total']:.2f} s** | {a['peak'] / MIB:,.0f} MiB | {a['input_bytes'] / MIB:,.0f} MiB | "
          f"{(a['peak'] - a['input_bytes']) / MIB:,.0f} MiB | {a['rss_before'] / MIB:,.0f} MiB | "
          f"{(a['peak'] - a['rss_before']) / MIB:,.0f} MiB |")
    w("")
    w("RSS before the step = interpreter, libraries (torch, scikit-learn, matplotlib) and the input.")
    w(f"On {a_small['m']} checkpoints, funclens's `pairwise(preds, \"js\")` (the baseline's metric) took "
      f"{a_small['times']['js']:.2f} s.")
    w("")
    w("**baseline**, on float32 arrays (what its files hold): disagreement and JS per pair in a Python loop "
      "over pairs, then `sklearn.manifold.TSNE` on the raw flattened vectors.")
    w("")
    tp_, tt_ = a_plain["times"], analysis["plain_tsne"]["times"]
    m, k = a_full["m"], a_plain["m"]
    w("| checkpoints | pair loop | t-SNE | total | peak RSS | input |")
    w("|---|---|---|---|---|---|")
    w(f"| {k}, every {analysis['stride']}th (measured) | {tp_['pair_loop']:.2f} s | {tp_['tsne']:.2f} s | "
      f"{tp_['total']:.2f} s | {a_plain['peak'] / MIB:,.0f} MiB | {a_plain['input_bytes'] / MIB:,.0f} MiB |")
    w(f"| {m} | {_fmt_s(analysis['plain_loop_est'])} (**scaled** from {k}) | {tt_['tsne']:.2f} s (measured) | "
      f"**{_fmt_s(analysis['plain_time_est'])}** | {analysis['plain_tsne']['peak'] / MIB:,.0f} MiB (t-SNE step) "
      f"| {analysis['plain_tsne']['input_bytes'] / MIB:,.0f} MiB |")
    w("")
    w(f"The baseline's pair loop on {m} checkpoints is **not measured**: its time on {k} is scaled by the pair "
      f"count, {m}*{m - 1}/({k}*{k - 1}) = {analysis['pair_scale']:.1f} (every pair costs the same: two "
      f"[{a_full['n']:,}, {a_full['c']}] arrays). Its t-SNE is measured on all {m}, since a fixed 1000 "
      "iterations, not the pair count, dominate it at small sizes; the loop needs only the same input plus one "
      "pair's temporaries, so the t-SNE step's peak is the baseline's. Against that, funclens is "
      f"{analysis['plain_time_est'] / a_full['times']['total']:.0f}x faster on {m}; measured on the same {k} "
      f"checkpoints, {a_plain['times']['total'] / a_small['times']['total']:.1f}x.")
    w("")

    w("## 5. Full studies: wall time beside the FLOP limit")
    w("")
    w("Each full study as funclens plans it (3 seeds, 9 students and a control, 16/8-bit, 5 pruning amounts, "
      "25 epochs on every training image, test evaluation after every epoch), its FLOPs counted as in "
      f"section 3, the time that work takes at 100% of the ceiling measured above ({ceiling['fp32_all']:.1f} "
      "GFLOP/s), and the real run's wall time on this machine, read from `<folder>.time` (written by the "
      "command that ran it); the study's own files give the image counts and the commit that ran it.")
    w("")
    w("| study | trainings | post-hoc | training | test evaluation | teacher logits (once per teacher) | "
      "post-hoc evaluation | total FLOPs | at 100% of the ceiling | measured wall time | % of the ceiling | "
      "commit |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in full:
        name = f"`--preset {r['preset']}" + (f" --arch {r['arch']}`" if r["preset"] != "paper-mnist" else "`")
        if "parts" not in r:
            w(f"| {name} | {r['trainings']} | {r['posthoc']} | not run here (no `{r['folder']}`) |"
              + " |" * 8)
            continue
        p = list(r["parts"].values())
        wall = "not recorded" if r["wall_s"] is None else f"**{_fmt_s(r['wall_s'])}**"
        pct = "" if r["wall_s"] is None else f"{100 * r['limit_s'] / r['wall_s']:.1f}%"
        w(f"| {name} | {r['trainings']} | {r['posthoc']} | " + " | ".join(f"{v:.3e}" for v in p)
          + f" | {r['total']:.3e} | {_fmt_s(r['limit_s'])} | {wall} | {pct} | {r['commit'][:7]} |")
    w("")
    w("A full run takes an hour or more of both cores, so this command does not repeat them: each row's wall "
      "time is from its commit, which may predate the code measured in sections 2 and 3. Compare the commit "
      "with the one at the top of this file.")
    w("")
    text = "\n".join(L)
    path.write_text(text)
    return text


# ---------------------------------------------------------------- main


def log_ceiling(what: str, c: dict) -> None:
    log(f"{what}: fp32 {c['fp32_all']:.1f} GFLOP/s ({c['threads']} threads), {c['fp32_1']:.1f} (1 thread); "
        f"bf16 {c['bf16_all']:.1f} ({c['threads']} threads)")


def main() -> None:
    ap = argparse.ArgumentParser(description="funclens against a hand-written pipeline; writes RESULTS.md")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test; writes RESULTS-quick.md")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder holding mnist/")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved end-to-end repeats of each side")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="funclens worker processes")
    ap.add_argument("--output", type=Path, default=None, help="where the Markdown goes")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one analysis measurement
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(analysis_child(json.loads(a.child))))
        return
    sys.path.insert(0, str(BENCH_DIR))  # baseline.py sits beside this file
    sz = QUICK if a.quick else Sizes()
    if a.repeats is not None:
        if a.repeats < 1:
            ap.error("--repeats must be >= 1")
        sz = dataclasses.replace(sz, repeats=a.repeats)
    output = a.output or BENCH_DIR / ("RESULTS-quick.md" if a.quick else "RESULTS.md")
    command = shlex.join([".venv/bin/python", "benchmarks/run.py", *sys.argv[1:]])

    load = {"start": os.getloadavg()[0]}
    info = machine_info()
    log(f"{info['nproc']} cores, {info['cpu']}, torch {info['torch']} ({info['torch_threads']} threads)")
    first = measure_ceiling(sz)
    log_ceiling("ceiling at the start", first)
    flops = lenet_flops()
    log(f"LeNet training FLOPs per image: {flops['train']:,} (forward {flops['forward']:,}; MACs {flops['macs']})")
    e2e = end_to_end(sz, a.data_dir, a.jobs)
    analysis = analysis_bench(sz)
    last = measure_ceiling(sz)
    log_ceiling("ceiling at the end", last)
    ceiling = combine_ceilings(first, last)
    full = full_estimate(ceiling)
    load["end"] = os.getloadavg()[0]
    text = write_results(output, info=info, command=command, quick=a.quick, load=load, ceiling=ceiling,
                         flops=flops, e2e=e2e, analysis=analysis, full=full)
    print(text)
    log(f"wrote {output}")


if __name__ == "__main__":
    main()
