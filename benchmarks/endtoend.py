"""The reduced paper-mnist study end to end, by funclens and by ``baseline.py``, interleaved; throughput.

Both sides do the same work by construction: the baseline's config is read off the funclens StudyCfg. Each
repeat runs the baseline, then funclens, in this one process, so whatever else the machine is doing is shared
out between them.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import Sizes, log, median


def reduced_study(sz: Sizes):
    """The reduced paper-mnist study: the paper's grid under SGD with momentum (the recipe baseline.py implements)
    on an MNIST subset, one alpha, no control student.

    Args:
        sz: the run's sizes (subsets, epochs, seeds, pruning amounts).

    Example:
        >>> from common import QUICK
        >>> reduced_study(QUICK).data.train_subset
        256
    """
    from funclens.config import DataCfg, DistillGrid, ModelCfg, StudyCfg, TrainCfg

    return StudyCfg(name="bench-mnist", data=DataCfg("mnist", train_subset=sz.train_subset,
                                                     test_subset=sz.test_subset),
                    model=ModelCfg("lenet"), train=TrainCfg(epochs=sz.epochs), seeds=sz.seeds,
                    distill=DistillGrid(alphas=(0.5,), seeds=sz.student_seeds, control=False),
                    quantize=("16-bit", "8-bit"), prune=sz.prune)


def baseline_cfg(study, data_dir: Path):
    """The baseline's config, read off the same StudyCfg so both sides do the same work by construction."""
    import baseline as bl
    from funclens.rfd import N_BOOT

    t = study.train
    assert t.optimizer == "sgd" and not study.distill.control and not study.prune_global
    assert study.distill.init == "base-init" and study.data.dataset == "mnist" and study.model.arch == "lenet"
    return bl.BaselineCfg(data_dir=data_dir, train_subset=study.data.train_subset,
                          test_subset=study.data.test_subset, epochs=t.epochs, seeds=study.seeds,
                          alphas=study.distill.alphas, student_seeds=study.distill.seeds,
                          temperature=study.distill.temperature, quantize=study.quantize, prune=study.prune,
                          batch_size=t.batch_size, lr=t.lr, momentum=t.momentum, n_boot=N_BOOT)


def study_work(study) -> dict[str, Any]:
    """What the reduced study does, as data for RESULTS.json (render.py words it)."""
    from funclens.plan import plan

    planned = plan(study)
    trainings = sum(p.spec.kind == "train" for p in planned)
    t, d = study.train, study.distill
    return {"dataset": study.data.dataset, "train_subset": study.data.train_subset,
            "test_subset": study.data.test_subset, "arch": study.model.arch, "epochs": t.epochs,
            "optimizer": t.optimizer, "lr": t.lr, "momentum": t.momentum, "batch_size": t.batch_size,
            "seeds": list(study.seeds), "alphas": list(d.alphas), "student_seeds": list(d.seeds),
            "temperature": d.temperature, "init": d.init, "control": d.control, "quantize": list(study.quantize),
            "prune": list(study.prune), "trainings": trainings, "posthoc": len(planned) - trainings}


def _funclens_epochs(study, out: Path) -> tuple[list[dict], list[float]]:
    """Every training epoch's reconstructed start and end (wall clock), and every run's DONE mtime.

    Epoch start and end times are not recorded by funclens, so they are reconstructed: an epoch ends when its
    prediction file is written (its mtime) and starts ``train_seconds`` (from metrics.json) before that; the
    test-set evaluation between the training loop and the file (a few % of an epoch) shifts that start a
    little late, which makes the measured phase slightly short for the first epoch only.
    """
    from funclens import paths
    from funclens.store import Store

    store = Store(out)
    epochs: list[dict] = []
    done_mtimes = []
    # The runs as the study recorded them: their ids carry the content hash of the data they read.
    for rid in (r["run"] for r in store.read_study()["runs"]):
        rdir = paths.run_dir(out, rid)
        done_mtimes.append(os.path.getmtime(paths.done_file(rdir)))
        if store.load_spec(rid).kind != "train":
            continue
        m = store.load_metrics(rid)
        for h in m["history"]:
            end = os.path.getmtime(paths.preds_file(rdir, h["epoch"]))
            epochs.append({"run": rid, "epoch": h["epoch"], "images": int(m["train_images"]),
                           "train_seconds": h["train_seconds"], "images_per_second": h["images_per_second"],
                           "end": end, "start": end - h["train_seconds"]})
    return epochs, done_mtimes


def funclens_once(study, data_dir: Path, jobs: int) -> dict[str, Any]:
    """One funclens study through its real code path into a fresh folder; times read back from the store."""
    from funclens import execute, paths
    from funclens.execute import RunContext
    from funclens.study import run_study

    # Each repeat reads its files, as the baseline does: forget the data set a previous repeat left loaded.
    execute._DATA_CACHE.clear()
    threads = torch.get_num_threads()  # the in-process backend (jobs=1) leaves this process on one thread; restored below
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
        epochs, done_mtimes = _funclens_epochs(study, out)
        summary = json.loads(paths.summary_file(out).read_text())
    last_done = max(done_mtimes)
    return {"total": total, "before_analysis": last_done - wall0, "analysis": wall1 - last_done,
            "train_phase": max(e["end"] for e in epochs) - min(e["start"] for e in epochs),
            "train_loop": sum(e["train_seconds"] for e in epochs), "images": sum(e["images"] for e in epochs),
            "base_accuracy": summary["base"]["accuracy"], "epochs": epochs}


