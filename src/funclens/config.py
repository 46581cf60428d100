"""Typed, frozen configuration: the only place that validates and hashes configs.

Every run is described by a :class:`RunSpec`, a tree of frozen dataclasses. Its id is
``kind_`` + the first 12 hex characters of the sha256 of its canonical JSON, where only
fields that differ from their defaults enter the JSON: adding a field with a default later
never renames existing runs.

Example:
    >>> spec = RunSpec(kind="train", data=DataCfg("digits"), model=ModelCfg("lenet"),
    ...                train=TrainCfg(epochs=2))
    >>> spec.run_id.startswith("train_")
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from funclens.errors import ConfigError, FunclensError  # noqa: F401  (re-exported)
from funclens.paths import study_names
from funclens.safeio import read_regular


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    """A real number that is neither inf nor NaN (TOML spells both, and both ruin a training run)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer past the float range
        return False


# Upper bounds on counts: far past any study funclens is meant for, low enough that a typo such as
# --epochs 10**30 or 200,000 seeds is refused at once instead of running for ever.
MAX_EPOCHS = 10_000
MAX_BATCH = 1 << 20  # images per step
MAX_IMAGES = 1 << 31  # subset sizes
MAX_SEED = 2**63 - 1  # torch.manual_seed takes at most 64 bits
MAX_LIST = 1_000  # entries in any list of a study (seeds, alphas, amounts...)
MAX_RUNS = 1_000  # runs in one study
MAX_GROUP = 1 << 16  # 4-bit group size, weights
MAX_STUDY_FILE_BYTES = 1 << 20  # a study file is a few hundred bytes of TOML
# A study's name names its default output folder results/<name>: a slug, so it never leaves results/.
NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


def _check_count(value: Any, lo: int, hi: int, what: str) -> None:
    _check(_is_int(value) and lo <= value <= hi, f"{what} must be an integer in {lo}..{hi}, got {value!r}")


def _check_scheme(scheme: Any, known: tuple[str, ...], what: str, group_size: Any, grouped: str) -> None:
    """A quantization scheme among ``known``, and a group size only for the one scheme that takes it."""
    _check(scheme in known, f"unknown {what} {scheme!r}; known: {', '.join(known)}")
    _check(_is_int(group_size) and 0 <= group_size <= MAX_GROUP,
           f"group_size must be an integer in 0..{MAX_GROUP}, got {group_size}")
    _check(group_size == 0 or scheme == grouped, f"group_size applies to {grouped} only")


def _distinct(values: tuple, what: str, label: Callable[[Any], str] = str) -> None:
    """Refuse a list that names one setting twice: its runs would be shared and averaged as several."""
    seen: set[str] = set()
    for v in values:
        k = label(v)
        _check(k not in seen, f"{what} lists {k} twice")
        seen.add(k)


DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100")
# A user's own data set: "npz:PATH" (arrays x_train, y_train, x_test, y_test) or "folder:PATH"
# (train/<class>/* and test/<class>/* image files), paths relative to the current folder.
OWN_DATA_PREFIXES = ("npz:", "folder:")
MAX_IMAGE_SIZE = 1024  # pixels per side of a folder data set's images after resizing
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
# The forms an architecture may take: a registered name, a user's factory, or a timm model name
# (timm's names hold letters, digits, '_', '.' and '-', e.g. "vit_tiny_patch16_224.augreg_in21k").
_ARCH_FORMS = (re.compile(_IDENT), re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}"),
               re.compile(r"timm:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"))


def check_arch_form(arch: Any) -> str:
    """``arch`` if it is written as an architecture can be: a name, ``"package.module:function"`` or
    ``"timm:NAME"``. Nothing is imported: whether it names a model is
    :func:`funclens.models.check_arch`'s question, asked when a study starts, not when one is read.

    Args:
        arch: the ``arch`` of a study or run config.

    Example:
        >>> check_arch_form("mypkg.nets:small_cnn")
        'mypkg.nets:small_cnn'
        >>> check_arch_form("my nets")
        Traceback (most recent call last):
        funclens.errors.ConfigError: arch 'my nets' is neither a model name, "package.module:function" nor "timm:NAME"
    """
    _check(isinstance(arch, str) and any(r.fullmatch(arch) for r in _ARCH_FORMS),
           f'arch {arch!r} is neither a model name, "package.module:function" nor "timm:NAME"')
    return arch


def own_data_path(dataset: str) -> str | None:
    """The path of a user's ``npz:`` or ``folder:`` data set; None for a known set.

    Example:
        >>> own_data_path("npz:data/mine.npz"), own_data_path("mnist")
        ('data/mine.npz', None)
    """
    for prefix in OWN_DATA_PREFIXES:
        if dataset.startswith(prefix):
            return dataset[len(prefix):]
    return None
QUANT_SCHEMES = ("16-bit", "bf16", "8-bit", "4-bit", "dynamic-int8")
# torchao's quantize_ configs a study may name (the optional extra funclens[torchao]); they cover nn.Linear.
TORCHAO_SCHEMES = ("int8-weight-only", "int4-weight-only", "int8-dynamic")
MAX_CALIBRATION = 1 << 16  # training images shown to a calibrating compressor
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "step")


@dataclass(frozen=True)
class DataCfg:
    dataset: str = field(default="digits", metadata={
        "help": "data set name: " + ", ".join(DATASETS) + ', or "npz:PATH" or "folder:PATH" (your own)'})
    train_subset: int = field(default=0, metadata={"help": "use only the first N training images (0: all)"})
    test_subset: int = field(default=0, metadata={"help": "use only the first N test images (0: all)"})
    content: str = field(default="", metadata={
        "help": "sha256 of the arrays as loaded (hex); a study fills it, so it enters every run's id, and "
                "a load that finds other data is refused"})
    allow_modified: bool = field(default=False, metadata={
        "help": "use a known data set whose files match neither the published checksums nor the canonical "
                "content (runs are then named by that content)"})
    image_size: int = field(default=0, metadata={
        "help": "folder: data sets only: every image is resized to image_size x image_size pixels"})
    normalize: bool = field(default=True, metadata={
        "help": "standardise each input channel with the training set's mean and std; false: pixels / 255 "
                "only (in [0, 1]), for training, evaluation and calibration alike"})

    def __post_init__(self) -> None:
        _check(isinstance(self.normalize, bool), f"normalize must be true or false, got {self.normalize!r}")
        own = own_data_path(self.dataset) if isinstance(self.dataset, str) else None
        _check(self.dataset in DATASETS or bool(own), f"unknown dataset {self.dataset!r}; known: "
               f"{', '.join(DATASETS)}, or your own as \"npz:PATH\" or \"folder:PATH\"")
        folder = self.dataset.startswith("folder:")
        _check(_is_int(self.image_size) and (1 <= self.image_size <= MAX_IMAGE_SIZE if folder
                                             else self.image_size == 0),
               f"image_size: a folder: data set needs an integer in 1..{MAX_IMAGE_SIZE}" if folder
               else "image_size applies to folder: data sets only")
        for what, n in (("train_subset", self.train_subset), ("test_subset", self.test_subset)):
            _check(_is_int(n) and 0 <= n <= MAX_IMAGES, f"{what} must be an integer in 0..{MAX_IMAGES}, got {n!r}")
        _check(self.content == "" or (len(self.content) == 64 and all(c in "0123456789abcdef" for c in self.content)),
               f"content must be a sha256 in hex (64 characters), got {self.content!r}")


