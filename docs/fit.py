"""Fit search: which training recipe and pruning scope bring LeNet's post-hoc cells closest to the paper's.

The paper (seed/functional-perspective-paper.md) names neither its optimizer, its learning rate nor what
"pruning 10%...90% of the original network" means exactly. This script tries candidates, cheap first: for each
data set, recipe and input normalisation it trains one base (seed 0, as a study trains its base: the same
``funclens.train.train``), then applies every post-hoc setting of the paper's grid with the same
``funclens.compress.compress`` a study calls (16-bit, 8-bit; L1 pruning of 10-90% under each pruning scope:
per layer or one global threshold, each with and without the last layer; biases are never pruned), and
scores each candidate (recipe x normalisation x scope) against every post-hoc cell of the paper's LeNet rows
of Tables 1 (MNIST) and 2 (CIFAR-10). The students' cells (alpha = 0.1, 0.5, 0.9) need three distilled
models per alpha and are left to the best few candidates: they are in PAPER_STUDENTS, not in the score.

Score: the number of cells whose accuracy deviation (relative, in %, as in the paper) lies within
``--tolerance`` percentage points of the paper's (default 2), and the mean absolute difference over the cells
(in points). Candidates are ranked by the first (more is better), then the second (less is better).

Usage (from the repository root; the full search, about an hour of both cores):
    PYTHONPATH=src .venv/bin/python docs/fit.py --data-dir ../shared/data --jobs 2 \\
        --measured docs/fit-measured.json --out docs/fit-results.md

With ``--measured FILE`` every base's measurements are kept in a JSON file as each base finishes, and a later
search reuses those whose data set, recipe values, normalisation, epochs, subsets and torch version match: an
interrupted search resumes, and the two data sets can be searched in separate runs and scored together.

On a subset, in seconds:
    PYTHONPATH=src .venv/bin/python docs/fit.py --data-dir ../shared/data --datasets mnist --epochs 1 \\
        --train-subset 2000 --test-subset 1000 --recipes sgd adam --out /tmp/fit.md
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import shlex
import sys
from pathlib import Path

import torch

from funclens import __version__
from funclens.compress import compress
from funclens.config import RECIPES, DataCfg, ModelCfg, PruneCfg, QuantCfg, RunSpec, recipe_train, recipe_values
from funclens.data import load_dataset
from funclens.errors import ConfigError, FunclensError
from funclens.models import create_model
from funclens.safeio import read_regular
from funclens.store import atomic_write_text, describe_commit
from funclens.train import evaluate, train

# The paper's LeNet rows: relative accuracy deviation in %, copied from seed/functional-perspective-paper.md
# (Table 1: "Percentage deviation of base model test accuracy 99.15% on MNIST", row LeNet; Table 2:
# "Percentage deviation of base model test accuracy on CIFAR10", row LeNet, base accuracy 63.38% from
# section 4.2). "base" is the base model's test accuracy in %, shown beside the score, not part of it.
PAPER = {
    "mnist": {"table": "Table 1, row LeNet", "base": 99.15,
              "cells": {"16-bit": -0.07, "8-bit": -0.05, "10%": -0.07, "30%": -0.08, "50%": -0.01,
                        "70%": -1.04, "90%": -22.55}},
    "cifar10": {"table": "Table 2, row LeNet", "base": 63.38,
                "cells": {"16-bit": -0.62, "8-bit": -0.33, "10%": -0.25, "30%": -0.60, "50%": -2.95,
                          "70%": -14.56, "90%": -78.466}},
}
# The same rows' self-distillation cells (mean over 3 student seeds, then the std): not scored here.
PAPER_STUDENTS = {
    "mnist": {"alpha=0.1": (-0.178, 0.057), "alpha=0.5": (-0.124, 0.042), "alpha=0.9": (-0.215, 0.076)},
    "cifar10": {"alpha=0.1": (8.74, 0.65), "alpha=0.5": (8.93, 0.45), "alpha=0.9": (8.57, 0.72)},
}
QUANT = ("16-bit", "8-bit")
AMOUNTS = (0.1, 0.3, 0.5, 0.7, 0.9)
# (scope, last layer pruned too): the readings of "pruning 10%...90% of the original network" tried
SCOPES = (("layer", True), ("layer", False), ("global", True), ("global", False))
TOLERANCE = 2.0  # percentage points of relative accuracy deviation
# The count of cells within the tolerance depends on where the line is drawn; the ranks under these other
# tolerances are shown beside the score, so that a choice that holds at one line only can be seen as such.
OTHER_TOLERANCES = (1.0, 3.0, 5.0)
MEASURED_LIMIT = 16 << 20  # bytes: a --measured file holds a few kilobytes per base
NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10"}


def deviation(acc: float, base_acc: float) -> float:
    """The paper's accuracy deviation: ``100 * (acc - base_acc) / base_acc``, in %.

    Args:
        acc: the compressed model's accuracy (a fraction).
        base_acc: the base's accuracy (a fraction).

    Example:
        >>> round(deviation(0.136, 0.632), 1)
        -78.5
    """
    return 100.0 * (acc - base_acc) / base_acc


def score(ours: dict[str, float], paper: dict[str, float], tolerance: float = TOLERANCE) -> tuple[int, int, float]:
    """How well measured cells fit the paper's: (cells within ``tolerance`` points, cells compared, mean
    absolute difference in points), over every cell of ``paper``.

    Args:
        ours: setting -> measured accuracy deviation in %; must hold every setting of ``paper``.
        paper: setting -> the paper's accuracy deviation in %.
        tolerance: the largest absolute difference, in percentage points, that counts as a fit.

    Example:
        >>> score(PAPER["mnist"]["cells"], PAPER["mnist"]["cells"])
        (7, 7, 0.0)
        >>> score({"50%": -5.0, "90%": -20.0}, {"50%": -2.0, "90%": -21.0})
        (1, 2, 2.0)
    """
    missing = sorted(set(paper) - set(ours))
    if missing:
        raise ValueError(f"no measured value for {', '.join(missing)}")
    diffs = [abs(ours[k] - v) for k, v in paper.items()]
    # the boundary counts as within: -14.56 - 3 is 3.0000000000000018 away from -14.56 in floats
    return sum(round(d, 9) <= tolerance for d in diffs), len(diffs), sum(diffs) / len(diffs)


def measure(dataset: str, recipe: str, normalize: bool, args: argparse.Namespace) -> dict:
    """Train one base and measure every post-hoc cell of it under every scope.

    Returns:
        ``{"base": accuracy in %, "quant": {setting: deviation}, "prune": {(scope, last): {setting: deviation}}}``.
    """
    torch.set_num_threads(1)  # as a study's runs: one thread each, so --jobs never changes a number
    data = load_dataset(dataset, Path(args.data_dir) if args.data_dir else None, offline=True,
                        train_subset=args.train_subset, test_subset=args.test_subset, normalize=normalize)
    spec = RunSpec("train", DataCfg(dataset, args.train_subset, args.test_subset, normalize=normalize),
                   ModelCfg("lenet"), recipe_train(recipe, epochs=args.epochs))
    trained, _ = train(spec, data)
    # As a study compresses its base: its state_dict loaded into a freshly built model, which is never
    # evaluated itself (evaluation turns a model channels-last, a layout torch's L1 pruning cannot view).
    model = create_model("lenet", in_shape=data.in_shape, num_classes=data.num_classes)
    model.load_state_dict(trained.state_dict())
    base = evaluate(trained, data)[1]["test_acc"]

    def dev(cfg: QuantCfg | PruneCfg) -> float:
        return deviation(evaluate(compress(model, cfg)[0], data)[1]["test_acc"], base)

    return {"base": 100 * base, "quant": {q: dev(QuantCfg(q)) for q in QUANT},
            "prune": {(scope, last): {f"{round(a * 100)}%": dev(PruneCfg(a, scope, last)) for a in AMOUNTS}
                      for scope, last in SCOPES}}


def measured_key(dataset: str, recipe: str, normalize: bool, args: argparse.Namespace) -> str:
    """What a base's measurements depend on, as the key of a ``--measured`` file: the recipe by its values (a
    recipe whose definition changed is trained again), not by its name alone.

    Example:
        >>> a = argparse.Namespace(epochs=25, train_subset=0, test_subset=0)
        >>> json.loads(measured_key("mnist", "adam", True, a))["recipe"]["optimizer"]
        'adam'
    """
    return json.dumps({"dataset": dataset, "recipe_name": recipe, "recipe": recipe_values(recipe),
                       "normalize": normalize, "epochs": args.epochs, "train_subset": args.train_subset,
                       "test_subset": args.test_subset, "torch": torch.__version__}, sort_keys=True)


def _to_json(m: dict, commit: str) -> dict:
    return {**m, "commit": commit, "prune": {f"{s}/{'last' if last else 'nolast'}": v
                                             for (s, last), v in m["prune"].items()}}


def _from_json(m: dict) -> dict:
    return {**m, "prune": {(s, last): m["prune"][f"{s}/{'last' if last else 'nolast'}"] for s, last in SCOPES}}


def load_measured(path: Path) -> dict[str, dict]:
    """The measurements a ``--measured`` file holds (none when it does not exist yet), key -> measurements.

    Raises:
        ConfigError: one line, when the file cannot be read or is not what this script writes.
    """
    if not path.exists() and not path.is_symlink():
        return {}
    raw = read_regular(path, MEASURED_LIMIT, ConfigError, "--measured file")
    try:
        data = json.loads(raw)
        if data["sha256"] != _digest(data["bases"]):
            raise ValueError
        entries = {e["key"]: _from_json(e["measured"]) for e in data["bases"]}
        for m in entries.values():
            values = [m["base"], *m["quant"].values()] + [v for p in m["prune"].values() for v in p.values()]
            if not (set(m["quant"]) == set(QUANT) and all(isinstance(v, float) for v in values)
                    and isinstance(m["commit"], str)):
                raise ValueError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"{path}: not a --measured file of docs/fit.py (damaged or another file)") from None
    return entries


def save_measured(path: Path, entries: dict[str, dict]) -> None:
    """Write every entry, atomically: an interrupted search leaves the file as it was after the last base."""
    bases = [{"key": k, "measured": _to_json(m, m["commit"])} for k, m in entries.items()]
    atomic_write_text(path, json.dumps({"bases": bases, "sha256": _digest(bases)}, indent=1) + "\n")


def _digest(bases: list) -> str:
    """What the file's entries hash to: an edited or damaged figure is refused instead of scored."""
    return hashlib.sha256(json.dumps(bases, sort_keys=True).encode()).hexdigest()


