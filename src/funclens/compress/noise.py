"""The noise floor: Gaussian noise on every Conv2d and Linear weight, scaled to the error of 8-bit rounding.

Per layer, ``sigma = scale * RMS(dequantize(quantize_int8(w)) - w)``: the RMS error funclens's own 8-bit
quantization (symmetric, per output channel, :func:`funclens.compress.quantize.quantize_int8`) makes in that
layer. At ``scale`` 1 the weights move as far as 8-bit rounding moves them, but in a random direction instead
of to the nearest grid point; at 2x, 4x, 8x, further along. A model whose function moves less than 1x noise
moves it no more than rounding would; one that moves it as far as 8x noise has left the base's function behind.

The noise is drawn from one generator seeded with ``cfg.seed``, layer by layer in ``named_modules`` order, so a
run is reproduced exactly and every scale of one seed points the same way. Biases and BatchNorm stay as they
are, as 8-bit quantization leaves them.

Example:
    >>> from funclens.compress import compress
    >>> from funclens.config import NoiseCfg
    >>> from funclens.models import create_model
    >>> m = create_model("lenet", in_shape=(1, 28, 28), num_classes=10)
    >>> noisy, info = compress(m, NoiseCfg(scale=2.0))
    >>> info.setting, info.layers_compressed
    ('2x', 4)
    >>> all(abs(info.noise_rms_by_layer[k] / info.noise_target_by_layer[k] - 1) < 0.1 for k in info.noise_rms_by_layer)
    True
"""

from __future__ import annotations

import torch
import torch.nn as nn

from funclens.compress import CompressInfo, register, tensor_bytes, weight_layers
from funclens.compress.quantize import dequantize_int8, quantize_int8
from funclens.config import NoiseCfg


def int8_error_rms(w: torch.Tensor) -> float:
    """The RMS of the error 8-bit per-channel quantization makes in ``w``, in ``w``'s units.

    Args:
        w: a Conv2d or Linear weight, output channels along dim 0.

    Example:
        >>> # step 1/127: 1.0 is exact, 0.5 (63.5 steps) is off by half a step, so RMS = 0.5 / 127 / sqrt(2)
        >>> round(int8_error_rms(torch.tensor([[1.0, 0.5]])) * 127 * 2 ** 0.5, 4)
        0.5
    """
    w = w.detach().float()
    return float((dequantize_int8(*quantize_int8(w)) - w).pow(2).mean().sqrt())


@register(NoiseCfg)
def _add_noise(model: nn.Module, cfg: NoiseCfg, calibration: torch.Tensor | None) -> tuple[nn.Module, CompressInfo]:
    gen = torch.Generator().manual_seed(cfg.seed)
    target: dict[str, float] = {}
    measured: dict[str, float] = {}
    convs = 0
    with torch.no_grad():
        for name, layer in weight_layers(model):
            w = layer.weight
            target[name] = cfg.scale * int8_error_rms(w)
            noise = torch.randn(w.shape, generator=gen, dtype=torch.float32) * target[name]
            w.add_(noise)
            measured[name] = float(noise.pow(2).mean().sqrt())
            convs += isinstance(layer, nn.Conv2d)
    return model, CompressInfo("noise", f"{cfg.scale:g}x", True, len(target), convs, tensor_bytes(model),
                               noise_rms_by_layer=measured, noise_target_by_layer=target)