@dataclass(frozen=True)
class ModelCfg:
    arch: str = field(default="lenet", metadata={
        "help": 'a registered model (funclens.models.list_models()), "package.module:function" (your factory '
                '`function(in_shape, num_classes) -> nn.Module`) or "timm:NAME"'})

    def __post_init__(self) -> None:
        # Only the form: a stored study is read (and reported) without importing or building its model.
        check_arch_form(self.arch)


@dataclass(frozen=True)
class TrainCfg:
    epochs: int = field(default=25, metadata={"help": "epochs; test predictions are saved after each"})
    batch_size: int = field(default=64, metadata={"help": "training images per step"})
    optimizer: str = field(default="sgd", metadata={"help": "sgd (momentum 0: plain SGD) or adam"})
    lr: float = field(default=0.01, metadata={
        "help": "learning rate per step (not scaled with batch size); the schedule's starting value"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (0: none); adam ignores it"})
    nesterov: bool = field(default=False, metadata={"help": "SGD with Nesterov momentum (needs momentum > 0)"})
    weight_decay: float = field(default=0.0, metadata={"help": "L2 penalty"})
    schedule: str = field(default="constant", metadata={
        "help": "learning rate per epoch: constant; cosine (lr * (1 + cos(pi * (e - 1) / epochs)) / 2 in "
                "epoch e, from 1); step (lr * gamma ** ((e - 1) // step_epochs))"})
    step_epochs: int = field(default=10, metadata={"help": "step schedule only: epochs between decays"})
    gamma: float = field(default=0.1, metadata={"help": "step schedule only: factor the lr is multiplied by"})
    seed: int = field(default=0, metadata={
        "help": "seeds initial weights (unless distilled from base-init) and data order; leave 0 in a study file: "
                "its seeds set it"})
    precision: str = field(default="fp32", metadata={
        "help": "fp32, or bf16: forward passes under bf16 autocast on the CPU or CUDA (weights, loss and "
                "optimizer stay fp32; changes the function: see a study's precision_check)"})

    def __post_init__(self) -> None:
        _check(_is_int(self.epochs) and 1 <= self.epochs <= MAX_EPOCHS,
               f"epochs must be an integer in 1..{MAX_EPOCHS}, got {self.epochs}")
        _check(_is_int(self.batch_size) and 1 <= self.batch_size <= MAX_BATCH,
               f"batch_size must be an integer in 1..{MAX_BATCH}, got {self.batch_size}")
        _check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _check(_finite(self.lr) and self.lr > 0, f"lr must be a finite number > 0, got {self.lr}")
        _check(_finite(self.momentum) and 0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        _check(isinstance(self.nesterov, bool), f"nesterov must be true or false, got {self.nesterov!r}")
        _check(not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0),
               "nesterov needs optimizer sgd with momentum > 0")
        _check(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        _check(_is_int(self.step_epochs) and 1 <= self.step_epochs <= MAX_EPOCHS,
               f"step_epochs must be an integer in 1..{MAX_EPOCHS}, got {self.step_epochs!r}")
        _check(_finite(self.gamma) and 0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma!r}")
        # Off the step schedule they would change the run id and nothing else.
        _check(self.schedule == "step" or (self.step_epochs, self.gamma) == (10, 0.1),
               "step_epochs and gamma apply to schedule = step only")
        _check(_finite(self.weight_decay) and self.weight_decay >= 0,
               f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        _check(_is_int(self.seed) and 0 <= self.seed <= MAX_SEED,
               f"seed must be an integer in 0..2**63-1, got {self.seed}")
        _check(self.precision in ("fp32", "bf16"), f"precision must be fp32 or bf16, got {self.precision!r}")


# Named training recipes: each fills every field of RECIPE_FIELDS (those it leaves out keep TrainCfg's
# default). The paper names neither optimizer nor learning rate; these are the candidates a fit tries.
RECIPE_FIELDS = ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule", "step_epochs", "gamma")
RECIPES: dict[str, dict[str, Any]] = {
    "sgd-momentum": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9},  # TrainCfg's defaults
    "sgd": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.0},
    "adam": {"optimizer": "adam", "lr": 0.001},  # Adam's own default lr
    "sgd-cosine": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "schedule": "cosine"},
    # PyTorch's CIFAR-10 tutorial's optimizer (lr 0.001, momentum 0.9), the usual LeNet example
    "sgd-tutorial": {"optimizer": "sgd", "lr": 0.001, "momentum": 0.9},
}
RECIPE_NOTES = {"sgd-momentum": "SGD lr 0.01 momentum 0.9 (the default)", "sgd": "SGD lr 0.01 no momentum",
                "adam": "Adam lr 0.001", "sgd-cosine": "sgd-momentum with a cosine schedule",
                "sgd-tutorial": "SGD lr 0.001 momentum 0.9"}


def recipe_values(name: str) -> dict[str, Any]:
    """Every field a named recipe sets, with its value.

    Args:
        name: one of :data:`RECIPES`.

    Example:
        >>> recipe_values("adam")["lr"], recipe_values("adam")["schedule"]
        (0.001, 'constant')
        >>> recipe_values("rmsprop")
        Traceback (most recent call last):
        funclens.errors.ConfigError: unknown recipe 'rmsprop'; known: sgd-momentum, sgd, adam, sgd-cosine, sgd-tutorial
    """
    _check(isinstance(name, str) and name in RECIPES,
           f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainCfg)}
    return {k: RECIPES[name].get(k, defaults[k]) for k in RECIPE_FIELDS}


def recipe_train(name: str, **fields: Any) -> TrainCfg:
    """The TrainCfg of a named recipe, with ``fields`` (epochs, or any recipe field) given beside it winning.

    Args:
        name: one of :data:`RECIPES`.
        fields: other TrainCfg fields.

    Example:
        >>> t = recipe_train("sgd", epochs=3)
        >>> t.momentum, t.epochs, describe_recipe(t)
        (0.0, 3, 'sgd')
    """
    return TrainCfg(**{**recipe_values(name), **fields})