def candidates(measured: dict[tuple[str, str, bool], dict], datasets: list[str],
               tolerance: float) -> list[dict]:
    """One row per recipe x normalisation x pruning scope, scored over the cells of ``datasets``, best first.

    Args:
        measured: (dataset, recipe, normalize) -> what :func:`measure` returned.
        datasets: the data sets whose cells are scored.
        tolerance: see :func:`score`.

    Example:
        >>> cells = {"16-bit": -0.07, "8-bit": -0.05}
        >>> m = {"base": 99.0, "quant": cells, "prune": {s: {"10%": -0.07, "30%": -0.08, "50%": -0.01,
        ...      "70%": -1.04, "90%": -22.55 - 10 * (s[0] == "global")} for s in SCOPES}}
        >>> rows = candidates({("mnist", "sgd", True): m}, ["mnist"], 2.0)
        >>> [(r["scope"], r["last"], r["within"], r["cells"], round(r["mad"], 3)) for r in rows[:3]]
        [('layer', True, 7, 7, 0.0), ('layer', False, 7, 7, 0.0), ('global', True, 6, 7, 1.429)]
    """
    rows = []
    for recipe, normalize in dict.fromkeys((r, n) for (_, r, n) in measured):
        for scope, last in SCOPES:
            row = {"recipe": recipe, "normalize": normalize, "scope": scope, "last": last, "within": 0,
                   "cells": 0, "abs_sum": 0.0, "worst": 0.0, "base": {}, "values": {}, "commits": {}}
            for ds in datasets:
                m = measured[(ds, recipe, normalize)]
                ours = {**m["quant"], **m["prune"][(scope, last)]}
                within, n, mad = score(ours, PAPER[ds]["cells"], tolerance)
                row["within"] += within
                row["cells"] += n
                row["abs_sum"] += mad * n
                row["worst"] = max(row["worst"], *(abs(ours[k] - v) for k, v in PAPER[ds]["cells"].items()))
                row["base"][ds], row["values"][ds] = m["base"], ours
                row["commits"][ds] = m.get("commit", "this commit")
            row["mad"] = row["abs_sum"] / row["cells"]
            rows.append(row)
    return sorted(rows, key=lambda r: (-r["within"], r["mad"]))


