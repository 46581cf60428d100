"""The ``summary.json`` of a study, from its store alone: every run's final predictions read and verified,
then one row per compared setting and per independent model.

Pure analysis of stored predictions and metrics: nothing here builds a model or writes a file, so any report
can be recomputed from the store on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math
from pathlib import Path

import numpy as np

from funclens import __version__, metrics
from funclens.config import StudyCfg, from_dict, preset_changes, preset_of
from funclens.plan import ROLES
from funclens.rfd import (CI, INDEPENDENT_ABOVE, N_BOOT, PRESERVE_BELOW, SEED, independent_reference, rfd,
                          verdict)
from funclens.store import Store, StoreError

# roles whose runs become rows compared with the base, in the order of ROLES
_COMPARED = ("student", "control", "quantize", "prune")
# sizes a post-hoc run's metrics.json records, copied into its row
_SIZE_KEYS = ("weight_bytes", "fp32_bytes", "sparse_bytes", "sparsity", "conv_layers_compressed", "layers_total")
# An independent model's row: it is the yardstick itself, so it gets no verdict of its own.
YARDSTICK = "yardstick"
# A "preserves" verdict is relative to the yardstick; when independents themselves disagree a lot, a model can
# change many predictions and still read "preserves". At or past these absolute changes every row says so.
NOTE_DISAGREEMENT = 0.01   # fraction of test inputs whose top-1 prediction changed
NOTE_ACCURACY_LOSS = 1.0   # accuracy loss in % of the base's accuracy


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
                                  "conv_layers_compressed", "layers_total", "precision", "device", "git_commit", "funclens_version") if k in m}
        views.append(RunView(rid, r["role"], r["setting"], r.get("seed"), float(m["test_acc"]),
                             store.load_preds(rid), store.pred_epochs(rid), info))
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
    row.update(_yardstick_spread(base, members, indeps, metric))
    if role == "independent":
        row["verdict"] = YARDSTICK
    return row


def _yardstick_spread(base: RunView, members: list[RunView], indeps: list[RunView], metric: str) -> dict:
    """RFD with each independent model alone as the yardstick, and the union of those intervals: how much the
    answer depends on which independents were trained (their own noise, which the input bootstrap leaves out)."""
    alone = [rfd(base.final, [m.final for m in members], [i.final], metric=metric) for i in indeps]
    los = [a.ci[0] for a in alone if not np.isnan(a.ci[0])]
    his = [a.ci[1] for a in alone if not np.isnan(a.ci[1])]
    return {"rfd_each_independent": [a.rfd for a in alone],
            "rfd_ci_yardstick": [min(los) if los else None, max(his) if his else None]}


def caveats(row: dict, pairs: int) -> list[str]:
    """Where a row's verdict is weak: a yardstick too small to settle it, a wide interval, or RFD hiding an
    absolute change.

    Args:
        row: a ``summary.json`` row (``verdict``, ``rfd_ci``, ``rfd_ci_yardstick``, ``disagreement``,
            ``accuracy_deviation_pct``).
        pairs: how many independent models make the yardstick.

    Example:
        >>> caveats({"verdict": "preserves", "rfd_ci": [0.2, 0.4], "rfd_ci_yardstick": [0.1, 0.6],
        ...          "disagreement": 0.0595, "accuracy_deviation_pct": -2.31}, 2)
        ["with either independent model alone as the yardstick the interval is [0.10, 0.60], which reads 'partial'", 'yet it changes 5.95% of the test predictions and loses 2.31% accuracy: RFD is relative to how much the independent models themselves disagree']
    """
    if row["verdict"] in (YARDSTICK, "undetermined"):
        return []
    out = []
    lo, hi = row["rfd_ci"]
    top = math.inf if hi is None else hi
    crossed = [t for t in (PRESERVE_BELOW, INDEPENDENT_ABOVE) if lo is not None and lo < t < top]
    if crossed:
        out.append(f"the interval reaches across {' and '.join(map(str, crossed))}, so the test set is too small "
                   "to place it on one side")
    ylo, yhi = row.get("rfd_ci_yardstick") or (None, None)
    alt = verdict([ylo, yhi])
    if alt not in (row["verdict"], "undetermined"):
        out.append(f"with {'either' if pairs == 2 else 'any one'} independent model alone as the yardstick the "
                   f"interval is [{ylo:.2f}, {'inf' if yhi is None else format(yhi, '.2f')}], which reads '{alt}'")
    dev, dis = row.get("accuracy_deviation_pct"), row.get("disagreement")
    if row["verdict"] == "preserves" and ((dis or 0) >= NOTE_DISAGREEMENT or -(dev or 0) >= NOTE_ACCURACY_LOSS):
        out.append(f"yet it changes {100 * dis:.2f}% of the test predictions and "
                   + (f"loses {-dev:.2f}% accuracy" if dev < 0 else f"changes accuracy by {dev:+.2f}%")
                   + ": RFD is relative to how much the independent models themselves disagree")
    return out


def setup(sv: StudyView) -> dict:
    """Everything that went into the run ids, flat, with the preset the study changed (if any) and how."""
    st, t, g = sv.study, sv.study.train, sv.study.distill
    commits = sorted({str(r.info.get("git_commit")) for r in sv.runs if r.info.get("git_commit")})
    versions = sorted({str(r.info["funclens_version"]) for r in sv.runs if r.info.get("funclens_version")})
    return {
        "dataset": st.data.dataset, "data_content_sha256": st.data.content,
        "train_subset": st.data.train_subset, "test_subset": st.data.test_subset, "arch": st.model.arch,
        "epochs": t.epochs, "batch_size": t.batch_size, "optimizer": t.optimizer, "lr": t.lr,
        "momentum": t.momentum, "weight_decay": t.weight_decay, "precision": t.precision, "seeds": list(st.seeds),
        "distill_alphas": list(g.alphas), "distill_seeds": list(g.seeds), "temperature": g.temperature,
        "distill_init": g.init, "distill_control": g.control, "quantize": list(st.quantize),
        "prune": list(st.prune), "prune_global": list(st.prune_global), "metric": st.metric,
        "funclens_versions": versions, "git_commits": commits,
        "preset": preset_of(st), "changed_from_preset": preset_changes(st),
    }


def _groups(sv: StudyView) -> dict[tuple[str, str], list[RunView]]:
    """(role, setting) -> its runs, compared roles only, in the order of ROLES then of the plan."""
    groups: dict[tuple[str, str], list[RunView]] = {}
    for role in _COMPARED:
        for r in sv.of(role):
            # a control student's setting names its role too, so that table columns stay distinct
            groups.setdefault((role, r.setting if role != "control" else f"control {r.setting}"), []).append(r)
    return groups


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
        row["caveats"] = caveats(row, ref["pairs"])
    dists = [metrics.distance(base.final, i.final, metric) for i in indeps]
    return json_safe({
        "funclens_version": __version__, "study": sv.study.name, "setup": setup(sv), "dataset": sv.study.data.dataset,
        "arch": sv.study.model.arch, "num_test": int(base.final.shape[0]), "num_classes": int(base.final.shape[1]),
        "metric": metric, "base": {"run": base.run, "accuracy": base.accuracy},
        "reference": {"independent_mean": ref["mean"], "independent_std": ref["std"], "pairs": ref["pairs"],
                      "between_independents": ref["between"],
                      "independents": [{"run": i.run, "setting": i.setting, "accuracy": i.accuracy, metric: d}
                                       for i, d in zip(indeps, dists)]},
        "thresholds": {"preserves_below": PRESERVE_BELOW, "independent_above": INDEPENDENT_ABOVE,
                       "ci": CI, "bootstrap": N_BOOT, "seed": SEED},
        "rows": rows,
    })