def describe_recipe(train: TrainCfg) -> str:
    """The recipe ``train`` follows, named by its values: a recipe's name when they match it, else the nearest
    recipe (fewest fields differing) and what differs. The name is never stored, so it cannot disagree
    with the values the run ids are made of.

    Args:
        train: a training config.

    Example:
        >>> describe_recipe(TrainCfg())
        'sgd-momentum'
        >>> describe_recipe(TrainCfg(optimizer="adam", lr=0.0005))
        'adam with lr 0.0005'
    """
    def diff(name: str) -> list[str]:
        return [f"{k} {_show(getattr(train, k))}" for k, v in recipe_values(name).items() if getattr(train, k) != v]

    nearest = min(RECIPES, key=lambda n: len(diff(n)))  # min keeps the first of equals: RECIPES' order
    return nearest + (" with " + ", ".join(diff(nearest)) if diff(nearest) else "")


def lr_at(train: TrainCfg, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (counted from 1) under ``train``'s schedule.

    A function of the epoch alone, so a resumed run continues on the same schedule.

    Args:
        train: the recipe.
        epoch: 1 to ``train.epochs``.

    Example:
        >>> t = TrainCfg(epochs=4, lr=0.1, schedule="cosine")
        >>> [round(lr_at(t, e), 4) for e in range(1, 5)]
        [0.1, 0.0854, 0.05, 0.0146]
        >>> lr_at(TrainCfg(lr=0.1, schedule="step", step_epochs=2, gamma=0.5), 3)
        0.05
    """
    if train.schedule == "cosine":
        return train.lr * (1 + math.cos(math.pi * (epoch - 1) / train.epochs)) / 2
    if train.schedule == "step":
        return train.lr * train.gamma ** ((epoch - 1) // train.step_epochs)
    return train.lr


def _expand_recipe(table: Any, inherited: Any) -> Any:
    """A study file's ``[train]`` table with its ``recipe`` replaced by the recipe's values: they override
    what ``inherited`` (the preset's or the default's train table) holds, and the table's own fields win."""
    if not isinstance(table, dict) or "recipe" not in table:
        return table
    own = {k: v for k, v in table.items() if k != "recipe"}
    return {**(inherited if isinstance(inherited, dict) else {}), **recipe_values(table["recipe"]), **own}


@dataclass(frozen=True)
class DistillCfg:
    """Knowledge distillation from a finished training run (the teacher)."""

    teacher: str = field(metadata={"help": "run id of the teacher"})
    alpha: float = field(default=0.5, metadata={"help": "weight of the KD term; 1 - alpha weighs cross-entropy"})
    temperature: float = field(default=3.0, metadata={"help": "softmax temperature T of the KD term"})
    init: str = field(default="base-init", metadata={"help": "base-init: a run's initial weights; fresh: the student's seed"})
    init_run: str = field(default="", metadata={"help": "base-init: the run whose initial weights (default: the teacher)"})

    def __post_init__(self) -> None:
        _check(self.teacher.startswith(("train_", "given_")),
               f"teacher must be a training or given run id, got {self.teacher!r}")
        _check(_finite(self.alpha) and 0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}")
        _check(_finite(self.temperature) and self.temperature > 0,
               f"temperature must be a finite number > 0, got {self.temperature}")
        _check(self.init in ("base-init", "fresh"), f"init must be base-init or fresh, got {self.init!r}")
        _check(self.init_run == "" or (self.init == "base-init" and self.init_run.startswith("train_")),
               "init_run names a training run, and only with init = base-init")

    @property
    def init_source(self) -> str | None:
        """The run whose initial weights the student starts from (None: fresh from its seed)."""
        return (self.init_run or self.teacher) if self.init == "base-init" else None

    @property
    def uses_teacher(self) -> bool:
        """Whether the loss has a teacher term: at alpha 0 it is plain cross-entropy, and the teacher is
        neither loaded nor run (the no-teacher control).

        Example:
            >>> DistillCfg("train_0123456789ab", alpha=0.0).uses_teacher, DistillCfg("train_0123456789ab").uses_teacher
            (False, True)
        """
        return self.alpha > 0


@dataclass(frozen=True)
class QuantCfg:
    scheme: str = field(default="8-bit", metadata={"help": "one of " + ", ".join(QUANT_SCHEMES)})
    group_size: int = field(default=0, metadata={"help": "4-bit only: weights per scale along the input (0: per channel)"})

    def __post_init__(self) -> None:
        _check_scheme(self.scheme, QUANT_SCHEMES, "quantization", self.group_size, "4-bit")


@dataclass(frozen=True)
class PruneCfg:
    amount: float = field(default=0.5, metadata={"help": "fraction of weights set to zero, in (0, 1)"})
    scope: str = field(default="layer", metadata={"help": "layer: that fraction of every layer; global: one threshold"})
    last: bool = field(default=True, metadata={
        "help": "prune the last Conv2d or Linear layer too (the classifier); false: leave it whole"})

    def __post_init__(self) -> None:
        _check(_finite(self.amount) and 0.0 < self.amount < 1.0, f"pruning amount must be in (0, 1), got {self.amount}")
        _check(self.scope in ("layer", "global"), f"pruning scope must be layer or global, got {self.scope!r}")
        _check(isinstance(self.last, bool), f"pruning last must be true or false, got {self.last!r}")


@dataclass(frozen=True)
class TorchaoCfg:
    """torchao's ``quantize_`` with one of its configs (the optional extra ``funclens[torchao]``)."""

    scheme: str = field(default="int8-weight-only", metadata={"help": "one of " + ", ".join(TORCHAO_SCHEMES)})
    group_size: int = field(default=0, metadata={"help": "int4-weight-only: weights per scale (0: torchao's default)"})

    def __post_init__(self) -> None:
        _check_scheme(self.scheme, TORCHAO_SCHEMES, "torchao scheme", self.group_size, "int4-weight-only")


@dataclass(frozen=True)
class Pt2eCfg:
    """PT2E static int8 quantization with the x86 inductor quantizer, calibrated on training images."""

    calibration: int = field(default=512, metadata={"help": "training images the observers see"})

    def __post_init__(self) -> None:
        _check_count(self.calibration, 1, MAX_CALIBRATION, "calibration")


@dataclass(frozen=True)
class StructuredPruneCfg:
    """Torch-Pruning's structured pruning: whole channels removed by L1 norm, so the model gets smaller."""

    amount: float = field(default=0.5, metadata={"help": "fraction of the channels of every prunable layer removed, in (0, 1)"})

    def __post_init__(self) -> None:
        _check(_finite(self.amount) and 0.0 < self.amount < 1.0,
               f"structured pruning amount must be in (0, 1), got {self.amount}")


@dataclass(frozen=True)
class CustomCfg:
    """A user's compressor: ``fn(model, calibration) -> nn.Module``, imported by name from the study file."""

    name: str = field(metadata={"help": "the row's setting in every table (a slug)"})
    fn: str = field(metadata={"help": '"package.module:function", called as function(model, calibration)'})
    calibration: int = field(default=0, metadata={
        "help": "training images passed as calibration (0: the study's calibration_images)"})
    source_sha256: str = field(default="", metadata={
        "help": "sha256 of the module's source file, filled by the study: a changed compressor is another run"})

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and NAME_RE.fullmatch(self.name) is not None,
               f"custom name must be 1 to 64 letters, digits, '.', '_' or '-', got {self.name!r}")
        _check(isinstance(self.fn, str) and _ARCH_FORMS[1].fullmatch(self.fn) is not None,
               f'custom {self.name}: fn must be "package.module:function", got {self.fn!r}')
        _check_count(self.calibration, 0, MAX_CALIBRATION, f"custom {self.name}: calibration")
        _check(self.source_sha256 == "" or _SHA256_HEX.fullmatch(self.source_sha256) is not None,
               f"custom {self.name}: source_sha256 must be a sha256 in hex, got {self.source_sha256!r}")


