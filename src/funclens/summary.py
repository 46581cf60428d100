"""The ``summary.json`` of a study, from its store alone: every run's final predictions read and verified,
then one row per compared setting and per independent model.

Pure analysis of stored predictions and metrics: nothing here builds a model or writes a file, so any report
can be recomputed from the store on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from funclens import __version__, metrics
from funclens.config import StudyCfg, from_dict
from funclens.plan import ROLES
from funclens.rfd import CI, INDEPENDENT_ABOVE, N_BOOT, PRESERVE_BELOW, SEED, independent_reference, rfd
from funclens.store import Store, StoreError

# roles whose runs become rows compared with the base, in the order of ROLES
_COMPARED = ("student", "control", "quantize", "prune")
# roles of post-hoc runs: with compress_all_seeds, one per setting and per uncompressed model
_POSTHOC = ("quantize", "prune")
# sizes a post-hoc run's metrics.json records, copied into its row
_SIZE_KEYS = ("weight_bytes", "fp32_bytes", "sparse_bytes", "sparsity", "conv_layers_compressed", "layers_total")


@dataclass
class RunView:
    run: str
    role: str
    setting: str
    seed: int | None
    accuracy: float
    final: np.ndarray  # [N, C] float16 softmax after the last epoch (or the post-hoc model's)
    epochs: list[int] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    parent: str | None = None  # a post-hoc run's: the run it compresses (None: the base)


@dataclass
class StudyView:
    out: Path
    study: StudyCfg
    runs: list[RunView]

    @property
    def base(self) -> RunView:
        return next(r for r in self.runs if r.role == "base")

    def of(self, role: str) -> list[RunView]:
        return [r for r in self.runs if r.role == role]


def load_study(out: Path) -> StudyView:
    """Read a study's plan and every run's final predictions, refusing damaged or unfinished runs."""
    out = Path(out)
    store = Store(out)
    rec = store.read_study()
    study = from_dict(StudyCfg, rec["study"])
    views = []
    for r in rec["runs"]:
        rid = r["run"]
        if not store.is_done(rid):
            raise StoreError(f"run {rid} ({r['role']} {r['setting']}) is not finished; run `funclens study` first")
        problems = store.verify_run(rid)
        if problems:
            raise StoreError(problems[0] + "; rerun `funclens study` to recompute it")
        m = store.load_metrics(rid)
        info = {k: m[k] for k in ("weight_bytes", "fp32_bytes", "sparse_bytes", "sparsity", "layers_compressed",
                                  "conv_layers_compressed", "layers_total", "precision", "device") if k in m}
        views.append(RunView(rid, r["role"], r["setting"], r.get("seed"), float(m["test_acc"]),
                             store.load_preds(rid), store.pred_epochs(rid), info,
                             r["parents"][0] if r["role"] in _POSTHOC and r.get("parents") else None))
    return StudyView(out, study, views)


def json_safe(obj):
    """``obj`` with every non-finite float (nan, inf) replaced by None: strict JSON has no NaN.

    Args:
        obj: nested dicts, lists, tuples and scalars.

    Example:
        >>> json_safe({"a": [1.0, float("nan")], "b": float("inf")})
        {'a': [1.0, None], 'b': None}
    """
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _mean_distance(base: np.ndarray, members: list[RunView], metric: str) -> float:
    return float(np.mean([metrics.distance(base, m.final, metric) for m in members]))


def _row(sv: StudyView, role: str, setting: str, members: list[RunView], indeps: list[RunView],
         metric: str) -> dict:
    """One row of ``summary.json``: ``members`` (one run, or students over seeds) against the base."""
    base = sv.base
    r = rfd(base.final, [m.final for m in members], [i.final for i in indeps], metric=metric)
    devs = [metrics.accuracy_deviation(m.accuracy, base.accuracy) for m in members]
    row = {
        "method": ROLES[role].method, "role": role, "setting": setting, "runs": [m.run for m in members],
        "accuracy": float(np.mean([m.accuracy for m in members])),
        "accuracy_deviation_pct": float(np.mean(devs)),
        # the paper's (±std) over seeds; sample std (ddof=1), null for a single model
        "accuracy_deviation_std": float(np.std(devs, ddof=1)) if len(devs) > 1 else None,
        "disagreement": _mean_distance(base.final, members, "disagreement"),
        "js": _mean_distance(base.final, members, "js"), "tv": _mean_distance(base.final, members, "tv"),
        **r.to_json(),
    }
    row.update({k: members[0].info[k] for k in _SIZE_KEYS if k in members[0].info})
    return row


def _groups(sv: StudyView) -> dict[tuple[str, str], list[RunView]]:
    """(role, setting) -> its runs, compared roles only, in the order of ROLES then of the plan."""
    groups: dict[tuple[str, str], list[RunView]] = {}
    for role in _COMPARED:
        for r in sv.of(role):
            if role in _POSTHOC and r.parent not in (None, sv.base.run):
                continue  # an independent model's compressed copy: in its setting's population, not its row
            # a control student's setting names its role too, so that table columns stay distinct
            groups.setdefault((role, r.setting if role != "control" else f"control {r.setting}"), []).append(r)
    return groups


def population(sv: StudyView, role: str, setting: str) -> list[tuple[RunView, RunView]]:
    """(uncompressed parent, compressed model) of every model a post-hoc setting compressed, the base's first.

    Without ``compress_all_seeds`` that is the base's compressed model alone: a population of one.

    Args:
        sv: the study.
        role: ``"quantize"`` or ``"prune"``.
        setting: the setting's name, e.g. ``"8-bit"``.
    """
    by_run = {r.run: r for r in sv.runs}
    members = [(by_run[r.parent or sv.base.run], r) for r in sv.of(role)
               if r.setting == setting and (r.parent or sv.base.run) in by_run]
    return sorted(members, key=lambda pm: pm[0].role != "base")


def population_fields(sv: StudyView, role: str, setting: str, metric: str) -> dict:
    """A post-hoc row's spread over seeds: each compressed model's RFD against its own parent, with the other
    uncompressed models (base and independents) as its yardstick.

    Fields: ``population`` (compressed models), ``population_runs``, ``rfd_seeds`` (one RFD per compressed model,
    the base's first, as ``rfd``), ``rfd_seed_mean``, ``rfd_seed_min`` and ``rfd_seed_max``; the spread over test
    inputs stays ``rfd_ci``.
    """
    uncompressed = [sv.base, *sv.of("independent")]
    members = population(sv, role, setting)
    values = []
    for parent, model in members:
        others = [u.final for u in uncompressed if u.run != parent.run]
        values.append(rfd(parent.final, [model.final], others, metric=metric).rfd)
    finite = [v for v in values if np.isfinite(v)]
    return {"population": len(members), "population_runs": [m.run for _, m in members], "rfd_seeds": values,
            "rfd_seed_mean": float(np.mean(finite)) if finite else None,
            "rfd_seed_min": float(np.min(finite)) if finite else None,
            "rfd_seed_max": float(np.max(finite)) if finite else None}


def analyse(sv: StudyView) -> dict:
    """The ``summary.json`` of a study (DESIGN.md's contract, plus ``role``, ``tv``, ``p_closer`` and sizes).

    Every row's ``rfd``, ``rfd_ci``, ``p_closer`` and ``verdict`` are :func:`funclens.rfd.rfd` of its runs' final
    predictions against the base and all independent models, with the default bootstrap (``N_BOOT``, ``SEED``).
    """
    metric = sv.study.metric
    base, indeps = sv.base, sv.of("independent")
    ref = independent_reference(base.final, [i.final for i in indeps], metric)
    rows = [_row(sv, "independent", i.setting, [i], indeps, metric) for i in indeps]
    rows += [_row(sv, role, setting, members, indeps, metric) for (role, setting), members in _groups(sv).items()]
    for row in rows:
        if row["role"] in _POSTHOC:
            row.update(population_fields(sv, row["role"], row["setting"], metric))
    return json_safe({
        "funclens_version": __version__, "study": sv.study.name, "dataset": sv.study.data.dataset,
        "arch": sv.study.model.arch, "num_test": int(base.final.shape[0]), "num_classes": int(base.final.shape[1]),
        "metric": metric, "base": {"run": base.run, "accuracy": base.accuracy},
        "reference": {"independent_mean": ref["mean"], "independent_std": ref["std"], "pairs": ref["pairs"],
                      "between_independents": ref["between"]},
        "thresholds": {"preserves_below": PRESERVE_BELOW, "independent_above": INDEPENDENT_ABOVE,
                       "ci": CI, "bootstrap": N_BOOT, "seed": SEED},
        "rows": rows,
    })
