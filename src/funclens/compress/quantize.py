"""Post-hoc weight quantization of every Conv2d and Linear layer, no calibration data.

Schemes (``QuantCfg.scheme``):

- ``16-bit``: weights rounded to fp16 and back to fp32 (``w.half().float()``).
- ``bf16``: likewise through bfloat16.
- ``8-bit``: symmetric int8 per output channel: ``scale = max|w| / 127`` over the channel,
  ``q = clamp(round(w / scale), -127, 127)``, ``w' = q * scale``.
- ``4-bit``: symmetric int4 in [-7, 7], one scale per output channel, or per group of
  ``group_size`` consecutive weights along the channel's flattened ``in_ch * kh * kw`` weights
  (the last group may be shorter; its scale comes from its own weights).
- ``dynamic-int8``: torch's ``quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)``: int8 Linear
  weights, activations quantized on the fly; it quantizes no convolution.

Only weights are quantized: biases stay fp32, because they are few (one per output channel) and
they add to an fp32 accumulator anyway; BatchNorm statistics stay fp32 too. Quantized weights are
stored back dequantized so the model computes in fp32 on CPU (fp16 arithmetic there is 3-17x slower).

Example:
    >>> from funclens.models import create_model
    >>> m = create_model("lenet", in_shape=(1, 28, 28), num_classes=10)
    >>> packed = quantize_weights_(m, QuantCfg("8-bit"))
    >>> packed["conv1.weight"].dtype, packed["conv1.weight_scale"].shape
    (torch.int8, torch.Size([32]))
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from funclens.compress import CompressInfo, register, tensor_bytes, weight_layers
from funclens.config import ConfigError, QuantCfg

INT8_MAX = 127  # symmetric: -128 is never used, so +-max|w| map to +-127 exactly
INT4_MAX = 7


def _per_channel(scale: torch.Tensor, ndim: int) -> torch.Tensor:
    """Shape a per-output-channel vector to broadcast against a weight of ``ndim`` dimensions."""
    return scale.view(-1, *([1] * (ndim - 1)))


def _safe_scale(amax: torch.Tensor, qmax: int) -> torch.Tensor:
    # an all-zero channel/group has amax 0: scale 1 keeps q = 0 and avoids 0/0
    return torch.where(amax > 0, amax / qmax, torch.ones_like(amax))


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 quantization.

    Args:
        w: a weight with output channels along dim 0 (Linear ``(out, in)``, Conv2d ``(out, in, kh, kw)``).

    Returns:
        ``q`` (int8, ``w``'s shape, in [-127, 127]) and ``scale`` (fp32, ``(out,)``).

    Example:
        >>> q, s = quantize_int8(torch.tensor([[1.0, -0.5], [0.0, 0.0]]))
        >>> q.tolist(), s.tolist()
        ([[127, -64], [0, 0]], [0.007874015718698502, 1.0])
    """
    w = w.detach().float()
    amax = w.reshape(w.shape[0], -1).abs().amax(dim=1)
    scale = _safe_scale(amax, INT8_MAX)
    q = torch.clamp(torch.round(w / _per_channel(scale, w.dim())), -INT8_MAX, INT8_MAX)
    return q.to(torch.int8), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q * scale`` in fp32, one scale per output channel (dim 0).

    Args:
        q: int8 values from :func:`quantize_int8`.
        scale: fp32 scales, ``(out,)``.

    Example:
        >>> dequantize_int8(torch.tensor([[127, -64]], dtype=torch.int8), torch.tensor([0.5])).tolist()
        [[63.5, -32.0]]
    """
    return q.float() * _per_channel(scale.float(), q.dim())


def _group(length: int, group_size: int) -> int:
    """Weights per scale along a flattened channel of ``length`` weights (0 or >= length: the whole channel)."""
    return length if group_size <= 0 or group_size >= length else group_size


def quantize_int4(w: torch.Tensor, group_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 quantization per output channel or per group of ``group_size`` input weights.

    Each output channel's weights are flattened (``in_ch * kh * kw``) and cut into consecutive groups
    of ``group_size``; a last, shorter group gets its own scale from its own weights.

    Args:
        w: a weight with output channels along dim 0.
        group_size: weights per scale; 0 means one scale per output channel.

    Returns:
        ``q`` (int8 holding values in [-7, 7], ``w``'s shape) and ``scale`` (fp32, ``(out, groups)``).

    Example:
        >>> q, s = quantize_int4(torch.tensor([[7.0, 1.0, 0.5, -0.25, 0.1]]), group_size=2)
        >>> q.tolist(), s.tolist()
        ([[7, 1, 7, -3, 7]], [[1.0, 0.0714285746216774, 0.014285714365541935]])
    """
    if group_size < 0:
        raise ConfigError(f"group_size must be >= 0, got {group_size}")
    w = w.detach().float()
    out, length = w.shape[0], w[0].numel()
    g = _group(length, group_size)
    n = math.ceil(length / g)
    # zero padding fills the last group without changing its max|w|; it is cut off again below
    grouped = F.pad(w.reshape(out, length), (0, n * g - length)).view(out, n, g)
    scale = _safe_scale(grouped.abs().amax(dim=2), INT4_MAX)
    q = torch.clamp(torch.round(grouped / scale.unsqueeze(2)), -INT4_MAX, INT4_MAX)
    q = q.reshape(out, n * g)[:, :length].reshape(w.shape)
    return q.to(torch.int8), scale


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, group_size: int = 0) -> torch.Tensor:
    """``q * scale`` in fp32, each scale covering its group (see :func:`quantize_int4`).

    Args:
        q: int4 values (any integer dtype), the weight's shape.
        scale: fp32 scales, ``(out, groups)``.
        group_size: as given to :func:`quantize_int4`.

    Example:
        >>> q, s = quantize_int4(torch.tensor([[7.0, 1.0, 0.5]]), group_size=2)
        >>> dequantize_int4(q, s, group_size=2).tolist()
        [[7.0, 1.0, 0.5]]
    """
    out, length = q.shape[0], q[0].numel()
    g = _group(length, group_size)
    if scale.shape != (out, math.ceil(length / g)):
        raise ConfigError(f"scale shape {tuple(scale.shape)} does not fit weight {tuple(q.shape)} "
                          f"with group_size {group_size}")
    per_weight = scale.float().repeat_interleave(g, dim=1)[:, :length]
    return (q.reshape(out, length).float() * per_weight).reshape(q.shape)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int4 values two per byte: 1-D uint8 of ``ceil(numel / 2)`` bytes.

    Values are stored offset by 8 (so -7..7 -> 1..15); element ``2i`` goes in the low nibble of
    byte ``i`` and element ``2i + 1`` in the high nibble (an odd count is padded with a zero value).

    Args:
        q: integer tensor with values in [-8, 7].

    Example:
        >>> pack_int4(torch.tensor([-7, 0, 7])).tolist()  # (1 | 8 << 4), (15 | 8 << 4)
        [129, 143]
    """
    u = (q.reshape(-1).to(torch.int16) + 8).to(torch.uint8)
    if u.numel() % 2:
        u = torch.cat([u, u.new_full((1,), 8)])
    pairs = u.view(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack_int4(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: int8 values of the given shape.

    Args:
        packed: 1-D uint8 from :func:`pack_int4`.
        shape: shape of the original values.

    Example:
        >>> unpack_int4(pack_int4(torch.tensor([-7, 0, 7])), (3,)).tolist()
        [-7, 0, 7]
    """
    numel = math.prod(shape)
    nibbles = torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)[:numel]
    return (nibbles.to(torch.int16) - 8).to(torch.int8).reshape(shape)