MAX_NOISE_SCALE = 1e6  # multiples of the 8-bit error: far past where any function survives


@dataclass(frozen=True)
class NoiseCfg:
    """The noise floor: Gaussian noise on every Conv2d and Linear weight, per layer of standard deviation
    ``scale`` times the RMS error that funclens's 8-bit (per-channel int8) quantization makes in that layer."""

    scale: float = field(default=1.0, metadata={"help": "noise RMS in multiples of the layer's 8-bit error RMS"})
    seed: int = field(default=0, metadata={"help": "seeds the noise, drawn layer by layer in model order"})

    def __post_init__(self) -> None:
        _check(_finite(self.scale) and 0 < self.scale <= MAX_NOISE_SCALE,
               f"noise scale must be a number in (0, {MAX_NOISE_SCALE:g}], got {self.scale!r}")
        _check(_is_int(self.seed) and 0 <= self.seed <= MAX_SEED,
               f"noise seed must be an integer in 0..2**63-1, got {self.seed!r}")


# The compression configs a post-hoc run may hold, by run kind; the union below is tagged by class name.
COMPRESS_KINDS: dict[str, tuple[type, ...]] = {
    "quant": (QuantCfg, TorchaoCfg, Pt2eCfg),
    "prune": (PruneCfg, StructuredPruneCfg),
    "custom": (CustomCfg,),
    "noise": (NoiseCfg,),
}
CompressCfg = Union[QuantCfg, PruneCfg, TorchaoCfg, Pt2eCfg, StructuredPruneCfg, CustomCfg, NoiseCfg]
_COMPRESS_TYPES = {t.__name__: t for ts in COMPRESS_KINDS.values() for t in ts}


@dataclass(frozen=True)
class GivenCfg:
    """A model the user already has: a state_dict of the run's architecture, in a file."""

    checkpoint: str = field(metadata={"help": "path of the state_dict, loaded with torch.load(weights_only=True)"})
    sha256: str = field(metadata={"help": "of the file's bytes: a changed file is another run"})

    def __post_init__(self) -> None:
        _check(isinstance(self.checkpoint, str) and self.checkpoint != "", "checkpoint: expected a path")
        _check(isinstance(self.sha256, str) and _SHA256_HEX.fullmatch(self.sha256) is not None,
               f"checkpoint sha256 must be 64 hex characters, got {self.sha256!r}")


RUN_KINDS = ("train", "quant", "prune", "custom", "given", "noise")


@dataclass(frozen=True)
class RunSpec:
    """One run. ``train`` runs have ``train`` (and ``distill`` for students); post-hoc runs have
    ``parent`` (the run they compress) and ``compress``, and a pruning run fine-tuned after pruning also
    ``train`` (the fine-tuning's recipe); ``given`` runs have ``given`` alone (a model read from the user's
    checkpoint, never trained)."""

    kind: str = field(metadata={"help": "train, quant, prune, custom, given or noise; the id's prefix"})
    data: DataCfg = field(metadata={"help": "the data the run trains or is evaluated on"})
    model: ModelCfg = field(metadata={"help": "the architecture"})
    train: TrainCfg | None = field(default=None, metadata={
        "help": "training runs: the recipe; pruning runs: the fine-tuning after pruning (none: not fine-tuned)"})
    distill: DistillCfg | None = field(default=None, metadata={"help": "students: the teacher and the KD loss"})
    parent: str | None = field(default=None, metadata={"help": "post-hoc runs: the id of the run compressed"})
    compress: CompressCfg | None = field(default=None, metadata={"help": "post-hoc runs: the method"})
    given: GivenCfg | None = field(default=None, metadata={"help": "a given model (a checkpoint file): its path and sha256"})

    def __post_init__(self) -> None:
        _check(self.kind in RUN_KINDS, f"run kind must be one of {RUN_KINDS}")
        _check((self.kind == "given") == (self.given is not None), "a given run, and only it, has a checkpoint")
        if self.kind == "given":
            _check(self.train is None and self.distill is None and self.parent is None and self.compress is None,
                   "a given run has a checkpoint and nothing else")
        elif self.kind == "train":
            _check(self.train is not None and self.compress is None and self.parent is None,
                   "a training run has a train config and no parent or compression")
        else:
            want = COMPRESS_KINDS[self.kind]
            names = " or ".join(t.__name__ for t in want)
            _check(isinstance(self.compress, want) and self.parent is not None and self.distill is None,
                   f"a {self.kind} run has a parent and a {names}")
            _check(self.train is None or self.kind == "prune", "only a pruning run is fine-tuned (has a train config)")

    @property
    def run_id(self) -> str:
        return run_id(self)

    @property
    def parents(self) -> tuple[str, ...]:
        """Runs that must be DONE before this one starts."""
        if self.parent:
            return (self.parent,)
        if self.distill is None:
            return ()
        teacher = self.distill.teacher if self.distill.uses_teacher else None
        return tuple(dict.fromkeys(r for r in (teacher, self.distill.init_source) if r))


# ---------------------------------------------------------------- canonical JSON and ids

def to_dict(obj: Any, *, nondefault: bool = False) -> Any:
    """Dataclass tree -> plain JSON types. With ``nondefault``, fields equal to their default are left out."""
    if dataclasses.is_dataclass(obj):
        out: dict[str, Any] = {}
        if type(obj).__name__ in _COMPRESS_TYPES:
            out["type"] = type(obj).__name__  # the union needs a tag to round-trip
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if nondefault and f.default is not dataclasses.MISSING and v == f.default:
                continue
            out[f.name] = to_dict(v, nondefault=nondefault)
        return out
    if isinstance(obj, (tuple, list)):
        return [to_dict(v, nondefault=nondefault) for v in obj]
    return obj


def canonical_json(obj: Any) -> str:
    return json.dumps(to_dict(obj, nondefault=True), sort_keys=True, separators=(",", ":"))


def run_id(spec: RunSpec) -> str:
    return f"{spec.kind}_{hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:12]}"


