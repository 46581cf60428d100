"""LeNet training throughput in fp32 and in bf16 (CPU autocast), measured in one run, interleaved, one thread.

Both precisions run funclens's own training loop (``funclens.train.train``, as every study does) on the same
MNIST-shaped data: seeded random uint8 images, 1x28x28, 10 classes (the loop's cost does not depend on what
the pixels show). Each repeat times one epoch of each precision, fp32 first in every other repeat, so
whatever else the machine does is shared out between them; the figure of each epoch is the training loop's
own ``train_seconds`` (the test evaluation after it is not counted). The 1-thread matmul ceilings of both
dtypes are measured at the start and at the end, so the ratio stands beside what the hardware offers.

Usage:
    .venv/bin/python benchmarks/bf16.py --train 2048 --repeats 2     # alone; benchmarks/run.py runs it too
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, median  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def mnist_shaped(n_train: int, n_test: int = 64, seed: int = 0):
    """A funclens Dataset of seeded random uint8 images shaped like MNIST (1x28x28, 10 classes).

    Args:
        n_train: training images (the timed epoch's work).
        n_test: test images (evaluated after each epoch, not timed).
        seed: seeds the images and labels.

    Example:
        >>> ds = mnist_shaped(8)
        >>> ds.in_shape, ds.num_classes, len(ds.train_x)
        ((1, 28, 28), 10, 8)
    """
    from funclens.data import Dataset

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n_train + n_test, 1, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    return Dataset("mnist-shaped", x[:n_train], y[:n_train], x[n_train:], y[n_train:], 10, (0.5,), (0.29,))


def epoch_images_per_s(data, precision: str) -> float:
    """Images per second of one LeNet training epoch on ``data`` (the loop alone), in ``precision``.

    Args:
        data: the data set, from :func:`mnist_shaped`.
        precision: ``fp32`` or ``bf16``.

    Example:
        >>> epoch_images_per_s(mnist_shaped(64), "bf16") > 0
        True
    """
    from funclens.config import DataCfg, ModelCfg, RunSpec, TrainCfg
    from funclens.train import train

    spec = RunSpec("train", DataCfg("mnist"), ModelCfg("lenet"), TrainCfg(epochs=1, precision=precision))
    _, history = train(spec, data)
    return float(history[0]["images_per_second"])


# the one-thread ceilings beside which bf16 training is set: fp32 and bf16 matmul on one thread
ONE_THREAD = {"fp32_1": (1, torch.float32), "bf16_1": (1, torch.bfloat16)}


def bf16_bench(n_train: int, repeats: int, matmul_n: int, matmul_tries: int) -> dict[str, Any]:
    """fp32 and bf16 LeNet training throughput, interleaved, one thread; their ratio beside the ceilings'.

    Args:
        n_train: training images per timed epoch.
        repeats: timed (fp32, bf16) pairs, after one untimed warm-up epoch of each.
        matmul_n, matmul_tries: the ceilings' matmul side and timed calls.

    Returns:
        RESULTS.json's ``bf16``: per precision, images/s of every repeat, their median and best, GFLOP/s and
        % of the 1-thread ceiling of the same dtype (from the median); the ratio of the medians, of the
        bests and of every pair; and the ceilings.

    Example:
        >>> r = bf16_bench(64, 1, 64, 1)  # doctest: +ELLIPSIS
        [bench ...] bf16 repeat 1/1: fp32 ... images/s
        >>> r["ratio"] == r["bf16"]["images_per_s"] / r["fp32"]["images_per_s"]
        True
    """
    from ceiling import gflops_of, lenet_flops

    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # as every study's worker: one thread per run
    try:
        first = gflops_of(ONE_THREAD, matmul_n, matmul_tries)
        data = mnist_shaped(n_train)
        for p in PRECISIONS:  # warm-up: the first epoch of each picks kernels and touches the memory
            epoch_images_per_s(mnist_shaped(min(n_train, 256)), p)
        runs: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for i in range(repeats):
            # fp32 first in even repeats, bf16 first in odd ones: neither always runs on a warmer cache
            for p in PRECISIONS if i % 2 == 0 else PRECISIONS[::-1]:
                runs[p].append(epoch_images_per_s(data, p))
            log(f"bf16 repeat {i + 1}/{repeats}: fp32 {runs['fp32'][-1]:,.0f}, bf16 {runs['bf16'][-1]:,.0f} "
                "images/s")
        last = gflops_of(ONE_THREAD, matmul_n, matmul_tries)
    finally:
        torch.set_num_threads(prev)
    ceilings = {k: max(first[k], last[k]) for k in first}  # other work only ever lowers a measurement
    flops = lenet_flops()["train"]
    out: dict[str, Any] = {"train_images": n_train, "repeats": repeats, "threads": 1, "train_flops": flops,
                           "ceiling": {"n": matmul_n, "tries": matmul_tries, "start": first, "end": last,
                                       "used": ceilings, "ratio": ceilings["bf16_1"] / ceilings["fp32_1"]}}
    for p in PRECISIONS:
        ips = median(runs[p])
        gflops = ips * flops / 1e9
        out[p] = {"runs": runs[p], "images_per_s": ips, "best": max(runs[p]), "gflops": gflops,
                  "pct": 100 * gflops / ceilings[f"{p}_1"]}
    out["ratio"] = out["bf16"]["images_per_s"] / out["fp32"]["images_per_s"]
    # the fastest epoch of each is the least disturbed by other work on the machine
    out["best_ratio"] = out["bf16"]["best"] / out["fp32"]["best"]
    out["pair_ratios"] = [b / f for f, b in zip(runs["fp32"], runs["bf16"])]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="LeNet training images/s in fp32 and bf16, interleaved, one thread")
    ap.add_argument("--train", type=int, default=6000, help="training images per timed epoch")
    ap.add_argument("--repeats", type=int, default=3, help="timed (fp32, bf16) pairs")
    ap.add_argument("--matmul-n", type=int, default=2048, help="side of the ceilings' matmul")
    a = ap.parse_args()
    if a.train < 1 or a.repeats < 1 or a.matmul_n < 1:
        ap.error("--train, --repeats and --matmul-n must be >= 1")
    r = bf16_bench(a.train, a.repeats, a.matmul_n, 3)
    print(json.dumps(r, indent=1))
    log(f"bf16 / fp32 training throughput: {r['ratio']:.2f}x (matmul ceilings, 1 thread: "
        f"{r['ceiling']['ratio']:.2f}x)")


if __name__ == "__main__":
    main()
