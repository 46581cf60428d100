"""Full studies: their FLOPs as funclens plans them, the time at 100% of the ceiling, the real wall time.

A full study takes an hour or more of both cores, so the benchmark never runs one: the wall time is read from
``<folder>.time`` (first word, seconds, written by the command that ran the study) when the study's folder is
here, and otherwise from the measured entries kept in ``full_studies.json``, each with the commit that ran
it. A fresh measurement found here is added to that file, so it outlives the results folder. A study trained
in bf16 is set beside the bf16 ceiling, an fp32 one beside the fp32 ceiling.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

from common import BENCH_DIR, REPO

from funclens.store import short_commit

RECORDS = BENCH_DIR / "full_studies.json"


class FullStudy(NamedTuple):
    """A full study set beside its FLOP count: how to run it, where it runs, what its inputs are."""
    preset: str
    arch: str
    in_shape: tuple[int, ...]
    classes: int
    precision: str    # fp32 or bf16: which ceiling it is set beside
    folder: str       # the study's folder, relative to the repository; its wall time is in <folder>.time
    study_file: str   # "" for the preset itself, else the study file (relative to the repository) that ran


FULL_STUDIES = (
    FullStudy("paper-mnist", "lenet", (1, 28, 28), 10, "fp32", "results/paper-mnist",
              "docs/studies/paper-mnist-sgd-momentum.toml"),
    FullStudy("paper-cifar10", "lenet", (3, 32, 32), 10, "fp32", "results/paper-cifar10-lenet",
              "docs/studies/paper-cifar10-lenet-sgd-momentum.toml"),
    FullStudy("paper-mnist", "lenet", (1, 28, 28), 10, "bf16", "results/paper-mnist-bf16",
              "docs/studies/paper-mnist-bf16.toml"),
    FullStudy("paper-cifar10", "lenet", (3, 32, 32), 10, "bf16", "results/paper-cifar10-lenet-bf16",
              "docs/studies/paper-cifar10-lenet-bf16.toml"))


def study_of(fs: FullStudy):
    """The study a full-study entry runs: its preset, or its study file."""
    from funclens.config import load_study_toml, preset_study

    return load_study_toml(REPO / fs.study_file) if fs.study_file else preset_study(fs.preset, fs.arch)


def flags_of(fs: FullStudy) -> str:
    """The ``funclens study`` arguments that name the study (data and output flags left out)."""
    from funclens.config import PRESET_ARCHS

    if fs.study_file:
        return fs.study_file
    return f"--preset {fs.preset}" + (f" --arch {fs.arch}" if len(PRESET_ARCHS[fs.preset]) > 1 else "")


def _same_study(record: dict[str, Any], fs: FullStudy) -> bool:
    # entries kept before bf16 studies were timed carry no precision: they are fp32
    return (record["preset"], record["arch"], record.get("precision", "fp32")) == (fs.preset, fs.arch, fs.precision)


def read_records(path: Path = RECORDS, key: str = "studies") -> list[dict[str, Any]]:
    """The measured full-study entries kept in ``path``, oldest first.

    Args:
        path: the records file.
        key: ``studies`` (wall times) or ``bf16_cost`` (the precision check's rows).

    Example:
        >>> sorted({r["preset"] for r in read_records()})
        ['paper-cifar10', 'paper-mnist']
    """
    return json.loads(path.read_text()).get(key, [])


def _measured_here(fs: FullStudy, date: str) -> dict[str, Any] | None:
    """The entry for a finished study in ``REPO/fs.folder`` with its ``.time`` file, or None."""
    from funclens.errors import StoreError
    from funclens.store import Store

    path = REPO / fs.folder
    time_file = path.with_suffix(".time")
    if not time_file.is_file():
        return None
    store = Store(path)
    try:  # the study's own record: run ids carry the content hash of the data the study read
        base_id = next(r["run"] for r in store.read_study()["runs"] if r["role"] == "base")
    except (StoreError, StopIteration):
        return None
    if not store.is_done(base_id):
        return None
    try:
        wall_s = float(time_file.read_text().split()[0])
    except (ValueError, IndexError):
        return None
    base = store.load_metrics(base_id)
    note = time_file.read_text().split(maxsplit=1)[1].strip() if len(time_file.read_text().split()) > 1 else ""
    return {"preset": fs.preset, "arch": fs.arch, "precision": fs.precision, "folder": fs.folder, "wall_s": wall_s,
            "commit": short_commit(base.get("git_commit") or "unknown"), "n_train": int(base["train_images"]),
            "n_test": int(base["test_images"]), "reported": date,
            "note": f"read from {fs.folder}.time" + (f" ({note})" if note else ""), "plan": _recorded_counts(store)}


def _recorded_counts(store) -> dict[str, int]:
    """The counts of the plan a study's own ``study.json`` holds: what the timed command ran, which the preset
    of a later commit may no longer be."""
    from funclens.config import StudyCfg, from_dict

    return _counts(from_dict(StudyCfg, store.read_study()["study"]))


def bf16_cost(folder: Path) -> dict[str, Any] | None:
    """The functional cost of bf16 training as a finished study with ``precision_check`` measured it: each
    bf16-trained twin's RFD from the fp32 model of its own seed, from the study's ``summary.json``; None when
    the study has no such rows.

    Args:
        folder: the study's folder.
    """
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    rows = [{k: r.get(k) for k in ("setting", "rfd", "rfd_ci", "verdict", "disagreement", "accuracy_deviation_pct")}
            for r in summary.get("rows", []) if r.get("method") == "precision"]
    if not rows:
        return None
    twins = [r for r in summary["rows"] if r.get("method") == "precision"]
    try:  # the commit that trained the twins, as their own metrics.json records it
        commit = json.loads((folder / "runs" / twins[0]["runs"][0] / "metrics.json").read_text())["git_commit"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        commit = "unknown"
    return {"rows": rows, "independent_mean": summary["reference"]["independent_mean"],
            "commit": short_commit(str(commit)), "num_test": summary["num_test"]}


def flop_parts(counts: dict[str, int], n_train: int, n_test: int, flops: dict[str, Any]) -> dict[str, float]:
    """A full study's FLOPs by kind of work.

    Args:
        counts: ``trainings``, ``teachers``, ``posthoc`` runs and ``epochs``.
        n_train, n_test: images in the training and test sets.
        flops: :func:`ceiling.lenet_flops` for the study's input shape.

    Example:
        >>> p = flop_parts({"trainings": 1, "teachers": 1, "posthoc": 1, "epochs": 2}, 10, 5,
        ...                {"train": 30, "forward": 10})
        >>> list(p.values())
        [600, 100, 100, 50]
    """
    e = counts["epochs"]
    return {"training": counts["trainings"] * e * n_train * flops["train"],
            "test evaluation": counts["trainings"] * e * n_test * flops["forward"],
            # the least possible: each teacher's logits over the training set once (funclens: once per
            # worker process and teacher)
            "teacher logits (once per teacher)": counts["teachers"] * n_train * flops["forward"],
            "post-hoc evaluation": counts["posthoc"] * n_test * flops["forward"]}


def _counts(study) -> dict[str, int]:
    from funclens.plan import plan

    planned = plan(study)
    trainings = [p for p in planned if p.spec.kind == "train"]
    students = [p for p in trainings if p.spec.distill is not None]
    return {"trainings": len(trainings), "students": len(students),
            "teachers": len({p.spec.distill.teacher for p in students}),
            "posthoc": len(planned) - len(trainings), "epochs": study.train.epochs}


def full_studies(ceiling: dict[str, float], date: str, records_path: Path = RECORDS) -> list[dict[str, Any]]:
    """One row per study of FULL_STUDIES: counts, FLOPs, time at the ceiling of its precision, newest measured
    wall time.

    Args:
        ceiling: the ceilings with all cores, GFLOP/s: ``fp32_all`` and ``bf16_all`` (``ceiling.py``'s ``used``).
        date: this run's date, given to an entry measured here for the first time.
        records_path: the measured entries kept so far; a new one is appended to it.
    """
    from ceiling import lenet_flops

    records = read_records(records_path)
    rows = []
    for fs in FULL_STUDIES:
        study = study_of(fs)
        row: dict[str, Any] = {"preset": fs.preset, "arch": fs.arch, "precision": fs.precision,
                               "flags": flags_of(fs), "folder": fs.folder,
                               "ceiling_gflops": ceiling[f"{fs.precision}_all"], **_counts(study)}
        fresh = _measured_here(fs, date)
        if fresh is not None and not any(r["commit"] == fresh["commit"] and r["wall_s"] == fresh["wall_s"]
                                         for r in records):
            records.append(fresh)
            _write_records(records_path, records)
        kept = [r for r in records if _same_study(r, fs)]
        cost = [c for c in read_records(records_path, "bf16_cost") if _same_study(c, fs)]
        if cost:
            row["bf16_cost"] = cost[-1]
        if kept:
            rec = kept[-1]
            row.update(rec.get("plan") or {})   # the counts of the plan that was timed, where recorded
            parts = flop_parts(row, rec["n_train"], rec["n_test"], lenet_flops(fs.in_shape, fs.classes))
            limit_s = sum(parts.values()) / (row["ceiling_gflops"] * 1e9)
            row.update(measured=rec, historical=fresh is None, parts=parts, total=sum(parts.values()),
                       limit_s=limit_s, pct_of_ceiling=100 * limit_s / rec["wall_s"])
        rows.append(row)
    return rows


def _write_records(path: Path, records: list[dict[str, Any]], key: str = "studies") -> None:
    doc = json.loads(path.read_text())
    doc[key] = records
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)


def record(date: str, records_path: Path = RECORDS) -> list[str]:
    """Keep what the full studies here measured: a new wall time (``<folder>.time``) and a new functional cost
    of bf16 training, each once. Run it when a study finishes, before the study grows (a later invocation that
    adds runs to the same folder would otherwise be counted with the plan that was timed).

    Args:
        date: the date to give new entries.
        records_path: the records file.

    Returns:
        One line per entry added.
    """
    added = []
    for fs in FULL_STUDIES:
        fresh = _measured_here(fs, date)
        records = read_records(records_path)
        if fresh is not None and not any(r["commit"] == fresh["commit"] and r["wall_s"] == fresh["wall_s"]
                                         for r in records):
            _write_records(records_path, [*records, fresh])
            added.append(f"{fs.folder}: {fresh['wall_s']:.0f} s at {fresh['commit']}")
        cost = bf16_cost(REPO / fs.folder)
        costs = read_records(records_path, "bf16_cost")
        if cost is not None and not any(c["rows"] == cost["rows"] for c in costs):
            _write_records(records_path, [*costs, {"preset": fs.preset, "arch": fs.arch, "folder": fs.folder,
                                                   "reported": date, **cost}], "bf16_cost")
            added.append(f"{fs.folder}: bf16 cost of {len(cost['rows'])} twins")
    return added


def main(argv: list[str]) -> int:
    """``fullstudy.py record``: keep new measurements; ``fullstudy.py refresh RESULTS.json``: recompute that
    file's full-study rows with its own ceiling and render RESULTS.md beside it."""
    import datetime

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if argv[:1] == ["record"]:
        print("\n".join(record(date)) or "nothing new")
        return 0
    if argv[:1] == ["refresh"] and len(argv) == 2:
        import render
        from run import targets

        path = Path(argv[1])
        try:  # the same checks as rendering applies: a missing or garbled file is one line
            results = render.load_results(path)
        except render.ResultsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        results["full_studies"] = full_studies(results["ceiling"]["used"], date)
        results["targets"] = targets(results)  # the full studies' targets follow their new rows
        path.write_text(json.dumps(results, indent=1) + "\n")  # as run.py writes it
        render.render_file(path, path.with_suffix(".md"))
        return 0
    print("usage: fullstudy.py record | fullstudy.py refresh RESULTS.json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