def baseline_once(cfg) -> dict[str, Any]:
    """One run of ``baseline.run_pipeline`` into a fresh folder, its timings as a dict."""
    import baseline as bl

    with tempfile.TemporaryDirectory(prefix="baseline-bench-") as tmp:
        tm = bl.run_pipeline(cfg, Path(tmp))
    return {"total": tm.total, "before_analysis": tm.total - tm.analysis, "analysis": tm.analysis,
            "train_phase": tm.train_phase, "train_loop": tm.train_loop, "images": tm.images_trained,
            "base_accuracy": tm.base_accuracy, "read": tm.read, "compress": tm.compress}


def end_to_end(sz: Sizes, data_dir: Path, jobs: int) -> dict[str, Any]:
    """Both sides ``sz.repeats`` times, interleaved; the runs, their medians and the speedup.

    Args:
        sz: the run's sizes.
        data_dir: the folder holding ``mnist/``.
        jobs: funclens's worker processes.
    """
    study = reduced_study(sz)
    cfg = baseline_cfg(study, data_dir)
    runs: dict[str, list[dict]] = {"baseline": [], "funclens": []}
    baseline_threads = torch.get_num_threads()
    for r in range(sz.repeats):
        log(f"end to end {r + 1}/{sz.repeats}: baseline (torch threads {baseline_threads})")
        runs["baseline"].append(baseline_once(cfg))
        log(f"  baseline {runs['baseline'][-1]['total']:.1f} s; funclens (jobs {jobs})")
        runs["funclens"].append(funclens_once(study, data_dir, jobs))
        log(f"  funclens {runs['funclens'][-1]['total']:.1f} s")
    return {"work": study_work(study), "jobs": jobs, "baseline_threads": baseline_threads, "runs": runs,
            **speedup(runs)}


def speedup(runs: dict[str, list[dict]]) -> dict[str, Any]:
    """Median end-to-end times, their ratio, and the ratio of each interleaved pair.

    Args:
        runs: ``{"baseline": [...], "funclens": [...]}``, each run with ``total`` (and the baseline's
            ``compress``) in seconds.

    Example:
        >>> speedup({"baseline": [{"total": 60.0, "compress": 3.0}], "funclens": [{"total": 20.0}]})["speedup"]
        3.0
    """
    bl, fl = runs["baseline"], runs["funclens"]
    t_b, t_f = median([r["total"] for r in bl]), median([r["total"] for r in fl])
    return {"medians": {"baseline": t_b, "funclens": t_f,
                        "baseline_compress": median([r["compress"] for r in bl])},
            "speedup": t_b / t_f, "pair_speedups": [b["total"] / f["total"] for b, f in zip(bl, fl)]}


def throughput(runs: dict[str, list[dict]], train_flops: int, ceiling: dict[str, float]) -> dict[str, Any]:
    """Training throughput of both sides, medians over repeats, against the ceiling.

    *aggregate* = images / the training phase's wall time; *loop* = images / the summed training-loop
    seconds. funclens's loop runs one thread per worker, so it is set against the one-thread ceiling.

    Args:
        runs: as :func:`speedup`'s, each run with ``images``, ``train_phase`` and ``train_loop`` (seconds).
        train_flops: FLOPs to train on one image.
        ceiling: the ceiling used, GFLOP/s by key (``fp32_all``, ``fp32_1``).

    Example:
        >>> r = {"images": 1000, "train_phase": 1.0, "train_loop": 2.0}
        >>> t = throughput({"baseline": [r], "funclens": [r]}, 10**6, {"fp32_all": 2.0, "fp32_1": 1.0})
        >>> t["funclens_aggregate"]["pct"], t["funclens_loop"]["pct"], t["funclens_concurrency"]
        (50.0, 50.0, 2.0)
    """
    def figure(side: str, span: str, key: str) -> dict[str, Any]:
        ips = median([r["images"] / r[span] for r in runs[side]])
        gflops = ips * train_flops / 1e9
        return {"images_per_s": ips, "gflops": gflops, "ceiling": key, "pct": 100 * gflops / ceiling[key]}

    return {"funclens_aggregate": figure("funclens", "train_phase", "fp32_all"),
            "funclens_loop": figure("funclens", "train_loop", "fp32_1"),
            "baseline_aggregate": figure("baseline", "train_phase", "fp32_all"),
            "baseline_loop": figure("baseline", "train_loop", "fp32_all"),
            "funclens_concurrency": median([r["train_loop"] / r["train_phase"] for r in runs["funclens"]])}