def _packed_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def quantize_weights_(model: nn.Module, cfg: QuantCfg) -> dict[str, torch.Tensor]:
    """Quantize every Conv2d and Linear weight of ``model`` in place (biases stay fp32).

    The weights are replaced by their dequantized fp32 values; the real storage format comes back
    as the ``packed`` dict described in :mod:`funclens.compress`.

    Args:
        model: an fp32 model; changed in place.
        cfg: any scheme but ``dynamic-int8`` (which swaps modules; see :func:`quantize_dynamic_int8_`).

    Returns:
        The packed state: ``"<layer>.weight"`` in the compressed dtype, ``"<layer>.weight_scale"``
        for int8/int4, every other state_dict entry as is.

    Example:
        >>> from funclens.models import create_model
        >>> m = create_model("lenet", in_shape=(1, 28, 28), num_classes=10)
        >>> packed = quantize_weights_(m, QuantCfg("16-bit"))
        >>> packed["fc1.weight"].dtype, m.fc1.weight.dtype
        (torch.float16, torch.float32)
    """
    if cfg.scheme == "dynamic-int8":
        raise ConfigError("dynamic-int8 swaps modules; use quantize_dynamic_int8_ or compress")
    stored: dict[str, list[torch.Tensor]] = {}  # weight key -> [values, (scale)]
    for name, layer in weight_layers(model):
        w = layer.weight.detach()
        if cfg.scheme in ("16-bit", "bf16"):
            low = w.to(torch.float16 if cfg.scheme == "16-bit" else torch.bfloat16)
            new, parts = low.float(), [low]
        elif cfg.scheme == "8-bit":
            q, scale = quantize_int8(w)
            new, parts = dequantize_int8(q, scale), [q, scale]
        elif cfg.scheme == "4-bit":
            q, scale = quantize_int4(w, cfg.group_size)
            new, parts = dequantize_int4(q, scale, cfg.group_size), [pack_int4(q), scale]
        else:
            raise ConfigError(f"unknown quantization scheme {cfg.scheme!r}")
        with torch.no_grad():
            layer.weight.copy_(new)  # in place: keeps the Parameter object, so optimisers/hooks still see it
        stored[f"{name}.weight"] = parts
    packed: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        if key in stored:
            packed[key] = stored[key][0]
            if len(stored[key]) > 1:
                packed[key + "_scale"] = stored[key][1]
        else:
            packed[key] = t.detach().clone()  # own storage: later edits to the model can't change it
    return packed


