"""Full studies: their FLOPs as funclens plans them, the time at 100% of the ceiling, the real wall time.

A full study takes an hour or more of both cores, so the benchmark never runs one: the wall time is read from
``<folder>.time`` (first word, seconds, written by the command that ran the study) when the study's folder is
here, and otherwise from the measured entries kept in ``full_studies.json``, each with the commit that ran
it. A fresh measurement found here is added to that file, so it outlives the results folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from common import BENCH_DIR, REPO

RECORDS = BENCH_DIR / "full_studies.json"
# Full studies set beside their FLOP count: (preset, arch, input shape, classes, the study's folder).
FULL_STUDIES = (("paper-mnist", "lenet", (1, 28, 28), 10, "results/paper-mnist"),
                ("paper-cifar10", "lenet", (3, 32, 32), 10, "results/paper-cifar10-lenet"))


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


def _measured_here(study, preset: str, folder: str, date: str) -> dict[str, Any] | None:
    """The entry for a finished study in ``REPO/folder`` with its ``.time`` file, or None."""
    from funclens.errors import StoreError
    from funclens.store import Store

    path = REPO / folder
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
    return {"preset": preset, "arch": study.model.arch, "folder": folder, "wall_s": wall_s,
            "commit": (base.get("git_commit") or "unknown")[:7], "n_train": int(base["train_images"]),
            "n_test": int(base["test_images"]), "reported": date,
            "note": f"read from {folder}.time" + (f" ({note})" if note else ""), "plan": _recorded_counts(store)}


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
            "commit": str(commit)[:7], "num_test": summary["num_test"]}


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


def full_studies(ceiling_gflops: float, date: str, records_path: Path = RECORDS) -> list[dict[str, Any]]:
    """One row per study of FULL_STUDIES: counts, FLOPs, time at the ceiling, newest measured wall time.

    Args:
        ceiling_gflops: the fp32 ceiling with all cores, GFLOP/s.
        date: this run's date, given to an entry measured here for the first time.
        records_path: the measured entries kept so far; a new one is appended to it.
    """
    from ceiling import lenet_flops
    from funclens.config import PRESET_ARCHS, preset_study

    records = read_records(records_path)
    rows = []
    for preset, arch, in_shape, classes, folder in FULL_STUDIES:
        study = preset_study(preset, arch)
        flags = f"--preset {preset}" + (f" --arch {arch}" if len(PRESET_ARCHS[preset]) > 1 else "")
        row: dict[str, Any] = {"preset": preset, "arch": arch, "flags": flags, "folder": folder, **_counts(study)}
        fresh = _measured_here(study, preset, folder, date)
        if fresh is not None and not any(r["commit"] == fresh["commit"] and r["wall_s"] == fresh["wall_s"]
                                         for r in records):
            records.append(fresh)
            _write_records(records_path, records)
        kept = [r for r in records if r["preset"] == preset and r["arch"] == arch]
        cost = [c for c in read_records(records_path, "bf16_cost") if c["preset"] == preset and c["arch"] == arch]
        if cost:
            row["bf16_cost"] = cost[-1]
        if kept:
            rec = kept[-1]
            row.update(rec.get("plan") or {})   # the counts of the plan that was timed, where recorded
            parts = flop_parts(row, rec["n_train"], rec["n_test"], lenet_flops(in_shape, classes))
            limit_s = sum(parts.values()) / (ceiling_gflops * 1e9)
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
    from funclens.config import preset_study

    added = []
    for preset, arch, _, _, folder in FULL_STUDIES:
        study = preset_study(preset, arch)
        fresh = _measured_here(study, preset, folder, date)
        records = read_records(records_path)
        if fresh is not None and not any(r["commit"] == fresh["commit"] and r["wall_s"] == fresh["wall_s"]
                                         for r in records):
            _write_records(records_path, [*records, fresh])
            added.append(f"{folder}: {fresh['wall_s']:.0f} s at {fresh['commit']}")
        cost = bf16_cost(REPO / folder)
        costs = read_records(records_path, "bf16_cost")
        if cost is not None and not any(c["rows"] == cost["rows"] for c in costs):
            _write_records(records_path, [*costs, {"preset": preset, "arch": arch, "folder": folder,
                                                   "reported": date, **cost}], "bf16_cost")
            added.append(f"{folder}: bf16 cost of {len(cost['rows'])} twins")
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

        path = Path(argv[1])
        results = json.loads(path.read_text())
        results["full_studies"] = full_studies(results["ceiling"]["used"]["fp32_all"], date)
        path.write_text(json.dumps(results, indent=1) + "\n")  # as run.py writes it
        render.render_file(path, path.with_suffix(".md"))
        return 0
    print("usage: fullstudy.py record | fullstudy.py refresh RESULTS.json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
