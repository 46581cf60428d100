"""The ``summary.json`` of a study, from its store alone: every run's final predictions read and verified,
then one row per compared setting and per independent model.

Pure analysis of stored predictions and metrics: nothing here builds a model or writes a file, so any report
can be recomputed from the store on any machine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
import math
from pathlib import Path

import numpy as np

from funclens import __version__, metrics
from funclens.config import StudyCfg, describe_recipe, from_dict, preset_changes, preset_of
from funclens.plan import ROLES
from funclens.rfd import (CI, INDEPENDENT_ABOVE, N_BOOT, PRESERVE_BELOW, SEED, independent_reference,
                          population_rfd_hierarchical, rfd, rfd_hierarchical, verdict)
from funclens.store import Store, StoreError

# roles whose runs become rows compared with the base, in the order of ROLES
COMPARED_ROLES = ("student", "control", "fresh", "start", "quantize", "prune", "finetune", "noise", "custom")
# roles of post-hoc runs: with compress_all_seeds, one per setting and per uncompressed model
POSTHOC_ROLES = ("quantize", "prune", "finetune", "noise", "custom")
# sizes a post-hoc run's metrics.json records, copied into its row
_SIZE_KEYS = ("weight_bytes", "fp32_bytes", "sparse_bytes", "sparsity", "conv_layers_compressed", "layers_total")
# what the field's libraries measure (funclens.compress.CompressInfo), copied into the row where recorded
COST_KEYS = ("params", "macs", "base_params", "base_macs", "latency_ms", "fp32_latency_ms", "latency_batch",
             "library")
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
    parent: str | None = None  # a post-hoc run's: the run it compresses (None: the base)


@dataclass
class StudyView:
    out: Path
    study: StudyCfg
    runs: list[RunView]
    labels: np.ndarray | None = None  # [N] test labels the base stored; None for runs of older versions

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
                                  "conv_layers_compressed", "layers_total", "precision", "device", "git_commit",
                                  "funclens_version", *COST_KEYS) if k in m}
        views.append(RunView(rid, r["role"], r["setting"], r.get("seed"), float(m["test_acc"]),
                             store.load_preds(rid), store.pred_epochs(rid), info,
                             r["parents"][0] if r["role"] in POSTHOC_ROLES and r.get("parents") else None))
    base = next((v for v in views if v.role == "base"), None)
    labels = store.load_labels(base.run) if base is not None else None
    if labels is not None and len(labels) != len(base.final):
        raise StoreError(f"run {base.run}: {len(labels)} labels for {len(base.final)} predictions")
    return StudyView(out, study, views, labels)


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


# the fields :func:`diagnose` adds to a row that need the test labels (None without them)
LABELLED_FIELDS = ("flips_correct_to_wrong", "flips_wrong_to_correct", "mcnemar_p", "true_class_prob_change",
                   "ece", "per_class", "classes_hurt")


def _diagnose_one(base: np.ndarray, model: np.ndarray, labels: np.ndarray | None) -> dict:
    """Where one model's function moved from the base's, every field of :func:`diagnose` but ``classes_hurt``."""
    d = {"top1_agreement": 1.0 - metrics.distance(base, model, "disagreement"),
         "kl_base_model": metrics.tail_summary(metrics.per_example(base, model, "kl")),
         "kl_model_base": metrics.tail_summary(metrics.per_example(model, base, "kl")),
         # fewer bins than deciles only for a test set of under 10 inputs
         "flips_by_margin": metrics.by_margin(base, model, labels, bins=min(metrics.MARGIN_BINS, len(base)))}
    if labels is None:
        return {**d, **dict.fromkeys(f for f in LABELLED_FIELDS if f != "classes_hurt")}
    b, c = metrics.flips(base, model, labels)
    n = len(labels)
    return {**d, "flips_correct_to_wrong": b / n, "flips_wrong_to_correct": c / n,
            "mcnemar_p": metrics.mcnemar_exact(b, c),
            "true_class_prob_change": metrics.tail_summary(metrics.true_class_change(base, model, labels),
                                                           metrics.CHANGE_PERCENTILES, rms=True),
            "ece": metrics.ece(model, labels), "per_class": metrics.per_class(base, model, labels)}


def _mean_over(values: list):
    """The element-wise mean of equally shaped fields (dicts, lists, numbers); equal values are kept as they
    are (counts, None, bin edges of a shared base)."""
    first = values[0]
    if all(v == first for v in values[1:]):
        return first
    if isinstance(first, dict):
        return {k: _mean_over([v[k] for v in values]) for k in first}
    if isinstance(first, list):
        return [_mean_over(list(col)) for col in zip(*values)]
    return float(np.mean(values))


def diagnose(base: np.ndarray, models: list[np.ndarray], labels: np.ndarray | None = None,
             independents: list[np.ndarray] | None = None) -> dict:
    """Where the function moved: the fields a ``summary.json`` row gets beside its distances and RFD.

    ``flips_correct_to_wrong`` and ``flips_wrong_to_correct`` (fractions of the test set), ``mcnemar_p`` (exact,
    two-sided, on the two flip counts), ``kl_base_model`` and ``kl_model_base`` (per-input KL in nats: ``mean``,
    ``p50``, ``p90``, ``p99``, ``p999``, ``max``), ``true_class_prob_change`` (the model's probability of the true
    class minus the base's: ``mean``, ``rms``, ``min``, ``p1`` ... ``p99``, ``max``), ``top1_agreement``,
    ``flips_by_margin`` (:func:`funclens.metrics.by_margin`, deciles of the base's top-1 margin), ``ece`` (the
    model's, 15 bins), ``per_class`` (:func:`funclens.metrics.per_class`) and ``classes_hurt``
    (:func:`funclens.metrics.classes_beyond` against the independents' per-class changes). Several models
    (students over seeds) give the mean over them of every field, ``mcnemar_p`` included, with ``members``
    saying how many; ``classes_hurt`` is then tested on the mean per-class change. Fields that need labels are
    None without them.

    Args:
        base: ``[N, C]`` probabilities of the base.
        models: the row's models, ``[N, C]`` each.
        labels: ``[N]`` integer test labels.
        independents: the independent models the class test compares with (not the row's own).

    Example:
        >>> eye = np.eye(2)
        >>> d = diagnose(eye[[0, 0, 1, 1]], [eye[[0, 1, 1, 1]]], np.array([0, 0, 1, 1]))
        >>> d["flips_correct_to_wrong"], d["mcnemar_p"], d["per_class"]["accuracy_change"], d["members"]
        (0.25, 1.0, [-0.5, 0.0], 1)
    """
    out = _mean_over([_diagnose_one(base, m, labels) for m in models])
    out["members"] = len(models)
    out["classes_hurt"] = None
    if labels is not None:
        ref = [metrics.per_class(base, i, labels)["accuracy_change"] for i in independents or []]
        out["classes_hurt"] = metrics.classes_beyond(out["per_class"]["accuracy_change"], ref)
    return out


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
    row.update({k: members[0].info[k] for k in (*_SIZE_KEYS, *COST_KEYS) if k in members[0].info})
    row.update(diagnose(base.final, [m.final for m in members], sv.labels,
                        [i.final for i in indeps if all(i is not m for m in members)]))
    row.update(_yardstick_spread(base, members, indeps, metric))
    # models, then inputs: the spread over student seeds and over independent models
    row["rfd_hier"] = row["rfd"]
    row["rfd_ci_hier"] = list(rfd_hierarchical(base.final, [m.final for m in members], [i.final for i in indeps],
                                               metric=metric))
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
        "recipe": describe_recipe(t), "schedule": t.schedule, "normalize": st.data.normalize,
        "prune_last": st.prune_last,
        "distill_alphas": list(g.alphas), "distill_seeds": list(g.seeds), "temperature": g.temperature,
        "distill_init": g.init, "distill_control": g.control, "distill_no_teacher": g.no_teacher,
        "distill_fresh_student": g.fresh_student,
        "noise": list(st.noise), "quantize": list(st.quantize),
        "prune": list(st.prune), "prune_global": list(st.prune_global),
        "prune_structured": list(st.prune_structured), "finetune_epochs": st.finetune_epochs,
        "torchao": list(st.torchao), "pt2e": st.pt2e,
        "calibration_images": st.calibration_images,
        # a compressor of the user's is named by its source file's content, as pinned when the study started
        "custom": [{"name": c.name, "fn": c.fn, "source_sha256": c.source_sha256} for c in st.custom],
        "metric": st.metric,
        "funclens_versions": versions, "git_commits": commits,
        "preset": preset_of(st), "changed_from_preset": preset_changes(st),
    }


def _groups(sv: StudyView) -> dict[tuple[str, str], list[RunView]]:
    """(role, setting) -> its runs, compared roles only, in the order of ROLES then of the plan."""
    groups: dict[tuple[str, str], list[RunView]] = {}
    for role in COMPARED_ROLES:
        for r in sv.of(role):
            if role in POSTHOC_ROLES and r.parent not in (None, sv.base.run):
                continue  # an independent model's compressed copy: in its setting's population, not its row
            # a control student's setting names its role too, so that table columns stay distinct
            groups.setdefault((role, r.setting if role != "control" else f"control {r.setting}"), []).append(r)
    return groups


def _precision_rows(sv: StudyView, metric: str) -> list[dict]:
    """A study's precision check: each bf16-trained twin against the fp32 model of its own seed.

    The fp32 model of the twin's seed stands in for the base, and the study's other fp32 models (base and
    independents) are its yardstick: RFD about 0 means bf16 training left the function where fp32 training
    put it; about 1, as far as training from another seed moves it.
    """
    fp32 = sv.of("base") + sv.of("independent")
    rows = []
    for twin in sv.of("precision"):
        own = next(r for r in fp32 if r.seed == twin.seed)
        others = [dataclasses.replace(r, role="independent") for r in fp32 if r is not own]
        view = dataclasses.replace(sv, runs=[dataclasses.replace(own, role="base"), *others, twin])
        rows.append(_row(view, "precision", twin.setting, [twin], others, metric))
    return rows
def population(sv: StudyView, role: str, setting: str) -> list[tuple[RunView, RunView]]:
    """(uncompressed parent, compressed model) of every model a post-hoc setting compressed, the base's first.

    Without ``compress_all_seeds`` that is the base's compressed model alone: a population of one.

    Args:
        sv: the study.
        role: a post-hoc role: ``"quantize"``, ``"prune"``, ``"finetune"`` or ``"custom"``.
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
    inputs stays ``rfd_ci``. A population of several also gives ``rfd_hier`` and ``rfd_ci_hier``: the setting's
    RFD over it (ratio of means) with the interval of resampling its models, then inputs.
    """
    uncompressed = [sv.base, *sv.of("independent")]
    members = population(sv, role, setting)
    values = []
    for parent, model in members:
        others = [u.final for u in uncompressed if u.run != parent.run]
        values.append(rfd(parent.final, [model.final], others, metric=metric).rfd)
    finite = [v for v in values if np.isfinite(v)]
    out = {"population": len(members), "population_runs": [m.run for _, m in members], "rfd_seeds": values,
            "rfd_seed_mean": float(np.mean(finite)) if finite else None,
            "rfd_seed_min": float(np.min(finite)) if finite else None,
            "rfd_seed_max": float(np.max(finite)) if finite else None}
    if len(members) > 1:
        # over the population: compressed models (each with its own yardstick) resampled, then inputs
        point, ci = population_rfd_hierarchical(
            [(p.final, m.final, [u.final for u in uncompressed if u.run != p.run]) for p, m in members],
            metric=metric)
        out.update(rfd_hier=point, rfd_ci_hier=list(ci))
    return out


def analyse(sv: StudyView) -> dict:
    """The ``summary.json`` of a study (DESIGN.md's contract, plus ``role``, ``tv``, ``p_closer`` and sizes).

    Every row's ``rfd``, ``rfd_ci``, ``p_closer`` and ``verdict`` are :func:`funclens.rfd.rfd` of its runs' final
    predictions against the base and all independent models, with the default bootstrap (``N_BOOT``, ``SEED``).
    ``rfd_ci_hier`` resamples the models too (:func:`funclens.rfd.rfd_hierarchical`), around ``rfd_hier``
    (``rfd``, or a population's RFD over its seeds).
    """
    metric = sv.study.metric
    base, indeps = sv.base, sv.of("independent")
    ref = independent_reference(base.final, [i.final for i in indeps], metric)
    rows = [_row(sv, "independent", i.setting, [i], indeps, metric) for i in indeps]
    rows += [_row(sv, role, setting, members, indeps, metric) for (role, setting), members in _groups(sv).items()]
    rows += _precision_rows(sv, metric)
    for row in rows:
        if row["role"] in POSTHOC_ROLES:
            row.update(population_fields(sv, row["role"], row["setting"], metric))
    for row in rows:
        row["caveats"] = caveats(row, ref["pairs"])
    dists = [metrics.distance(base.final, i.final, metric) for i in indeps]
    return json_safe({
        "funclens_version": __version__, "study": sv.study.name, "setup": setup(sv), "dataset": sv.study.data.dataset,
        "arch": sv.study.model.arch, "num_test": int(base.final.shape[0]), "num_classes": int(base.final.shape[1]),
        "metric": metric, "base": {"run": base.run, "accuracy": base.accuracy,
                                   "ece": None if sv.labels is None else metrics.ece(base.final, sv.labels)},
        "reference": {"independent_mean": ref["mean"], "independent_std": ref["std"], "pairs": ref["pairs"],
                      "between_independents": ref["between"],
                      "independents": [{"run": i.run, "setting": i.setting, "accuracy": i.accuracy, metric: d}
                                       for i, d in zip(indeps, dists)]},
        "thresholds": {"preserves_below": PRESERVE_BELOW, "independent_above": INDEPENDENT_ABOVE,
                       "ci": CI, "bootstrap": N_BOOT, "seed": SEED},
        "rows": rows,
    })
