"""torchao's ``quantize_`` as a study setting (the optional extra ``funclens[torchao]``).

Each :class:`~funclens.config.TorchaoCfg` scheme is one of torchao's own configs, applied with its
``quantize_``; funclens adds nothing to the arithmetic, so a row measures what torchao's users deploy:

- ``int8-weight-only``: ``Int8WeightOnlyConfig``: int8 weights, symmetric, one scale per output channel
  (torchao's ``PerRow``); activations and arithmetic stay fp32.
- ``int4-weight-only``: int4 weights, asymmetric (0..15 with a zero point), one scale and zero per group of
  ``group_size`` input weights (0: torchao's default, 128). On the CPU torchao 0.18's
  ``Int4WeightOnlyConfig`` has no packing format that runs (``plain`` and ``preshuffled`` need the CUDA
  ``mslk`` kernels, ``plain_int32`` XPU or NPU, ``tile_packed_to_4d`` a CUDA GPU); its CPU format,
  ``Int4OpaqueTensor`` over the ``_weight_int4pack_mm_for_cpu`` kernel, is
  ``torchao.prototype.quantization.int4.PrototypeInt4WeightOnlyConfig``, with the same quantization
  (tinygemm's scales and zeros), and that is what runs here. Its kernel takes group sizes 32, 64 and 128
  only, ``in_features`` a multiple of the group and ``out_features`` a multiple of 16: a Linear layer of
  another shape is left fp32 and not counted in ``layers_compressed`` (LeNet's 10-class output layer is one).
- ``int8-dynamic``: ``Int8DynamicActivationInt8WeightConfig``: int8 weights per output channel, and each
  row of activations quantized to int8 on the fly (symmetric), the matrix product in integers.

torchao's ``quantize_`` covers ``nn.Linear`` only: convolutions stay fp32. ``conv_layers_compressed`` is 0,
and ``layers_compressed`` (Linear layers quantized) against ``layers_total`` (Conv2d + Linear) shows how
much of a convolutional network a setting touched at all.

All three take fp32 activations on the CPU and return fp32 outputs (the weight's tensor subclass reports
the fp32 dtype it was made from), so the model needs no wrapper, and ``eval()`` and the channels-last
layout (which leaves 2-D weights alone) work on it as on any model.

``weight_bytes`` counts what the quantized weights really hold: the inner tensors of torchao's weight
subclasses at their own dtype (int8: ``N * K`` int8 values + ``N`` fp32 scales + ``N`` int8 zero points,
stored though the scheme is symmetric; int4: ``N * K / 2`` bytes, two values per byte, + ``K / group * N``
fp32 scale-and-zero pairs), every other tensor at fp32. The returned model's weights are torchao tensor
subclasses, not a state_dict ``create_model(...)`` loads, so ``loadable`` is False and only its predictions
are stored, as for ``dynamic-int8``.

Example:
    >>> from funclens.compress import compress
    >>> from funclens.config import TorchaoCfg
    >>> from funclens.models import create_model
    >>> m = create_model("lenet", in_shape=(1, 8, 8), num_classes=10)
    >>> q, info = compress(m, TorchaoCfg("int8-weight-only"))
    >>> info.setting, info.layers_compressed, info.layers_total, info.conv_layers_compressed
    ('torchao int8-weight-only', 2, 4, 0)
"""

from __future__ import annotations

import contextlib
import logging
from types import ModuleType
from typing import Any, Iterator

import torch
import torch.nn as nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from funclens.compress import CompressInfo, import_extra, register, tensor_bytes, weight_layers
from funclens.config import ConfigError, TorchaoCfg

INT4_CPU_GROUPS = (32, 64, 128)  # Int4OpaqueTensor.from_hp asserts these group sizes, weights per scale
INT4_CPU_OUT_MULTIPLE = 16  # _convert_weight_to_int4pack_for_cpu: "expect N to be dividable by 16"


@contextlib.contextmanager
def _quiet_pytree_log() -> Iterator[None]:
    # importing torchao registers an Enum with torch's pytree, which logs a deprecation warning on
    # every process that imports it: noise in every study run's output, nothing a user can act on
    log = logging.getLogger("torch.utils._pytree")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def import_torchao(what: str = "the torchao settings", *submodules: str) -> ModuleType:
    """torchao, with the quantization configs this module uses and ``submodules``, or a one-line error
    naming the extra: PT2E imports its entry points through this too.

    Args:
        what: what needs torchao, for the error.
        submodules: more of torchao's modules that must import.

    Raises:
        ConfigError: torchao is not installed, or does not import here (too old, or broken).

    Example:
        >>> import_torchao().__name__
        'torchao'
    """
    with _quiet_pytree_log():
        return import_extra(what, "torchao", "torchao", "torchao.quantization",
                            "torchao.prototype.quantization.int4",  # the CPU int4 format
                            *submodules)


def int4_group_size(cfg: TorchaoCfg) -> int:
    """The group size ``int4-weight-only`` quantizes with: the config's, or torchao's default for 0.

    Args:
        cfg: an ``int4-weight-only`` config.

    Raises:
        ConfigError: a group size torchao's CPU int4 kernel does not take.

    Example:
        >>> int4_group_size(TorchaoCfg("int4-weight-only")), int4_group_size(TorchaoCfg("int4-weight-only", 32))
        (128, 32)
    """
    if cfg.group_size == 0:
        import_torchao()
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
        return PrototypeInt4WeightOnlyConfig().group_size
    if cfg.group_size not in INT4_CPU_GROUPS:
        raise ConfigError(f"torchao int4-weight-only on the CPU takes group_size 0 (its default) or "
                          f"{', '.join(map(str, INT4_CPU_GROUPS))}, got {cfg.group_size}")
    return cfg.group_size


