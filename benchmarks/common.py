"""What every benchmark module shares: where things are, the sizes of a run, the targets, a log line.

Kept free of torch and funclens imports, so ``render.py`` (which needs only this and the JSON) starts fast.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
MIB = 1 << 20
GIB = 1 << 30

# The targets the measurements are held to; run.py decides from these whether each is met and records both
# in RESULTS.json's "targets", and render.py only words them.
TARGET_TRAIN_PCT = 50.0  # LeNet training, % of the measured fp32 ceiling, averaged over a study
TARGET_SPEEDUP = 2.5  # reduced paper-mnist end to end, baseline time / funclens time
TARGET_ANALYSIS_S = 20.0  # 300 x 10,000 x 100: all pairwise distances + landscape, seconds
TARGET_ANALYSIS_GIB = 4.0  # peak memory of that step, GiB
TARGET_BF16_SPEEDUP = 1.5  # LeNet training images/s, bf16 autocast / fp32, one thread, same run
# the full LeNet MNIST study (the paper-mnist grid, fullstudy.FULL_STUDIES) on 2 cores, wall seconds, by precision
TARGET_FULL_MNIST_S = {"fp32": 45 * 60.0, "bf16": 30 * 60.0}


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
    bf16_train: int = 6000  # training images per timed epoch of bf16.py
    bf16_repeats: int = 4  # its interleaved (fp32, bf16) pairs


QUICK = Sizes(matmul_n=512, matmul_tries=2, train_subset=256, test_subset=128, epochs=1, seeds=(0, 1),
              student_seeds=(2,), prune=(0.5, 0.9), repeats=1, analysis_m=24, analysis_n=500, analysis_c=100,
              baseline_m=6, bf16_train=512, bf16_repeats=2)


def log(msg: str) -> None:
    """One progress line on stdout, with the time of day.

    Args:
        msg: what happened.

    Example:
        >>> log("ceiling measured")  # doctest: +ELLIPSIS
        [bench ...] ceiling measured
    """
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median(xs: list[float]) -> float:
    """The median of a non-empty list (the middle of the interleaved repeats).

    Args:
        xs: the values, one per repeat.

    Example:
        >>> median([3.0, 1.0, 2.0])
        2.0
    """
    return float(statistics.median(xs))
