"""The machine, its compute ceiling (``torch.matmul`` GFLOP/s) and LeNet's FLOPs per image.

The ceiling is what every throughput figure is a percentage of; the FLOP count turns images per second into
GFLOP/s, here and for the full studies.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CEILING_KEYS = ("fp32_all", "fp32_1", "bf16_all")


def _proc_field(path: str, prefix: str) -> str | None:
    """The text after ``prefix`` on the first line of ``path`` that starts with it (None without /proc)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line[len(prefix):].strip()
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """Date, cores, CPU, memory, library versions and the commit measured.

    Example:
        >>> info = machine_info()
        >>> info["nproc"] >= 1 and info["mem_bytes"] >= 0
        True
    """
    from funclens import __version__
    from funclens.store import GIT_COMMIT

    cpu = (_proc_field("/proc/cpuinfo", "model name") or ": unknown").lstrip(": ").strip()
    mem_kib = _proc_field("/proc/meminfo", "MemTotal:")
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "cpu": cpu,
            "mem_bytes": int(mem_kib.split()[0]) * 1024 if mem_kib else 0,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "numpy": np.__version__,
            "python": platform.python_version(), "funclens": __version__, "commit": GIT_COMMIT or "unknown"}


def matmul_gflops(threads: int, dtype: torch.dtype, n: int, tries: int) -> float:
    """Best-of-``tries`` GFLOP/s of an n x n matmul (2 n^3 FLOPs) with ``threads`` threads.

    Args:
        threads: torch threads during the measurement (restored after).
        dtype: the matrices' dtype.
        n: the matrices' side.
        tries: timed calls after one warm-up call; the fastest counts.

    Example:
        >>> matmul_gflops(1, torch.float32, 64, 2) > 0
        True
    """
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


def measure_ceiling(n: int, tries: int) -> dict[str, float]:
    """GFLOP/s of fp32 with all cores (torch's default threads) and with one, and of bf16 with all.

    Args:
        n: the matrices' side.
        tries: timed calls per figure.

    Example:
        >>> sorted(measure_ceiling(64, 1))
        ['bf16_all', 'fp32_1', 'fp32_all']
    """
    threads = torch.get_num_threads()
    return gflops_of({"fp32_all": (threads, torch.float32), "fp32_1": (1, torch.float32),
                      "bf16_all": (threads, torch.bfloat16)}, n, tries)


def gflops_of(kinds: dict[str, tuple[int, torch.dtype]], n: int, tries: int) -> dict[str, float]:
    """GFLOP/s of an n x n matmul for each ``name: (threads, dtype)`` of ``kinds``.

    Example:
        >>> list(gflops_of({"fp32_1": (1, torch.float32)}, 64, 1))
        ['fp32_1']
    """
    return {name: matmul_gflops(threads, dtype, n, tries) for name, (threads, dtype) in kinds.items()}


def combine_ceilings(first: dict[str, float], last: dict[str, float], *, threads: int, n: int,
                     tries: int) -> dict[str, Any]:
    """The ceiling used below: the best of the measurements at the start and at the end of the run.

    A ceiling is the most the machine showed it can do, so the better of two measurements counts; other work
    on the machine only ever lowers a measurement. All cores can never be slower than one in principle: if
    they measured so (threads waiting on each other while other processes hold the cores), the one-thread
    figure is used for them too, and ``disturbed`` says so.

    Args:
        first, last: :func:`measure_ceiling` at the start and at the end of the run.
        threads: how many threads "all" was (torch's default).
        n, tries: the matmul's side and timed calls, recorded beside the figures.

    Example:
        >>> c = combine_ceilings({"fp32_all": 90.0, "fp32_1": 50.0, "bf16_all": 200.0},
        ...                      {"fp32_all": 95.0, "fp32_1": 45.0, "bf16_all": 190.0}, threads=2, n=64, tries=1)
        >>> c["used"], c["disturbed"]
        ({'fp32_all': 95.0, 'fp32_1': 50.0, 'bf16_all': 200.0}, False)
    """
    best = {k: max(first[k], last[k]) for k in CEILING_KEYS}
    disturbed = best["fp32_all"] < best["fp32_1"]
    if disturbed:
        best["fp32_all"] = best["fp32_1"]
    return {"threads": threads, "n": n, "tries": tries, "start": first, "end": last, "used": best,
            "disturbed": disturbed}


def lenet_flops(in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> dict[str, Any]:
    """LeNet's multiply-accumulates per image, layer by layer, counted from the layer shapes.

    A forward pass on one image records each layer's output shape; the count is then analytic: a Conv2d does
    ``in_channels / groups * kh * kw`` MACs per output element, a Linear ``in_features`` per output. Biases,
    ReLU and pooling (under 1% of the work) are left out. FLOPs = 2 x MACs; training = 3 x forward
    (forward, gradient w.r.t. activations, gradient w.r.t. weights: the usual rule).

    Args:
        in_shape: one image's (C, H, W).
        num_classes: outputs of the last layer.

    Example:
        >>> lenet_flops()["train"]
        15786240
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
    return {"in_shape": list(in_shape), "macs": macs, "forward": fwd, "train": 3 * fwd}
