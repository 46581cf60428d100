"""Post-hoc compression: quantization and L1 pruning of a trained model, dispatched on the config's type.

``compress(model, cfg)`` deep-copies ``model`` (the caller's model is never touched), compresses the copy
and returns it with a :class:`CompressInfo`. It never writes files: saving is the caller's job (``store.py``).

The returned model computes in fp32 on CPU and holds the weights as the compressed format gives them
(dequantized values; pruned zeros in place), so it loads into a fresh ``create_model(...)`` with
``load_state_dict`` -- except ``dynamic-int8``, which returns torch's own quantized ``Linear`` modules
(``info.loadable`` is False there).

:class:`CompressInfo` fields (:meth:`CompressInfo.to_json` gives all but ``packed`` for ``metrics.json``):

- ``method``: ``"quantize"``, ``"prune"`` or ``"custom"``; ``setting``: e.g. ``"8-bit"``, ``"30%"``, ``"global 50%"``.
- The field's libraries' methods (torchao, PT2E, Torch-Pruning) also give ``library``, and where they apply
  ``params``/``macs`` against ``base_params``/``base_macs`` and a measured ``latency_ms`` against
  ``fp32_latency_ms`` (one batch of ``latency_batch`` images, median of repeats, in the same process).
- ``scheme`` (quantization; plus ``group_size`` for grouped 4-bit) or ``amount`` and ``scope`` (pruning):
  the config's values, for tables.
- The noise floor (``method`` ``"noise"``, setting ``"2x"``): ``noise_rms_by_layer``, the measured RMS of the
  noise added to each layer's weight, and ``noise_target_by_layer``, its target (see ``compress/noise.py``).
- ``loadable``: whether ``create_model(...).load_state_dict(returned.state_dict())`` works.
- ``layers_total``: Conv2d + Linear layers of the model; ``layers_compressed``: those compressed;
  ``conv_layers_compressed``: the Conv2d among them (0 for ``dynamic-int8``).
- ``fp32_bytes``: size of all parameters and buffers at fp32 (float tensors at 4 bytes per element;
  integer buffers such as BatchNorm's ``num_batches_tracked`` at their own size).
- ``weight_bytes``: the same at the compressed precision. Quantization: fp16/bf16 = 2 bytes per weight;
  int8 = 1 byte per weight + one fp32 scale per output channel; int4 = 0.5 byte per weight (two per byte,
  ``ceil(numel / 2)`` per layer) + one fp32 scale per output channel or group; ``dynamic-int8`` = 1 byte
  per Linear weight + an fp32 scale and an int32 zero point per tensor. Biases, BatchNorm and every
  other tensor stay at fp32 size. Pruning: the dense fp32 size (zeros are still stored), so
  ``weight_bytes == fp32_bytes``.
- Pruning only: ``sparse_bytes``: the size if each pruned weight were stored CSR-like over
  ``(out_channels, in_channels * kh * kw)``: nonzero values (fp32, 4 bytes) + their column indices
  (int32, 4 bytes) + ``out_channels + 1`` row pointers (int32, 4 bytes); every other tensor dense fp32.
  ``sparsity``: the measured fraction of zeros among the weights of the pruned layers, counted after
  pruning; ``sparsity_by_layer``: layer name -> that fraction.
- ``packed``: quantized schemes only (``None`` for pruning and ``dynamic-int8``): a dict of tensors in
  their real storage format, ``torch.save``-able so the file size shows the real size. It mirrors the
  state_dict: ``"<layer>.weight"`` holds fp16/bf16 values, int8 values (the weight's shape) or int4
  values packed two per byte (1-D uint8, see :func:`funclens.compress.quantize.pack_int4`);
  ``"<layer>.weight_scale"`` holds the fp32 scales (int8: ``(out,)``; int4: ``(out, groups)``); every other
  state_dict entry is kept as is (fp32). :func:`funclens.compress.quantize.dequantize_packed` turns it
  back into the returned model's state_dict, bit for bit.

Example:
    >>> from funclens.config import QuantCfg, PruneCfg
    >>> from funclens.models import create_model
    >>> m = create_model("lenet", in_shape=(1, 28, 28), num_classes=10)
    >>> q, info = compress(m, QuantCfg("8-bit"))
    >>> info.setting, info.layers_compressed, round(info.fp32_bytes / info.weight_bytes, 1)
    ('8-bit', 4, 4.0)
    >>> p, info = compress(m, PruneCfg(0.5, scope="global"))
    >>> info.setting, round(info.sparsity, 3)
    ('global 50%', 0.5)
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Collection, TypeVar

import torch
import torch.nn as nn

from funclens.config import CompressCfg, ConfigError, PruneCfg, QuantCfg, StudyCfg  # noqa: F401  (examples)



@dataclass(frozen=True)
class CompressInfo:
    """What a compression did, as the module docstring describes each field; ``None``: not applicable."""

    method: str                      # "quantize" or "prune"
    setting: str                     # "8-bit", "30%", "global 50%"
    loadable: bool                   # whether create_model(...).load_state_dict(returned.state_dict()) works
    layers_compressed: int
    conv_layers_compressed: int
    weight_bytes: int                # bytes at the compressed precision
    layers_total: int = 0            # set by compress(): Conv2d + Linear layers of the model
    fp32_bytes: int = 0              # set by compress(): bytes at fp32
    scheme: str | None = None        # quantization
    group_size: int | None = None    # grouped 4-bit quantization
    amount: float | None = None      # pruning
    scope: str | None = None         # pruning: "layer" or "global"
    sparse_bytes: int | None = None  # pruning: CSR-like size
    sparsity: float | None = None    # pruning: measured fraction of zero weights in the pruned layers
    sparsity_by_layer: dict[str, float] | None = None
    params: int | None = None        # parameters of the model returned, where it has fewer (structured pruning)
    macs: int | None = None          # multiply-accumulates of one forward pass of one image, likewise
    base_params: int | None = None   # the same counts of the model compressed
    base_macs: int | None = None
    latency_ms: float | None = None       # measured: median time of one batch through the compressed model
    fp32_latency_ms: float | None = None  # the same batch through the fp32 model, compiled alike, in the same run
    latency_batch: int | None = None      # images in that batch
    library: str | None = None            # the library that compressed, with its version: "torchao 0.18.0"
    noise_rms_by_layer: dict[str, float] | None = None     # noise floor: measured RMS of the noise added, per layer
    noise_target_by_layer: dict[str, float] | None = None  # its target: scale x the layer's 8-bit error RMS
    packed: dict[str, Any] | None = field(default=None, repr=False, compare=False)   # tensors, not JSON

    def to_json(self) -> dict[str, Any]:
        """Every field but ``packed``, those that do not apply (``None``) left out: what ``metrics.json`` keeps.

        Example:
            >>> CompressInfo("prune", "30%", True, 4, 2, 900, amount=0.3).to_json()["amount"]
            0.3
        """
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "packed" and getattr(self, f.name) is not None}


Method = Callable[[nn.Module, Any, "torch.Tensor | None"], tuple[nn.Module, CompressInfo]]
_T = TypeVar("_T", bound=Method)

_METHODS: dict[type, Method] = {}


def register(cfg_type: type) -> Callable[[_T], _T]:
    """Register ``fn(model_copy, cfg, calibration) -> (model, info)`` as the method for configs of ``cfg_type``.

    ``fn`` receives a private fp32 CPU copy that it may change in place, and the calibration images
    :func:`compress` was given (``None`` when none were). :func:`compress` fills in the fields common to
    every method (``layers_total``, ``fp32_bytes``) of the info it returns.

    Args:
        cfg_type: the config dataclass the method handles.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class NoopCfg:
        ...     pass
        >>> @register(NoopCfg)
        ... def _noop(model, cfg, calibration):
        ...     return model, CompressInfo("noop", "", True, 0, 0, 0)
    """

    def deco(fn: _T) -> _T:
        _METHODS[cfg_type] = fn
        return fn

    return deco


def compress(model: nn.Module, cfg: CompressCfg,
             calibration: torch.Tensor | None = None) -> tuple[nn.Module, CompressInfo]:
    """Compress a deep copy of ``model`` as ``cfg`` says; ``model`` itself is left unchanged.

    Args:
        model: a trained model (any device or float dtype).
        cfg: a compression config (:data:`funclens.config.CompressCfg`).
        calibration: training images ``[N, C, H, W]``, normalized as the model sees them, for the methods
            that calibrate (PT2E, custom compressors) or trace the model (structured pruning, from its first
            image); the others ignore it.

    Returns:
        The compressed model (fp32, CPU) and its :class:`CompressInfo`.

    Example:
        >>> from funclens.models import create_model
        >>> m = create_model("lenet", in_shape=(1, 28, 28), num_classes=10)
        >>> pruned, info = compress(m, PruneCfg(0.3))
        >>> info.setting, info.loadable
        ('30%', True)
    """
    method = next((_METHODS[t] for t in type(cfg).__mro__ if t in _METHODS), None)
    if method is None:
        known = ", ".join(t.__name__ for t in _METHODS)
        raise ConfigError(f"no compression method for {type(cfg).__name__}; known configs: {known}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"compress needs an nn.Module, got {type(model).__name__}")
    layers = weight_layers(model)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Conv2d or Linear layer to compress")
    fp32 = tensor_bytes(model)
    # detach from the caller completely: no shared storage, so in-place edits can't leak back
    # and in the standard layout: a model that trained or inferred channels-last holds 4-D weights whose
    # strides torch's L1 pruning cannot take
    work = copy.deepcopy(model).float().cpu().to(memory_format=torch.contiguous_format)
    out, info = method(work, cfg, calibration)
    return out, dataclasses.replace(info, layers_total=len(layers), fp32_bytes=fp32)


def require_libraries(study: StudyCfg) -> None:
    """Refuse a study whose compressors need a library that is not installed, before any run starts: the
    optional extras (torchao for ``torchao`` and ``pt2e``, Torch-Pruning for ``prune_structured``) are
    otherwise found missing only once the base and the yardstick have trained.

    Args:
        study: the study about to run.

    Example:
        >>> from funclens.config import preset_study
        >>> require_libraries(preset_study("quick"))   # the paper's compressors need nothing more
    """
    if study.torchao:
        torchao.import_torchao()
    if study.pt2e:
        pt2e._torchao()
    if study.prune_structured:
        structured._torch_pruning()


# ---------------------------------------------------------------- helpers shared by the methods

def import_extra(what: str, extra: str, *modules: str) -> ModuleType:
    """Import the modules of an optional extra and return the first, or refuse in one line naming the extra
    when one does not import (not installed, too old for a submodule, or broken).

    Args:
        what: what needs them, the subject of the error: ``"PT2E quantization"``.
        extra: the funclens extra that installs them: ``"torchao"``.
        modules: dotted module names; the first is the one returned.

    Example:
        >>> import_extra("structured pruning", "pruning", "torch_pruning").__name__
        'torch_pruning'
        >>> import_extra("this method", "nothing", "no_such_module")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        funclens.errors.ConfigError: this method needs no_such_module, which does not import here (...): pip ...
    """
    try:
        for name in modules:
            importlib.import_module(name)
    except ImportError as e:
        raise ConfigError(f"{what} needs {modules[0]}, which does not import here ({e}): "
                          f'pip install "funclens[{extra}]"') from None
    return importlib.import_module(modules[0])


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Conv2d and Linear layers of ``model``, in ``named_modules`` order: what every method compresses.

    Args:
        model: any module.

    Example:
        >>> from funclens.models import create_model
        >>> [n for n, _ in weight_layers(create_model("lenet", in_shape=(1, 28, 28), num_classes=10))]
        ['conv1', 'conv2', 'fc1', 'fc2']
    """
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _fp32_size(t: torch.Tensor) -> int:
    # float tensors are counted at fp32 whatever they hold now; integer buffers at their own width
    return t.numel() * (4 if t.is_floating_point() else t.element_size())


def tensor_bytes(model: nn.Module, skip: Collection[str] = ()) -> int:
    """Bytes of all parameters and buffers of ``model`` at fp32 (integer buffers at their own size).

    Args:
        model: any module; shared tensors are counted once.
        skip: qualified tensor names (``"conv1.weight"``) to leave out, e.g. those counted elsewhere.

    Example:
        >>> tensor_bytes(nn.Linear(3, 2))  # (6 weights + 2 biases) * 4 bytes
        32
    """
    named = [*model.named_parameters(), *model.named_buffers()]
    return sum(_fp32_size(t) for n, t in named if n not in skip)


from funclens.compress import custom, noise, prune, pt2e, quantize, structured, torchao  # noqa: E402,F401  (registration side effect)
