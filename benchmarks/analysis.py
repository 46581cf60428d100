"""The analysis of a synthetic CIFAR-100-sized study: funclens beside the baseline's plain way.

Each measurement runs in a child process of its own (``python benchmarks/analysis.py --child SPEC``), so its
peak memory is its own: the data are generated there first, then the peak RSS (VmHWM) is reset, then the
step runs. The baseline's Python loop over pairs is measured on a subset of checkpoints and scaled by the pair
count; its t-SNE is measured on all of them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a child: common.py and baseline.py beside it
from common import BENCH_DIR, REPO, Sizes, log  # noqa: E402


def synthetic_preds(indices: list[int], m_total: int, n: int, c: int, seed: int = 0) -> np.ndarray:
    """Softmax outputs ``[len(indices), n, c]`` float16 of checkpoints from a synthetic study of ``m_total``.

    The study is trajectories of ``E`` epochs (25 as in the paper, fewer for tiny studies). Every model shares
    a task signal (the true class stands out, plus input-level difficulty common to all models) that sharpens
    as training goes on; each trajectory adds its own fixed logits (its "seed"), each checkpoint a little
    noise that shrinks with training. So checkpoints of one trajectory are close and trajectories differ, as
    in a real study. Checkpoint ``i`` depends only on (seed, i), so any subset can be generated on its own.

    Args:
        indices: which checkpoints of the study to generate.
        m_total: the study's checkpoints in all.
        n: test inputs.
        c: classes.
        seed: the study's seed.

    Example:
        >>> p = synthetic_preds([0, 5], 8, 50, 10)
        >>> p.shape, p.dtype, bool(abs(p[0].astype("float32").sum(axis=1) - 1).max() < 1e-2)
        ((2, 50, 10), dtype('float16'), True)
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


def synthetic_labels(n: int, c: int, seed: int = 0) -> np.ndarray:
    """The true classes ``[n]`` that :func:`synthetic_preds` builds its task signal on (its first draw).

    Example:
        >>> p = synthetic_preds([7], 8, 400, 10)[0]
        >>> bool((p.argmax(axis=1) == synthetic_labels(400, 10)).mean() > 0.5)
        True
    """
    return np.random.default_rng([seed, 0]).integers(0, c, n)