def takes(layer: nn.Module, cfg: TorchaoCfg) -> bool:
    """Whether ``cfg``'s scheme quantizes ``layer``: an ``nn.Linear``, and for int4 one of a shape its CPU
    kernel packs (``in_features`` a multiple of the group, ``out_features`` a multiple of 16).

    Args:
        layer: any module.
        cfg: the torchao config.

    Example:
        >>> cfg = TorchaoCfg("int4-weight-only")
        >>> takes(nn.Linear(256, 128), cfg), takes(nn.Linear(128, 10), cfg), takes(nn.Conv2d(1, 16, 3), cfg)
        (True, False, False)
    """
    # quantize_'s own filter: torch keeps NonDynamicallyQuantizableLinear (attention's out_proj) in fp32
    if not isinstance(layer, nn.Linear) or isinstance(layer, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return False
    if cfg.scheme != "int4-weight-only":
        return True
    return layer.in_features % int4_group_size(cfg) == 0 and layer.out_features % INT4_CPU_OUT_MULTIPLE == 0


def _ao_config(cfg: TorchaoCfg) -> Any:
    """torchao's config object for ``cfg``."""
    import_torchao()
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    # set_inductor_config=False: torchao would otherwise change torch's process-wide inductor settings,
    # and a study process also compiles the fp32 and PT2E models whose latency it compares
    if cfg.scheme == "int8-weight-only":
        return Int8WeightOnlyConfig(set_inductor_config=False)
    if cfg.scheme == "int8-dynamic":
        return Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    return PrototypeInt4WeightOnlyConfig(group_size=int4_group_size(cfg), set_inductor_config=False)


def quantize_torchao_(model: nn.Module, cfg: TorchaoCfg) -> list[str]:
    """Quantize ``model``'s Linear layers in place with torchao's ``quantize_`` (see the module docstring).

    Args:
        model: an fp32 CPU model; its Linear weights become torchao tensor subclasses.
        cfg: the scheme (and int4 group size).

    Returns:
        The names of the layers quantized, in ``named_modules`` order; the other layers stay fp32.

    Raises:
        ConfigError: torchao is missing, the int4 group size is not one its CPU kernel takes, or no layer of
            ``model`` is one the scheme takes (a row of an unchanged model would read as a perfect compressor).

    Example:
        >>> m = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
        >>> quantize_torchao_(m, TorchaoCfg("int4-weight-only"))
        ['0']
        >>> type(m[0].weight).__name__, type(m[2].weight).__name__
        ('Int4OpaqueTensor', 'Parameter')
    """
    ao_cfg = _ao_config(cfg)
    from torchao.quantization import quantize_

    wanted = {n for n, m in model.named_modules() if takes(m, cfg)}
    if not wanted:
        shapes = "" if cfg.scheme != "int4-weight-only" else (
            f" with in_features a multiple of {int4_group_size(cfg)} and out_features of {INT4_CPU_OUT_MULTIPLE}")
        raise ConfigError(f"torchao {cfg.scheme} quantizes nn.Linear layers{shapes} only, and "
                          f"{type(model).__name__} has none")
    quantize_(model, ao_cfg, filter_fn=lambda m, name: name in wanted)
    done = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _is_subclass(m.weight)]
    if set(done) != wanted:
        # torchao skips a layer silently (logging at INFO) when it can't take its shape: say it, since the
        # report's layer count would otherwise be wrong
        raise RuntimeError(f"torchao quantized {sorted(done)}, funclens expected {sorted(wanted)}")
    return done


def _is_subclass(t: torch.Tensor) -> bool:
    # an nn.Parameter wrapping a tensor subclass is itself of the subclass's type (Parameter's __new__)
    return is_traceable_wrapper_subclass(t)


def stored_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor really holds: a plain tensor's elements at its dtype, a tensor subclass's inner
    tensors (values, scales, zero points), each counted the same way.

    Args:
        t: any tensor.

    Example:
        >>> m = nn.Linear(256, 128)
        >>> _ = quantize_torchao_(m, TorchaoCfg("int8-weight-only"))
        >>> stored_bytes(m.weight)  # 128 * 256 int8 values + 128 fp32 scales + 128 int8 zero points
        33408
    """
    if not _is_subclass(t):
        return t.numel() * t.element_size()
    names, _ = t.__tensor_flatten__()
    return sum(stored_bytes(getattr(t, n)) for n in names)


def _setting(cfg: TorchaoCfg) -> str:
    return f"torchao {cfg.scheme}" + (f" (group {cfg.group_size})" if cfg.group_size else "")


@register(TorchaoCfg)
def _torchao(model: nn.Module, cfg: TorchaoCfg,
             calibration: torch.Tensor | None = None) -> tuple[nn.Module, CompressInfo]:
    """The :func:`funclens.compress.compress` method for :class:`TorchaoCfg` (``model`` is a private copy)."""
    torchao = import_torchao()
    names = quantize_torchao_(model, cfg)
    layers = dict(weight_layers(model))
    weights = {f"{n}.weight" if n else "weight": layers[n].weight for n in names}   # "": the model is a Linear
    size = tensor_bytes(model, skip=set(weights)) + sum(stored_bytes(w) for w in weights.values())
    group = int4_group_size(cfg) if cfg.scheme == "int4-weight-only" else None
    return model, CompressInfo("quantize", _setting(cfg), loadable=False, layers_compressed=len(names),
                               conv_layers_compressed=0, weight_bytes=size, scheme=cfg.scheme,
                               group_size=group, library=f"torchao {torchao.__version__}")