def from_dict(cls: type, data: Any) -> Any:
    """Plain JSON types -> dataclass tree of type ``cls``, validating every field."""
    origin = typing.get_origin(cls)
    is_union = origin is Union or origin is types.UnionType
    if is_union and QuantCfg in typing.get_args(cls):
        if data is None:
            return None
        tag = data.get("type") if isinstance(data, dict) else None
        sub = _COMPRESS_TYPES.get(tag) if isinstance(tag, str) else None
        _check(sub is not None, f"compress config needs a type, one of {', '.join(_COMPRESS_TYPES)}; got {tag!r}")
        return from_dict(sub, {k: v for k, v in data.items() if k != "type"})
    if is_union:
        args = [a for a in typing.get_args(cls) if a is not type(None)]
        if data is None:
            return None
        if len(args) == 1:
            return from_dict(args[0], data)
        return data
    if dataclasses.is_dataclass(cls):
        _check(isinstance(data, dict), f"{cls.__name__} must be a table, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names - {"type"}
        _check(not unknown, f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
        kw = {}
        for k, v in data.items():
            if k in names:
                try:
                    kw[k] = from_dict(hints[k], v)
                except ConfigError as e:  # name the field: "train.epochs: expected an integer"
                    raise ConfigError(f"{k}{'' if str(e).startswith(('[', '.')) else ': '}{e}") from None
        try:
            return cls(**kw)
        except TypeError as e:
            raise ConfigError(f"{cls.__name__}: {e}") from None
    if origin is tuple:
        (elt, *_rest) = typing.get_args(cls)
        _check(isinstance(data, (list, tuple)), f"expected a list, got {data!r}")
        return tuple(from_dict(elt, v) for v in data)
    if cls is float:
        _check(_finite(data), f"expected a finite number, got {data!r}")
        return float(data)
    if cls is int:
        _check(isinstance(data, int) and not isinstance(data, bool), f"expected an integer, got {data!r}")
        return data
    if cls is bool:
        _check(isinstance(data, bool), f"expected true or false, got {data!r}")
        return data
    if cls is str:
        _check(isinstance(data, str), f"expected a string, got {data!r}")
        return data
    return data


# ---------------------------------------------------------------- studies

@dataclass(frozen=True)
class DistillGrid:
    alphas: tuple[float, ...] = field(default=(0.1, 0.5, 0.9), metadata={"help": "one student per alpha and seed"})
    seeds: tuple[int, ...] = field(default=(2, 24, 42), metadata={"help": "student seeds"})
    temperature: float = field(default=3.0, metadata={"help": "softmax temperature T of the KD term"})
    init: str = field(default="base-init", metadata={
        "help": "base-init: students start from the base's own initial weights; fresh: from their own seed"})
    control: bool = field(default=True, metadata={
        "help": "also distil from an independent model (same recipe, alpha 0.5, first seed): the random control"})
    no_teacher: bool = field(default=False, metadata={
        "help": "also train, for each seed, a model from the base's initial weights with alpha 0 and no teacher "
                "(rows 'alpha=0 (no teacher)'): what the shared start gives without distillation; none with a "
                "given base, which has no initial weights"})
    fresh_student: bool = field(default=False, metadata={
        "help": "also train one student from fresh weights (its own seed's initial weights, not the base's), "
                "alpha 0.5 (or the middle alpha), the first seed (row 'alpha=0.5 (fresh start)'): the same "
                "teacher without the shared start; none when every student starts fresh already"})

    def __post_init__(self) -> None:
        for a in self.alphas:
            _check(_finite(a) and 0 <= a <= 1, f"alpha must be in [0, 1], got {a}")
        for s in self.seeds:
            _check(_is_int(s) and 0 <= s <= MAX_SEED, f"distill seeds must be integers in 0..2**63-1, got {s}")
        _check(len(self.alphas) <= MAX_LIST and len(self.seeds) <= MAX_LIST,
               f"distill lists at most {MAX_LIST} alphas and {MAX_LIST} seeds")
        _distinct(self.alphas, "distill.alphas", lambda a: f"{a:g}")
        _distinct(self.seeds, "distill.seeds")
        _check(_finite(self.temperature) and self.temperature > 0,
               f"temperature must be a finite number > 0, got {self.temperature}")
        _check(self.init in ("base-init", "fresh"), f"init must be base-init or fresh, got {self.init!r}")
        _check(isinstance(self.no_teacher, bool), f"no_teacher must be true or false, got {self.no_teacher!r}")
        _check(isinstance(self.fresh_student, bool),
               f"fresh_student must be true or false, got {self.fresh_student!r}")


@dataclass(frozen=True)
class BaseCfg:
    """Models the user already has, in place of training them: the base, and optionally the yardstick."""

    checkpoint: str = field(default="", metadata={
        "help": "state_dict of the study's arch to use as the base instead of training one (students then "
                "start fresh: a given base has no initial weights)"})
    independents: tuple[str, ...] = field(default=(), metadata={
        "help": "state_dicts of independently trained models, the yardstick (default: trained from seeds[1:])"})
    sha256: tuple[str, ...] = field(default=(), metadata={
        "help": "of the checkpoint, then of each independent, as the study read them; filled by the study"})

    def __post_init__(self) -> None:
        _check(isinstance(self.checkpoint, str), f"base.checkpoint: expected a path, got {self.checkpoint!r}")
        _check(bool(self.checkpoint) or not self.independents, "base.independents need a base.checkpoint")
        _check(len(self.independents) <= MAX_LIST, f"base.independents lists more than {MAX_LIST} files")
        for f in self.independents:
            _check(isinstance(f, str) and f != "", f"base.independents: expected paths, got {f!r}")
        _distinct((self.checkpoint, *self.independents) if self.checkpoint else (), "base")
        _check(not self.sha256 or len(self.sha256) == 1 + len(self.independents),
               "base.sha256 holds one digest per checkpoint")
        for d in self.sha256:
            _check(isinstance(d, str) and _SHA256_HEX.fullmatch(d) is not None,
                   f"base.sha256 must hold sha256 digests in hex, got {d!r}")

    @property
    def files(self) -> tuple[str, ...]:
        """The checkpoint, then the independents; empty when the study trains its base."""
        return (self.checkpoint, *self.independents) if self.checkpoint else ()


@dataclass(frozen=True)
class StudyCfg:
    """One dataset x one architecture x the methods to compare (one column block of the paper's tables)."""

    name: str = field(default="quick", metadata={
        "help": "the study's name, in its report and its default output folder results/NAME"})
    data: DataCfg = field(default=DataCfg(), metadata={"help": "the data set"})
    model: ModelCfg = field(default=ModelCfg(), metadata={"help": "the architecture"})
    train: TrainCfg = field(default=TrainCfg(), metadata={"help": "how every model is trained (students too)"})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "independent models; the first is the base"})
    distill: DistillGrid = field(default=DistillGrid(), metadata={"help": "the self-distilled students"})
    quantize: tuple[str, ...] = field(default=("16-bit", "8-bit"), metadata={
        "help": "post-hoc quantization schemes, each one of " + ", ".join(QUANT_SCHEMES)})
    prune: tuple[float, ...] = field(default=(0.1, 0.3, 0.5, 0.7, 0.9), metadata={
        "help": "post-hoc L1 pruning, each layer alone: fractions of weights set to zero, in (0, 1)"})
    prune_global: tuple[float, ...] = field(default=(), metadata={
        "help": "post-hoc L1 pruning with one threshold over all layers: fractions, in (0, 1)"})
    prune_last: bool = field(default=True, metadata={
        "help": "prune and prune_global reach the last layer (the classifier) too; false: they leave it whole. "
                "Biases are never pruned"})
    prune_structured: tuple[float, ...] = field(default=(), metadata={
        "help": "Torch-Pruning structured L1 pruning (funclens[pruning]): fractions of every layer's channels "
                "removed, in (0, 1)"})
    finetune_epochs: int = field(default=0, metadata={
        "help": "also fine-tune every pruned model (prune, prune_global, prune_structured) for this many epochs "
                "with the study's recipe, zeros kept (0: no fine-tuned rows)"})
    torchao: tuple[str, ...] = field(default=(), metadata={
        "help": "torchao quantize_ configs (funclens[torchao]), each one of " + ", ".join(TORCHAO_SCHEMES)})
    pt2e: bool = field(default=False, metadata={
        "help": "PT2E static int8 with the x86 inductor quantizer (funclens[torchao]), with fp32 and int8 latency"})
    calibration_images: int = field(default=512, metadata={
        "help": "training images shown to PT2E's observers and to custom compressors"})
    custom: tuple[CustomCfg, ...] = field(default=(), metadata={
        "help": "your compressors: [[custom]] tables with name and fn"})
    metric: str = field(default="disagreement", metadata={
        "help": "the distance behind RFD and verdicts: disagreement, js, kl or tv"})
    precision_check: bool = field(default=False, metadata={
        "help": "also train a bf16 twin of the base and of each independent (same seed, same data order) "
                "and report how far each moved from its fp32 self, against the fp32 yardstick"})
    compress_all_seeds: bool = field(default=False, metadata={
        "help": "apply every post-hoc setting (quantize, prune, torchao, pt2e, custom...) to every independent "
                "model too: a population of "
                "compressed models per setting, so RFD gets a spread over seeds"})
    base: BaseCfg = field(default=BaseCfg(), metadata={
        "help": "a base (and yardstick) you already have, as checkpoint files, instead of training them"})
    noise: tuple[float, ...] = field(default=(), metadata={
        "help": "the noise floor: the base with Gaussian noise on every Conv2d and Linear weight, per layer of "
                "this many times the RMS of the layer's 8-bit quantization error (rows '1x', '2x'...)"})

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and NAME_RE.fullmatch(self.name) is not None,
               f"name must be 1 to 64 letters, digits, '.', '_' or '-', not starting with '.', got {self.name!r}")
        _check(len(self.seeds) >= 2, "a study needs at least 2 seeds: the base and one independent model")
        for what, values in (("seeds", self.seeds), ("quantize", self.quantize), ("prune", self.prune),
                             ("prune_global", self.prune_global), ("prune_structured", self.prune_structured),
                             ("torchao", self.torchao), ("custom", self.custom), ("noise", self.noise)):
            _check(len(values) <= MAX_LIST, f"{what} lists {len(values)} entries, over the limit of {MAX_LIST}")
        for s in self.seeds:
            _check(_is_int(s) and 0 <= s <= MAX_SEED, f"seeds must be integers in 0..2**63-1, got {s}")
        _distinct(self.seeds, "seeds")
        _check(self.train.seed == 0, "set seeds through the study's seeds, not train.seed")
        for s in self.quantize:
            QuantCfg(scheme=s)
        _distinct(self.quantize, "quantize")
        _check(isinstance(self.prune_last, bool), f"prune_last must be true or false, got {self.prune_last!r}")
        for a in self.prune:
            PruneCfg(amount=a)
        for a in self.prune_global:
            PruneCfg(amount=a, scope="global")
        for a in self.prune_structured:
            StructuredPruneCfg(amount=a)
        for what, amounts in (("prune", self.prune), ("prune_global", self.prune_global),
                              ("prune_structured", self.prune_structured)):
            _distinct(amounts, what, lambda a: f"{round(a * 100, 6):g}%")  # as plan() labels them
        for s in self.torchao:
            TorchaoCfg(scheme=s)
        _distinct(self.torchao, "torchao")
        for k in self.noise:
            NoiseCfg(scale=k)
        _distinct(self.noise, "noise", lambda k: f"{k:g}x")  # as plan() labels them
        _check(_is_int(self.finetune_epochs) and 0 <= self.finetune_epochs <= MAX_EPOCHS,
               f"finetune_epochs must be an integer in 0..{MAX_EPOCHS}, got {self.finetune_epochs!r}")
        # a setting that would change nothing is a misunderstanding worth a line, not a study without the rows
        _check(self.finetune_epochs == 0 or bool(self.prune or self.prune_global or self.prune_structured),
               "finetune_epochs fine-tunes pruned models, but the study prunes nothing (prune, prune_global and "
               "prune_structured are all empty)")
        _check(isinstance(self.pt2e, bool), f"pt2e must be true or false, got {self.pt2e!r}")
        _check_count(self.calibration_images, 1, MAX_CALIBRATION, "calibration_images")
        _distinct(tuple(c.name for c in self.custom), "custom")
        _check(self.metric in ("disagreement", "js", "kl", "tv"), f"unknown metric {self.metric!r}")
        _check(isinstance(self.precision_check, bool),
               f"precision_check must be true or false, got {self.precision_check!r}")
        _check(not (self.precision_check and self.train.precision == "bf16"),
               "precision_check compares bf16 twins with fp32 runs; it needs train.precision = fp32")
        g = self.distill
        _check(isinstance(self.compress_all_seeds, bool),
               f"compress_all_seeds must be true or false, got {self.compress_all_seeds!r}")
        pruned = len(self.prune) + len(self.prune_global) + len(self.prune_structured)
        posthoc = (len(self.quantize) + pruned * (1 + (self.finetune_epochs > 0)) + len(self.torchao) + self.pt2e
                   + len(self.custom) + len(self.noise)) * (len(self.seeds) if self.compress_all_seeds else 1)
        runs = (len(self.seeds) * (1 + self.precision_check) + len(self.base.independents)
                + len(g.alphas) * len(g.seeds) + int(g.control and bool(g.alphas) and bool(g.seeds))
                + len(g.seeds) * g.no_teacher + int(g.fresh_student and bool(g.alphas) and bool(g.seeds))
                + posthoc)
        _check(runs <= MAX_RUNS, f"the study has {runs} runs, over the limit of {MAX_RUNS}")

    def replace(self, **changes: Any) -> "StudyCfg":
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------- the study file's reference