def dequantize_packed(packed: dict[str, torch.Tensor], cfg: QuantCfg,
                      like: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turn a ``packed`` dict back into an fp32 state_dict (bit-identical to the compressed model's).

    Args:
        packed: ``info.packed`` from :func:`funclens.compress.compress`.
        cfg: the config it was made with (4-bit needs its ``group_size``).
        like: a model of the same architecture (or its state_dict): gives the weight shapes int4 lost.

    Example:
        >>> from funclens.compress import compress
        >>> from funclens.models import create_model
        >>> m = create_model("lenet", in_shape=(1, 28, 28), num_classes=10)
        >>> q, info = compress(m, QuantCfg("4-bit"))
        >>> sd = dequantize_packed(info.packed, QuantCfg("4-bit"), m)
        >>> all(torch.equal(sd[k], v) for k, v in q.state_dict().items())
        True
    """
    shapes = {k: v.shape for k, v in (like.state_dict() if isinstance(like, nn.Module) else like).items()}
    out: dict[str, torch.Tensor] = {}
    for key, t in packed.items():
        if key.endswith("_scale") and key[: -len("_scale")] in packed:
            continue
        scale = packed.get(key + "_scale")
        if scale is None:
            out[key] = t.float() if t.is_floating_point() else t.clone()
        elif t.dtype == torch.int8:
            out[key] = dequantize_int8(t, scale)
        elif t.dtype == torch.uint8:
            if key not in shapes:
                raise ConfigError(f"{key}: int4 values need the weight's shape, and `like` has no such key")
            out[key] = dequantize_int4(unpack_int4(t, shapes[key]), scale, cfg.group_size)
        else:
            raise ConfigError(f"{key}: cannot dequantize {t.dtype} with a scale")
    return out


def quantize_dynamic_int8_(model: nn.Module) -> nn.Module:
    """Swap every ``nn.Linear`` for torch's dynamically quantized int8 Linear (convolutions stay fp32).

    Changes ``model``'s children in place and returns it (a bare ``nn.Linear`` root cannot be swapped
    in place, so use the return value).

    Args:
        model: an fp32 CPU model.

    Example:
        >>> m = quantize_dynamic_int8_(nn.Sequential(nn.Linear(4, 2)))
        >>> type(m[0]).__name__
        'Linear'
    """
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, but it is the exact method
        # the paper's setting names; the warnings would repeat on every run
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def _dynamic_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    dyn = torch.ao.nn.quantized.dynamic.Linear
    return [(n, m) for n, m in model.named_modules() if isinstance(m, dyn)]


def _dynamic_bytes(model: nn.Module) -> int:
    """Bytes of a dynamically quantized model: int8 Linear weights + fp32 scale and int32 zero point
    per quantizer (per tensor, or per channel if torch chose that); everything else at fp32."""
    total = tensor_bytes(model)  # the swapped Linears hold no parameters or buffers of their own
    for _, layer in _dynamic_layers(model):
        w = layer.weight()
        per_channel = w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
        n_scales = w.q_per_channel_scales().numel() if per_channel else 1
        total += w.numel() * w.element_size() + n_scales * (4 + 4)
        b = layer.bias()
        total += 0 if b is None else b.numel() * 4
    return total


def _setting(cfg: QuantCfg) -> str:
    return f"{cfg.scheme} (group {cfg.group_size})" if cfg.group_size else cfg.scheme


@register(QuantCfg)
def _quantize(model: nn.Module, cfg: QuantCfg,
              calibration: torch.Tensor | None = None) -> tuple[nn.Module, CompressInfo]:
    """The :func:`funclens.compress.compress` method for :class:`QuantCfg` (``model`` is a private copy)."""
    if cfg.scheme == "dynamic-int8":
        model = quantize_dynamic_int8_(model)
        return model, CompressInfo("quantize", _setting(cfg), loadable=False,
                                   layers_compressed=len(_dynamic_layers(model)), conv_layers_compressed=0,
                                   weight_bytes=_dynamic_bytes(model), scheme=cfg.scheme)
    layers = weight_layers(model)
    packed = quantize_weights_(model, cfg)
    weight_keys = [f"{n}.weight" for n, _ in layers]
    compressed = [packed[k] for k in weight_keys] + [packed[k + "_scale"] for k in weight_keys
                                                     if k + "_scale" in packed]
    return model, CompressInfo("quantize", _setting(cfg), loadable=True, layers_compressed=len(layers),
                               conv_layers_compressed=sum(isinstance(m, nn.Conv2d) for _, m in layers),
                               weight_bytes=tensor_bytes(model, skip=set(weight_keys)) + _packed_bytes(compressed),
                               scheme=cfg.scheme, group_size=cfg.group_size or None, packed=packed)