def _label(r: dict) -> str:
    return (f"{r['recipe']}, normalisation {'on' if r['normalize'] else 'off'}, {r['scope']}, "
            f"last layer {'pruned' if r['last'] else 'kept'}")


def ranks_at(measured: dict, datasets: list[str], tolerances: tuple[float, ...]) -> dict[str, list[int]]:
    """Each candidate's rank (by :func:`_label`) under each of ``tolerances``.

    Example:
        >>> p = PAPER["mnist"]["cells"]
        >>> m = {"base": 99.0, "quant": {k: p[k] for k in QUANT},
        ...      "prune": {s: {k: v + (1.5 if s[0] == "layer" else 0.6) * (k == "90%") for k, v in p.items()
        ...                    if k.endswith("%")} for s in SCOPES}}
        >>> r = ranks_at({("mnist", "sgd", True): m}, ["mnist"], (1.0, 2.0))
        >>> r["sgd, normalisation on, global, last layer pruned"], r["sgd, normalisation on, layer, last layer pruned"]
        ([1, 1], [3, 3])
    """
    out: dict[str, list[int]] = {}
    for t in tolerances:
        for i, r in enumerate(candidates(measured, datasets, t), 1):
            out.setdefault(_label(r), []).append(i)
    return out


def markdown(rows: list[dict], datasets: list[str], args: argparse.Namespace, command: str,
             other_ranks: dict[str, list[int]] | None = None) -> str:
    """The candidates and their scores, then every candidate's cells beside the paper's, in Markdown.

    Args:
        rows: from :func:`candidates`, best first.
        datasets: the data sets scored.
        args: the parsed options (epochs, subsets, tolerance).
        command: the command line that ran.
    """
    subset = lambda n: "all" if n == 0 else f"the first {n:,}"  # noqa: E731
    settings = list(PAPER[datasets[0]]["cells"])
    commit = describe_commit(Path(__file__).resolve().parent)
    measured_at = sorted({f"{NAMES[d]} {r['commits'][d]}" for r in rows for d in datasets})
    out = ["# Fit search: training recipe x pruning scope against the paper's LeNet cells", "",
           f"Command: `{command}`  ", f"Commit: {commit}; funclens {__version__}, torch {torch.__version__}.  ",
           f"Bases: LeNet, seed 0, {args.epochs} epoch{'s' * (args.epochs != 1)}, batch 64; "
           f"training images: {subset(args.train_subset)}; test images: {subset(args.test_subset)}; "
           f"bases trained at: {', '.join(measured_at)}.  ",
           "Scored cells: " + "; ".join(f"{NAMES[d]}: {PAPER[d]['table']}, {', '.join(settings)}" for d in datasets)
           + ". The students' cells (alpha) are not scored: they need distilled models, trained for the best few.  ",
           f"Score: cells within {args.tolerance:g} percentage points of the paper's accuracy deviation (relative, "
           "in %), then the mean absolute difference in points; biases are never pruned.", "",
           "| rank | recipe | input normalisation | pruning scope | last layer | "
           + " | ".join(f"{NAMES[d]} base % (paper {PAPER[d]['base']:.2f})" for d in datasets)
           + f" | cells within {args.tolerance:g} pts | mean abs. diff. (pts) | largest diff. (pts) | "
           + f"rank at {' / '.join(f'{t:g}' for t in OTHER_TOLERANCES)} pts |",
           "|---" * (9 + len(datasets)) + "|"]
    for i, r in enumerate(rows, 1):
        others = (other_ranks or {}).get(_label(r))
        out.append(f"| {i} | {r['recipe']} | {'on' if r['normalize'] else 'off'} | {r['scope']} | "
                   f"{'pruned' if r['last'] else 'kept'} | "
                   + " | ".join(f"{r['base'][d]:.2f}" for d in datasets)
                   + f" | {r['within']}/{r['cells']} | {r['mad']:.2f} | {r['worst']:.2f} | "
                   + (" / ".join(map(str, others)) if others else "–") + " |")
    out += ["", "## Cells: accuracy deviation in %", "", "| candidate | data | " + " | ".join(settings) + " |",
            "|---|---|" + "---|" * len(settings)]
    for d in datasets:
        out.append(f"| paper ({PAPER[d]['table']}) | {NAMES[d]} | "
                   + " | ".join(f"{PAPER[d]['cells'][s]:g}" for s in settings) + " |")
        out += [f"| {i}: {_label(r)} | {NAMES[d]} | " + " | ".join(f"{r['values'][d][s]:.2f}" for s in settings)
                + " |" for i, r in enumerate(rows, 1)]
    return "\n".join(out) + "\n"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(PAPER), help="of: " + ", ".join(PAPER))
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), help="of: " + ", ".join(RECIPES))
    p.add_argument("--normalize", nargs="+", default=["on"], help="input normalisation to try: on, off or both")
    p.add_argument("--epochs", type=int, default=25, help="epochs of every base (the paper: 25)")
    p.add_argument("--train-subset", type=int, default=0, help="the first N training images (0: all)")
    p.add_argument("--test-subset", type=int, default=0, help="the first N test images (0: all)")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, help="points of accuracy deviation that fit")
    p.add_argument("--data-dir", default=None, help="where mnist/ and cifar-10-batches-py/ are")
    p.add_argument("--jobs", type=int, default=1, help="bases trained at once, one thread each")
    p.add_argument("--out", default=None, help="also write the Markdown here")
    p.add_argument("--measured", default=None,
                   help="a JSON file that keeps every base's measurements and reuses them in later searches")
    args = p.parse_args(argv)
    for what, values, known in (("dataset", args.datasets, PAPER), ("recipe", args.recipes, RECIPES),
                                ("normalize", args.normalize, ("on", "off"))):
        bad = [v for v in values if v not in known]
        if bad or len(set(values)) != len(values):
            raise ConfigError(f"--{what}s: unknown or repeated {', '.join(bad or values)}; known: {', '.join(known)}")
    if not (1 <= args.epochs <= 10_000 and args.train_subset >= 0 and args.test_subset >= 0 and args.jobs >= 1
            and args.tolerance >= 0):
        raise ConfigError("--epochs must be in 1..10000, --jobs at least 1, subsets and --tolerance at least 0")
    if args.out:  # checked before the search, which takes half an hour, not after it
        out = Path(args.out)
        if out.is_dir() or not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
            raise ConfigError(f"--out {args.out}: not a file in a writable folder")
    if args.measured:
        m = Path(args.measured)
        if m.is_dir() or not m.parent.is_dir() or not os.access(m.parent, os.W_OK):
            raise ConfigError(f"--measured {args.measured}: not a file in a writable folder")
    return args