def _toml_value(v: Any) -> str:
    """A default as it is written in a study file."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def _reference_rows(cls: type) -> list[str]:
    rows = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default):
            continue   # a table of its own
        hint = typing.get_type_hints(cls)[f.name]
        kind = ("list of " + typing.get_args(hint)[0].__name__) if typing.get_origin(hint) is tuple else hint.__name__
        kind = "tables" if kind == "list of CustomCfg" else kind
        default = "(required)" if f.default is dataclasses.MISSING else f"`{_toml_value(f.default)}`"
        meaning = f.metadata["help"].replace("|", "\\|")   # a bare | would end the table's cell
        rows.append(f"| `{f.name}` | {kind} | {default} | {meaning} |")
    return rows


def reference_markdown() -> str:
    """The study file's reference, in Markdown: every key of every table, its type, default and meaning, from
    the ``help`` of the config's fields. README.md holds it between markers; a test keeps the two equal.

    Example:
        >>> print(reference_markdown().splitlines()[2])
        | key | type | default | meaning |
    """
    head = ["| key | type | default | meaning |", "|---|---|---|---|"]
    top = [f"| `preset` | str | (none) | start from this preset's study: one of {', '.join(PRESET_ARCHS)}; the "
           "other keys change it |"]
    out = ["Top level (defaults are those of `StudyCfg`, or of the preset named):", "", *head, *top,
           *_reference_rows(StudyCfg)]
    recipe = [f"| `recipe` | str | (none) | a named recipe that fills {', '.join(RECIPE_FIELDS)}; fields given "
              "beside it in this table win. The runs record the values; the report names the recipe they match. "
              + "; ".join(f"`{k}`: {v}" for k, v in RECIPE_NOTES.items()) + " |"]
    for f in dataclasses.fields(StudyCfg):
        if dataclasses.is_dataclass(f.default):
            out += ["", f"`[{f.name}]`: {f.metadata['help']}", "", *head, *(recipe if f.name == "train" else []),
                    *_reference_rows(type(f.default))]
    out += ["", "`[[custom]]`: one table per compressor of your own (`custom` above)", "", *head,
            *_reference_rows(CustomCfg)]
    out += ["", "`[[sweep]]`: one table per study of a sweep: each entry is the file's study with the entry's keys "
            "over it, named `<name>-<label>` and stored in `OUT/<label>`; `funclens study` runs them one after "
            "another and writes a combined report in `OUT`", "", *head,
            "| `label` | str | (required) | the entry's name: letters, digits, '.', '_' or '-' |",
            "| any other key | | the file's | a key or table of the study (not name or preset) that this entry "
            "changes: `train = { recipe = \"adam\" }`, `distill = { alphas = [0.5] }`; a table's keys replace "
            "those keys only |"]
    return "\n".join(out) + "\n"


def read_study_text(path: Path) -> str:
    """The text of a study file: a regular file of at most ``MAX_STUDY_FILE_BYTES``, in UTF-8.

    Opened without blocking and checked before any read, so a FIFO, a folder or /dev/zero is
    refused at once instead of hanging or filling the memory.

    Args:
        path: the study file.

    Example:
        >>> read_study_text(Path("/dev/null"))
        Traceback (most recent call last):
        funclens.errors.ConfigError: /dev/null: a study file must be a regular file
    """
    raw = read_regular(path, MAX_STUDY_FILE_BYTES, ConfigError, "study file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(read_study_text(path))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def _study_from_tables(raw: dict, entry: dict | None = None) -> StudyCfg:
    """The study of a file's top-level ``raw`` tables, then a sweep ``entry``'s over them: each table merges
    key by key into the one below it, and a ``[train] recipe`` expands over the train table below it."""
    raw = dict(raw)
    preset = raw.pop("preset", None)
    _check(preset is None or isinstance(preset, str), f"preset: expected a string, got {preset!r}")
    merged = to_dict(preset_study(preset) if preset else StudyCfg())
    for layer in (raw, entry or {}):
        layer = dict(layer)
        if "train" in layer:
            layer["train"] = _expand_recipe(layer["train"], merged.get("train"))
        for k, v in layer.items():
            merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return from_dict(StudyCfg, merged)


def load_study_toml(path: Path) -> StudyCfg:
    """Read a study from TOML; its tables mirror StudyCfg (``[data]``, ``[train]``, ``[distill]``...).

    A file with ``[[sweep]]`` entries holds several studies: :func:`load_studies_toml` reads it.

    Args:
        path: the study file; ``preset = "NAME"`` in it starts from that preset.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "s.toml"
        >>> _ = p.write_text('preset = "quick"\\nseeds = [0, 5]\\n')
        >>> load_study_toml(p).seeds
        (0, 5)
    """
    raw = _read_toml(path)
    _check("sweep" not in raw, f"{path} is a sweep of several studies ([[sweep]]): read it with load_studies_toml")
    return _study_from_tables(raw)


# A sweep entry's keys besides its label: any of the study's own, except those naming the study as a whole.
_NOT_IN_SWEEP = ("name", "preset", "sweep")


@dataclass(frozen=True)
class StudySet:
    """The studies of one study file: one, or one per ``[[sweep]]`` entry."""

    name: str = field(metadata={"help": "the file's study name: the default output folder is results/NAME"})
    studies: tuple[StudyCfg, ...] = field(metadata={"help": "the studies, in the file's order"})
    labels: tuple[str, ...] = field(default=(), metadata={
        "help": "a sweep's entry labels, one per study, each its folder under the output; none for one study"})

    def folders(self, out: Path) -> list[Path]:
        """Where each study is stored under ``out``: ``out`` itself for one study, ``out/<label>`` in a sweep.

        Args:
            out: the output folder of the command.

        Example:
            >>> [str(f) for f in StudySet("x", (StudyCfg(), StudyCfg()), ("a", "b")).folders(Path("out"))]
            ['out/a', 'out/b']
        """
        return [Path(out) / label for label in self.labels] if self.labels else [Path(out)]


def _sweep_entry(entry: Any, names: set[str]) -> tuple[str, dict]:
    """(label, tables) of one ``[[sweep]]`` entry, checked."""
    _check(isinstance(entry, dict), f"sweep: each entry is a table ([[sweep]]), got {entry!r}")
    tables = dict(entry)
    label = tables.pop("label", None)
    _check(isinstance(label, str) and NAME_RE.fullmatch(label) is not None,
           f"sweep: each entry needs a label of letters, digits, '.', '_' or '-' (its study's name and folder), "
           f"got {label!r}")
    _check(label not in names, f"sweep lists the label {label} twice")
    _check(label not in study_names(), f"sweep: the label {label} names a file of the sweep's combined report "
           "in the output folder; choose another")
    bad = sorted(set(tables) & set(_NOT_IN_SWEEP))
    _check(not bad, f"sweep entry {label}: {', '.join(bad)} apply to the whole file, not to one entry")
    return label, tables


def load_studies_toml(path: Path) -> StudySet:
    """Read every study of a study file. Without ``[[sweep]]``: the one study :func:`load_study_toml` reads.
    With it: one study per entry, the file's tables with the entry's over them (a key of an entry's table
    replaces that key only; ``[sweep.train] recipe`` expands over the file's train table), named
    ``<name>-<label>``.

    Args:
        path: the study file.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "s.toml"
        >>> _ = p.write_text('name = "lr"\\n[train]\\nepochs = 2\\n[[sweep]]\\nlabel = "slow"\\n'
        ...                  '[sweep.train]\\nlr = 0.001\\n[[sweep]]\\nlabel = "adam"\\ntrain = { recipe = "adam" }\\n')
        >>> ss = load_studies_toml(p)
        >>> [(s.name, s.train.optimizer, s.train.lr, s.train.epochs) for s in ss.studies]
        [('lr-slow', 'sgd', 0.001, 2), ('lr-adam', 'adam', 0.001, 2)]
        >>> [str(f) for f in ss.folders(Path("out"))]
        ['out/slow', 'out/adam']
    """
    raw = _read_toml(path)
    sweep = raw.pop("sweep", None)
    if sweep is None:
        study = _study_from_tables(raw)
        return StudySet(study.name, (study,))
    _check(isinstance(sweep, list) and 1 <= len(sweep) <= MAX_LIST,
           f"sweep: expected 1 to {MAX_LIST} [[sweep]] tables, got {sweep!r:.80}")
    name = _study_from_tables(raw).name  # the file's own tables alone must make a study
    labels: list[str] = []
    studies = []
    for entry in sweep:
        label, tables = _sweep_entry(entry, set(labels))
        try:
            studies.append(_study_from_tables({**raw, "name": f"{name}-{label}"}, tables))
        except ConfigError as e:
            raise ConfigError(f"sweep entry {label}: {e}") from None
        labels.append(label)
    return StudySet(name, tuple(studies), tuple(labels))


# ---------------------------------------------------------------- presets

def preset_study(name: str, arch: str | None = None) -> StudyCfg:
    """The named preset; ``arch`` picks one architecture of a multi-architecture preset."""
    archs = PRESET_ARCHS.get(name)
    _check(archs is not None, f"unknown preset {name!r}; known: {', '.join(PRESET_ARCHS)}")
    arch = arch or archs[0]
    if name == "quick":
        # 8x8 digits: small enough that the whole default study runs in seconds on 2 cores.
        return StudyCfg(name="quick", data=DataCfg("digits"), model=ModelCfg(arch),
                        train=TrainCfg(epochs=12, lr=0.02))
    dataset = {"paper-mnist": "mnist", "paper-cifar10": "cifar10", "paper-cifar100": "cifar100",
               "fashion": "fashion-mnist"}[name]
    study = StudyCfg(name=name if len(archs) == 1 else f"{name}-{arch}", data=DataCfg(dataset), model=ModelCfg(arch))
    if not name.startswith("paper-"):
        return study
    # The paper's presets: its unnamed choices as docs/fit.py fitted them to its LeNet cells (PAPER_FIT), and
    # the controls that read its findings: the no-teacher start and the noise floor.
    return study.replace(train=recipe_train(PAPER_FIT["recipe"]), distill=DistillGrid(no_teacher=True),
                         noise=(1.0, 2.0, 4.0, 8.0), prune_last=PAPER_FIT["prune_last"],
                         **({"prune": (), "prune_global": study.prune} if PAPER_FIT["prune_scope"] == "global" else {}))



def preset_of(study: StudyCfg) -> str | None:
    """The name of the preset a study was made from, recognised by the study's name; None for a study of its own.

    Args:
        study: a study config.

    Example:
        >>> preset_of(preset_study("paper-cifar10", "resnet50")), preset_of(StudyCfg(name="mine"))
        ('paper-cifar10', None)
    """
    for name, archs in PRESET_ARCHS.items():
        if any(study.name == (name if len(archs) == 1 else f"{name}-{arch}") for arch in archs):
            return name
    return None


def _flat_dict(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"train.epochs": 12, ...}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat_dict(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def preset_changes(study: StudyCfg) -> list[str]:
    """What a study changed in the preset it is named after, one ``"field: preset -> study"`` per field.

    A study named after no preset has nothing to compare with: empty. The data's content hash is not a
    change (a study fills it in), so an unchanged preset gives ``[]`` whether or not the data was loaded.

    Args:
        study: the study's config, e.g. as recorded in its ``study.json``.

    Example:
        >>> preset_changes(preset_study("quick"))
        []
        >>> q = preset_study("quick")
        >>> preset_changes(q.replace(train=dataclasses.replace(q.train, epochs=1)))
        ['train.epochs: 12 -> 1']
    """
    name = preset_of(study)
    if name is None:
        return []
    # the architecture the preset's name carries (paper-cifar10-resnet50), not the study's, which may differ
    preset = next(p for p in (preset_study(name, a) for a in PRESET_ARCHS[name]) if p.name == study.name)
    was, now = (_flat_dict(to_dict(dataclasses.replace(s, data=dataclasses.replace(s.data, content=""))))
                for s in (preset, study))
    recipe = [f"train.recipe: {describe_recipe(preset.train)} -> {describe_recipe(study.train)}"]
    return (recipe if describe_recipe(preset.train) != describe_recipe(study.train) else []) + [
        f"{k}: {_show(was.get(k))} -> {_show(now.get(k))}" for k in sorted(set(was) | set(now))
        if was.get(k) != now.get(k)]


def _show(v: Any) -> str:
    return "[" + ", ".join(str(x) for x in v) + "]" if isinstance(v, (list, tuple)) else str(v)

# What the paper leaves unnamed, as the fit search (docs/fit.py, docs/fit-results.md) chose it against the LeNet
# cells of its Tables 1 and 2: the training recipe, and "pruning 10%...90% of the original network" read as one
# L1 threshold over every layer's weights, the classifier's too. The recipe this replaced, SGD with momentum
# and each layer pruned alone, is `recipe = "sgd-momentum"` with `prune` in a study file.
PAPER_FIT = {"recipe": "adam", "prune_scope": "global", "prune_last": True}

PRESET_ARCHS: dict[str, tuple[str, ...]] = {
    "quick": ("lenet",),
    "fashion": ("lenet",),
    "paper-mnist": ("lenet",),
    "paper-cifar10": ("lenet", "resnet50", "mobilenet_v1"),
    "paper-cifar100": ("lenet", "resnet50", "mobilenet_v1"),
}
