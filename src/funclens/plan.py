"""StudyCfg -> the runs it needs, with their parents: a small DAG, listed parents first.

Example:
    >>> from funclens.config import DistillGrid, preset_study
    >>> runs = plan(preset_study("quick"))
    >>> [r.role for r in runs][:3]
    ['base', 'independent', 'independent']
    >>> ROLES["quantize"].letter, ROLES["control"].method
    ('Q', 'distill')
    >>> paper = plan(preset_study("paper-mnist"))
    >>> [r.setting for r in paper if r.role in ("start", "noise")]
    ['alpha=0 (no teacher)', 'alpha=0 (no teacher)', 'alpha=0 (no teacher)', '1x', '2x', '4x', '8x']
    >>> [r.setting for r in plan(preset_study("quick").replace(precision_check=True)) if r.role == "precision"]
    ['bf16 base', 'bf16 seed=1', 'bf16 seed=2']
    >>> pop = plan(preset_study("quick").replace(quantize=("8-bit",), prune=(), compress_all_seeds=True))
    >>> [(r.role, r.setting, r.seed) for r in pop if r.role == "quantize"]
    [('quantize', '8-bit', None), ('quantize', '8-bit', 1), ('quantize', '8-bit', 2)]
    >>> fresh = plan(preset_study("quick").replace(distill=DistillGrid(fresh_student=True)))
    >>> [(r.setting, r.seed, r.spec.distill.init) for r in fresh if r.role == "fresh"]
    [('alpha=0.5 (fresh start)', 2, 'fresh')]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import PurePath

from funclens.config import (CompressCfg, ConfigError, CustomCfg, DistillCfg, GivenCfg, NoiseCfg, Pt2eCfg, PruneCfg,
                             QuantCfg, RunSpec, StructuredPruneCfg, StudyCfg, TorchaoCfg)


@dataclass(frozen=True)
class Role:
    """What a run is in a study, and how every table and figure shows it."""

    name: str
    method: str   # summary.json's "method" for rows of this role
    letter: str   # the paper's figure letters: B base, I independent, D distillation, Q quantization, P pruning
    colour: str   # a matplotlib colour, the same in every figure
    legend: str   # legend text


# The one table of roles, in the order tables and figures list them. C marks the random-control students:
# distilled like the others, but from an independent model instead of the base. F marks the bf16-trained
# twins of a study's precision check: each is compared with the fp32 model of its own seed. S marks the
# no-teacher control (the base's initial weights, alpha 0: what the start gives without a teacher), N the base
# with Gaussian weight noise on the scale of 8-bit rounding (the line between rounding and a new function). W marks
# the fresh-start student: taught by the base like the others, but from its own seed's initial weights.
ROLES: dict[str, Role] = {r.name: r for r in (
    Role("base", "base", "B", "black", "base"),
    Role("independent", "independent", "I", "tab:blue", "independent"),
    Role("student", "distill", "D", "tab:green", "distillation"),
    Role("control", "distill", "C", "tab:olive", "control student"),
    Role("fresh", "distill", "W", "gold", "fresh-start student"),
    Role("quantize", "quantize", "Q", "tab:red", "quantization"),
    Role("prune", "prune", "P", "tab:purple", "pruning"),
    Role("finetune", "prune", "R", "tab:pink", "pruned + fine-tuned"),
    Role("custom", "custom", "X", "tab:brown", "your compressor"),
    Role("precision", "precision", "F", "tab:orange", "bf16-trained twin"),
    Role("start", "distill", "S", "tab:cyan", "no-teacher control"),
    Role("noise", "noise", "N", "tab:gray", "noise floor"),
)}
NO_TEACHER = "alpha=0 (no teacher)"  # the no-teacher control's setting
FRESH_START = "(fresh start)"  # ends the fresh-start student's setting: "alpha=0.5 (fresh start)"


@dataclass(frozen=True)
class PlannedRun:
    spec: RunSpec
    role: str  # a key of ROLES
    setting: str  # reads like the paper's column heads: "alpha=0.5", "8-bit", "30%", "seed=1"
    seed: int | None = None  # a post-hoc run's: its parent's seed when the parent is an independent model

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def letter(self) -> str:
        return ROLES[self.role].letter

    def to_json(self) -> dict:
        return {"run": self.run_id, "role": self.role, "setting": self.setting, "seed": self.seed,
                "parents": list(self.spec.parents)}


def _pct(a: float) -> str:
    return f"{round(a * 100, 6):g}%"


def _reference(study: StudyCfg) -> list[PlannedRun]:
    """The base and the independent models: trained from the study's seeds, or read from the user's files
    (``[base]``), whose sha256 the study pins before it plans (:func:`funclens.checkpoints.pin_checkpoints`)."""
    def trained(seed: int) -> PlannedRun:
        spec = RunSpec("train", study.data, study.model, dataclasses.replace(study.train, seed=seed))
        return PlannedRun(spec, "independent", f"seed={seed}", seed)

    b = study.base
    names = [PurePath(f).name for f in b.files]

    def given(path: str, sha256: str) -> PlannedRun:
        # Named by the file, as the paper's columns are by seed; by its path where two files share a name,
        # since runs of one setting are averaged into one row.
        spec = RunSpec("given", study.data, study.model, given=GivenCfg(checkpoint=path, sha256=sha256))
        name = PurePath(path).name
        return PlannedRun(spec, "independent", name if names.count(name) == 1 else path)

    if not b.checkpoint:
        runs = [trained(s) for s in study.seeds]
    elif not b.sha256:
        raise ConfigError("a study with [base] checkpoint is planned once the study has read its files")
    else:
        runs = [given(b.checkpoint, b.sha256[0])]
        runs += ([given(f, d) for f, d in zip(b.independents, b.sha256[1:])] if b.independents
                 else [trained(s) for s in study.seeds[1:]])
    return [dataclasses.replace(runs[0], role="base")] + runs[1:]


def plan(study: StudyCfg) -> list[PlannedRun]:
    """Every run of ``study`` in an order where parents come first.

    With a given base (``[base] checkpoint``) students start fresh: the base's initial weights, which
    base-init students start from, are not known; for the same reason such a study has no no-teacher control.
    """
    def trained(seed: int, distill: DistillCfg | None = None) -> RunSpec:
        return RunSpec("train", study.data, study.model, dataclasses.replace(study.train, seed=seed), distill)

    runs = _reference(study)
    base = runs[0].spec
    g = study.distill
    init = "fresh" if study.base.checkpoint else g.init
    # The no-teacher control is an alpha-0 base-init student: a grid's own alpha-0 students of base-init are
    # the same runs, planned once, as the control.
    start = g.no_teacher and not study.base.checkpoint
    for alpha in g.alphas:
        if start and alpha == 0 and init == "base-init":
            continue
        for s in g.seeds:
            d = DistillCfg(teacher=base.run_id, alpha=alpha, temperature=g.temperature, init=init)
            runs.append(PlannedRun(trained(s, d), "student", f"alpha={alpha:g}", s))
    alpha = (0.5 if 0.5 in g.alphas else g.alphas[len(g.alphas) // 2]) if g.alphas else None
    if g.control and g.alphas and g.seeds:
        # Same recipe, but the teacher is an independent model: if a base student is no nearer the
        # base than this one is, distilling from the base transferred nothing specific to it.
        indep = runs[1].spec
        d = DistillCfg(teacher=indep.run_id, alpha=alpha, temperature=g.temperature, init=init,
                       init_run=base.run_id if init == "base-init" else "")
        runs.append(PlannedRun(trained(g.seeds[0], d), "control", f"alpha={alpha:g}", g.seeds[0]))
    if g.fresh_student and init == "base-init" and g.alphas and g.seeds:
        # The same teacher without the shared start: with init = fresh every student is this one already.
        d = DistillCfg(teacher=base.run_id, alpha=alpha, temperature=g.temperature, init="fresh")
        runs.append(PlannedRun(trained(g.seeds[0], d), "fresh", f"alpha={alpha:g} {FRESH_START}", g.seeds[0]))
    if start:
        # the base's own initial weights, the student's seed (so another data order), plain cross-entropy
        for s in g.seeds:
            d = DistillCfg(teacher=base.run_id, alpha=0.0, temperature=g.temperature, init="base-init")
            runs.append(PlannedRun(trained(s, d), "start", NO_TEACHER, s))
    # With compress_all_seeds, every post-hoc setting is applied to each independent model as well: its runs
    # keep the setting's role and name their parent in spec.parent, with that parent's seed (None: the base's).
    parents = [(base, None)] + ([(trained(s), s) for s in study.seeds[1:]] if study.compress_all_seeds else [])
    for kind, cfg, role, setting, tune in _posthoc(study):
        for parent, seed in parents:
            # a fine-tuned pruning run trains with the study's recipe from its parent's seed (data order)
            ft = None if tune is None else dataclasses.replace(tune, seed=parent.train.seed if parent.train else 0)
            runs.append(PlannedRun(RunSpec(kind, study.data, study.model, train=ft, parent=parent.run_id,
                                           compress=cfg), role, setting, seed))
    if study.precision_check:
        # The same seed gives the same initial weights and the same data order: only the arithmetic differs.
        for k, s in enumerate(study.seeds):
            bf16 = RunSpec("train", study.data, study.model,
                           dataclasses.replace(study.train, seed=s, precision="bf16"))
            runs.append(PlannedRun(bf16, "precision", "bf16 base" if k == 0 else f"bf16 seed={s}", s))
    return runs


def _posthoc(study: StudyCfg) -> list[tuple[str, CompressCfg, str, str, object]]:
    """Every post-hoc setting of ``study``: (run kind, config, role, setting, fine-tuning recipe or None)."""
    pruned: list[tuple[CompressCfg, str]] = (
        [(PruneCfg(amount=a, last=study.prune_last), _pct(a)) for a in study.prune]
        + [(PruneCfg(amount=a, scope="global", last=study.prune_last), f"global {_pct(a)}")
           for a in study.prune_global]
        + [(StructuredPruneCfg(amount=a), f"channels {_pct(a)}") for a in study.prune_structured])
    out: list[tuple[str, CompressCfg, str, str, object]] = [
        ("quant", QuantCfg(scheme=q), "quantize", q, None) for q in study.quantize]
    out += [("prune", cfg, "prune", setting, None) for cfg, setting in pruned]
    if study.finetune_epochs:
        tune = dataclasses.replace(study.train, epochs=study.finetune_epochs)
        out += [("prune", cfg, "finetune", f"{setting} + {study.finetune_epochs} ep fine-tune", tune)
                for cfg, setting in pruned]
    out += [("quant", TorchaoCfg(scheme=t), "quantize", f"torchao {t}", None) for t in study.torchao]
    if study.pt2e:
        out.append(("quant", Pt2eCfg(calibration=study.calibration_images), "quantize", "PT2E int8", None))
    out += [("custom", dataclasses.replace(c, calibration=c.calibration or study.calibration_images), "custom",
             c.name, None) for c in study.custom]
    # one seed for every scale: the noise points one way, and 2x is 1x's noise doubled
    out += [("noise", NoiseCfg(scale=k), "noise", f"{k:g}x", None) for k in study.noise]
    return out