def diagnose_finals(preds: np.ndarray, m_total: int, labels: np.ndarray, independents: int = 2) -> list[dict]:
    """A study's per-row diagnostics on the synthetic checkpoints: the last checkpoint of every trajectory is a
    row against the first trajectory's (the base), the next ``independents`` trajectories are the yardstick.

    Args:
        preds: ``[m_total, N, C]``, every checkpoint of the study.
        m_total: the study's checkpoints in all.
        labels: ``[N]``, from :func:`synthetic_labels`.
        independents: trajectories after the base that the class test compares with.

    Example:
        >>> rows = diagnose_finals(synthetic_preds(list(range(8)), 8, 50, 10), 8, synthetic_labels(50, 10))
        >>> len(rows), sorted(rows[0])[:3]
        (3, ['classes_hurt', 'ece', 'flips_by_margin'])
    """
    from funclens.summary import diagnose

    epochs = max(2, min(25, m_total // 4))   # as synthetic_preds lays the trajectories out
    finals = [preds[i] for i in range(epochs - 1, m_total, epochs)]
    base, indeps = finals[0], finals[1:1 + independents]
    return [diagnose(base, [m], labels, [i for i in indeps if i is not m]) for m in finals[1:]]


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


def _timed(steps: list[tuple[str, Any]]) -> dict[str, float]:
    """Seconds of each ``(name, thunk)`` in turn, and their ``total``."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    for name, thunk in steps:
        t1 = time.perf_counter()
        thunk()
        times[name] = time.perf_counter() - t1
    times["total"] = time.perf_counter() - t0
    return times


def _funclens_steps(preds: np.ndarray, spec: dict) -> tuple[list, list]:
    """The measured steps on the [M, N, C] float16 array, and those run after the peak is read."""
    from funclens.landscape import embed
    from funclens.pairwise import pairwise

    steps = [("disagreement", lambda: pairwise(preds, "disagreement")),
             ("hellinger", lambda: pairwise(preds, "hellinger")), ("embed", lambda: embed(preds))]
    if spec.get("diagnostics"):   # every row's flips, tails, calibration and classes, as a summary has them
        labels = synthetic_labels(spec["n"], spec["c"])
        steps.append(("diagnostics", lambda: diagnose_finals(preds, spec["m_total"], labels)))
    # the baseline's metric, for a like-for-like line; outside the step and its peak
    after = [("js", lambda: pairwise(preds, "js"))] if spec.get("js") else []
    return steps, after


def _baseline_steps(inputs: list[np.ndarray], spec: dict) -> list:
    import baseline as bl

    parts = {"pair_loop": lambda: bl.pairwise_loop(inputs), "tsne": lambda: bl.tsne_raw(inputs)}
    return [(name, fn) for name, fn in parts.items() if name in spec["parts"]]


def analysis_child(spec: dict) -> dict[str, Any]:
    """Run one analysis measurement in this (child) process; the parent reads the JSON it prints."""
    import resource

    import sklearn.manifold  # noqa: F401  (imported before timing: the step measured is the computation)

    idx = list(range(0, spec["m_total"], spec["stride"]))
    preds = synthetic_preds(idx, spec["m_total"], spec["n"], spec["c"])
    after: list = []
    if spec["impl"] == "funclens":
        inputs: Any = preds
        steps, after = _funclens_steps(preds, spec)
        input_bytes = int(preds.nbytes)
    else:
        # The baseline stores float32 softmax files and loads them as a list: that list is its input.
        inputs = [p.astype(np.float32) for p in preds]
        del preds
        steps = _baseline_steps(inputs, spec)
        input_bytes = sum(a.nbytes for a in inputs)
    rss_before = _status_bytes("VmRSS")
    peak_reset = _reset_peak()
    times = _timed(steps)
    peak = _status_bytes("VmHWM")
    times.update({k: v for k, v in _timed(after).items() if k != "total"})
    if peak is None:  # no /proc: the process's lifetime peak (KiB on Linux)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"impl": spec["impl"], "m": len(idx), "n": spec["n"], "c": spec["c"], "times": times,
            "input_bytes": input_bytes, "rss_before": rss_before, "peak": peak, "peak_is_step_only": peak_reset}


def run_child(spec: dict) -> dict[str, Any]:
    """:func:`analysis_child` in a fresh Python process; its result."""
    proc = subprocess.run([sys.executable, str(BENCH_DIR / "analysis.py"), "--child", json.dumps(spec)],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"analysis child {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def analysis_bench(sz: Sizes) -> dict[str, Any]:
    """funclens on all checkpoints and on a subset; the baseline's loop and t-SNE on the subset, t-SNE on all.

    Args:
        sz: the run's sizes (``analysis_m`` x ``analysis_n`` x ``analysis_c``, ``baseline_m``).
    """
    base = {"m_total": sz.analysis_m, "n": sz.analysis_n, "c": sz.analysis_c}
    stride = max(1, sz.analysis_m // sz.baseline_m)
    log(f"analysis: funclens on {sz.analysis_m} x {sz.analysis_n} x {sz.analysis_c}")
    full = run_child({**base, "impl": "funclens", "stride": 1, "diagnostics": True})
    log(f"  {full['times']['total']:.1f} s; funclens on every {stride}th checkpoint")
    small = run_child({**base, "impl": "funclens", "stride": stride, "js": True})
    log(f"  {small['times']['total']:.1f} s; baseline (pair loop, t-SNE) on every {stride}th checkpoint")
    plain = run_child({**base, "impl": "baseline", "stride": stride, "parts": ["pair_loop", "tsne"]})
    log(f"  {plain['times']['total']:.1f} s; baseline t-SNE on all {sz.analysis_m}")
    plain_tsne = run_child({**base, "impl": "baseline", "stride": 1, "parts": ["tsne"]})
    log(f"  {plain_tsne['times']['total']:.1f} s")
    return {"full": full, "small": small, "plain": plain, "plain_tsne": plain_tsne, "stride": stride,
            **baseline_estimate(full, small, plain, plain_tsne)}


def baseline_estimate(full: dict, small: dict, plain: dict, plain_tsne: dict) -> dict[str, float]:
    """The baseline's time on all checkpoints: its pair loop scaled by pair count, plus its measured t-SNE.

    Every pair costs the same in the loop, so its time scales exactly with the pair count. t-SNE does not
    (a fixed 1000 iterations dominate at small M), so it is measured on all M instead.

    Example:
        >>> e = baseline_estimate({"m": 4, "times": {"total": 1.0}}, {"times": {"total": 0.5}},
        ...                       {"m": 2, "times": {"pair_loop": 1.0, "total": 2.0}}, {"times": {"tsne": 3.0}})
        >>> e["pair_scale"], e["plain_time_est"], e["speedup_est"], e["speedup_small"]
        (6.0, 9.0, 9.0, 4.0)
    """
    m, k = full["m"], plain["m"]
    scale = (m * (m - 1)) / (k * (k - 1))
    loop_est = plain["times"]["pair_loop"] * scale
    total_est = loop_est + plain_tsne["times"]["tsne"]
    return {"pair_scale": scale, "plain_loop_est": loop_est, "plain_time_est": total_est,
            "speedup_est": total_est / full["times"]["total"],
            "speedup_small": plain["times"]["total"] / small["times"]["total"]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="one analysis measurement, printed as JSON (run by run.py)")
    ap.add_argument("--child", required=True, help="the measurement's spec, JSON")
    print(json.dumps(analysis_child(json.loads(ap.parse_args().child))))