def run(args: argparse.Namespace, command: str) -> str:
    """Measure every base the options name (``--jobs`` at once) that ``--measured`` does not hold already,
    score the candidates; returns the Markdown."""
    path = Path(args.measured) if args.measured else None
    kept = load_measured(path) if path else {}
    keys = [(d, r, n == "on") for d in args.datasets for r in args.recipes for n in args.normalize]
    missing = [k for k in keys if measured_key(*k, args) not in kept]
    commit = describe_commit(Path(__file__).resolve().parent)

    def done(k: tuple[str, str, bool], m: dict) -> None:
        kept[measured_key(*k, args)] = {**m, "commit": commit}
        if path:  # after every base: an interrupted search keeps what it measured
            save_measured(path, kept)

    if args.jobs == 1:
        for k in missing:
            done(k, measure(*k, args))
    elif missing:
        # fork: the workers inherit the imported modules and sys.path; each trains one base at a time
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as ex:
            futures = {ex.submit(measure, *k, args): k for k in missing}
            for f in concurrent.futures.as_completed(futures):
                done(futures[f], f.result())
    measured = {k: kept[measured_key(*k, args)] for k in keys}
    return markdown(candidates(measured, args.datasets, args.tolerance), args.datasets, args, command,
                    ranks_at(measured, args.datasets, OTHER_TOLERANCES))


def main(argv: list[str]) -> int:
    try:
        args = parse(argv)
        text = run(args, shlex.join(["docs/fit.py", *argv]))
    except FunclensError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    try:
        if args.out:
            Path(args.out).write_text(text)
    except OSError as e:  # the search's result is on stdout already: nothing measured is lost
        print(f"error: could not write {args.out}: {e.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
