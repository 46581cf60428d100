"""A study at the machine's limit, measured against the pipeline researchers write by hand.

One process measures, in this order, so every comparison shares the same run on the same (possibly noisy)
machine: the compute ceiling (``ceiling.py``); LeNet training in fp32 and in bf16, interleaved, one thread
(``bf16.py``); the reduced paper-mnist study end to end, funclens and ``baseline.py`` interleaved
(``endtoend.py``); training throughput against the ceiling; the analysis of a synthetic CIFAR-100-sized study
in child processes (``analysis.py``); the ceiling again; the full studies' FLOPs beside their measured wall
times (``fullstudy.py``). Every value goes to ``RESULTS.json`` with the command, the commit, the machine, the
load and the targets; ``render.py`` then writes ``RESULTS.md`` from that JSON alone (``--quick``: tiny sizes,
``RESULTS-quick.json`` and ``.md``).

Usage:
    make bench                                   # = .venv/bin/python benchmarks/run.py
    .venv/bin/python benchmarks/run.py --quick   # smoke test, about a minute
"""

# Imports at the top are kept light on purpose: torchvision, PIL and scikit-learn (the baseline's) are
# imported where they are used, so funclens's worker processes do not pay for them.
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules beside this file
from common import (BENCH_DIR, DEFAULT_DATA_DIR, GIB, QUICK, TARGET_ANALYSIS_GIB,  # noqa: E402
                    TARGET_ANALYSIS_S, TARGET_BF16_SPEEDUP, TARGET_FULL_MNIST_S, TARGET_SPEEDUP, TARGET_TRAIN_PCT,
                    Sizes, log)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its threshold, the measured value and whether it is met (None: nothing to meet).

    Args:
        results: RESULTS.json's content so far (throughput, end_to_end, analysis, full_studies, bf16).
    """
    full = results["analysis"]["full"]
    rows = [("train_pct_of_ceiling", TARGET_TRAIN_PCT, results["throughput"]["funclens_aggregate"]["pct"], ">="),
            ("speedup", TARGET_SPEEDUP, results["end_to_end"]["speedup"], ">="),
            ("analysis_seconds", TARGET_ANALYSIS_S, full["times"]["total"], "<"),
            ("analysis_peak_gib", TARGET_ANALYSIS_GIB, full["peak"] / GIB, "<")]
    if "bf16" in results:  # results written before bf16.py existed lack it
        rows.append(("bf16_speedup", TARGET_BF16_SPEEDUP, results["bf16"]["ratio"], ">="))
    out = [{"key": k, "threshold": t, "value": v, "met": v >= t if op == ">=" else v < t}
           for k, t, v, op in rows]
    return out + _full_study_targets(results["full_studies"])


def _full_study_targets(studies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The full LeNet MNIST study's wall time against its target, one per precision; not met is unknown (None)
    where no run was measured. Results written before the bf16 study was timed hold one fp32 row and no
    threshold: they keep their single untargeted row."""
    if not any("precision" in s for s in studies):
        pm = studies[0]
        return [{"key": "full_study_wall_s", "threshold": None, "met": None,
                 "value": pm["measured"]["wall_s"] if "measured" in pm else None}]
    out = []
    for s in studies:
        if s["preset"] == "paper-mnist" and s["precision"] in TARGET_FULL_MNIST_S:
            th, wall = TARGET_FULL_MNIST_S[s["precision"]], s["measured"]["wall_s"] if "measured" in s else None
            out.append({"key": f"full_mnist_{s['precision']}_s", "threshold": th, "value": wall,
                        "met": None if wall is None else wall < th})
    return out


def measure(sz: Sizes, data_dir: Path, jobs: int) -> dict[str, Any]:
    """Every measurement of one run, as RESULTS.json holds it (less the command and the quick flag)."""
    import torch

    from analysis import analysis_bench
    from bf16 import bf16_bench
    from ceiling import combine_ceilings, lenet_flops, machine_info, measure_ceiling
    from endtoend import end_to_end, throughput
    from fullstudy import full_studies

    load = {"start": os.getloadavg()[0]}
    info = machine_info()
    log(f"{info['nproc']} cores, {info['cpu']}, torch {info['torch']} ({info['torch_threads']} threads)")
    first = measure_ceiling(sz.matmul_n, sz.matmul_tries)
    log(f"ceiling at the start (GFLOP/s): {first}")
    flops = lenet_flops()
    log(f"LeNet training FLOPs per image: {flops['train']:,}")
    bf16 = bf16_bench(sz.bf16_train, sz.bf16_repeats, sz.matmul_n, sz.matmul_tries)
    log(f"bf16 / fp32 LeNet training throughput: {bf16['ratio']:.2f}x")
    e2e = end_to_end(sz, data_dir, jobs)
    analysis = analysis_bench(sz)
    last = measure_ceiling(sz.matmul_n, sz.matmul_tries)
    log(f"ceiling at the end (GFLOP/s): {last}")
    ceiling = combine_ceilings(first, last, threads=torch.get_num_threads(), n=sz.matmul_n, tries=sz.matmul_tries)
    full = full_studies(ceiling["used"], info["date"])
    load["end"] = os.getloadavg()[0]
    return {"machine": info, "load": load, "sizes": dataclasses.asdict(sz), "ceiling": ceiling, "flops": flops,
            "end_to_end": e2e, "throughput": throughput(e2e["runs"], flops["train"], ceiling["used"]),
            "analysis": analysis, "full_studies": full, "bf16": bf16}


def main() -> None:
    ap = argparse.ArgumentParser(description="funclens against a hand-written pipeline; writes RESULTS.json "
                                             "and the RESULTS.md rendered from it")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test; RESULTS-quick.*")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder holding mnist/")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved end-to-end repeats of each side")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="funclens worker processes")
    ap.add_argument("--output", type=Path, default=None,
                    help="where the Markdown goes; the JSON goes beside it, with the suffix .json")
    a = ap.parse_args()
    sz = QUICK if a.quick else Sizes()
    if a.repeats is not None:
        if a.repeats < 1:
            ap.error("--repeats must be >= 1")
        sz = dataclasses.replace(sz, repeats=a.repeats)
    output = a.output or BENCH_DIR / ("RESULTS-quick.md" if a.quick else "RESULTS.md")
    from funclens.errors import FunclensError

    try:
        measured = measure(sz, a.data_dir, a.jobs)
    except FunclensError as e:  # missing data, say: the user's to fix, so one line and exit 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    results: dict[str, Any] = {"format": 1, "quick": a.quick,
                               "command": shlex.join([".venv/bin/python", "benchmarks/run.py", *sys.argv[1:]]),
                               **measured}
    results["targets"] = targets(results)
    json_path = output.with_suffix(".json")
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {json_path}")

    from render import render_file

    print(render_file(json_path, output))
    log(f"wrote {output}")


if __name__ == "__main__":
    main()
