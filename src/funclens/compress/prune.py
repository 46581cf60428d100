"""Post-hoc L1 (magnitude) unstructured pruning of every Conv2d and Linear weight, no fine-tuning.

Scope ``layer`` removes ``amount`` of each layer's weights with
``torch.nn.utils.prune.l1_unstructured`` (``round(amount * numel)`` smallest |w| per layer); scope
``global`` uses ``prune.global_unstructured`` with ``L1Unstructured``: one |w| threshold over all layers
together, so layers prune unequally. ``prune.remove`` then makes it permanent: the zeros sit in
``weight`` and no ``weight_orig`` / ``weight_mask`` is left in the state_dict. Biases are not pruned.
With ``last=False`` the last of those layers (the classifier) is left whole, and a global threshold is
drawn over the others only.

Example:
    >>> from funclens.models import create_model
    >>> m = create_model("lenet", in_shape=(1, 28, 28), num_classes=10)
    >>> by_layer = prune_l1_(m, PruneCfg(0.3))
    >>> round(by_layer["conv1"], 2), sorted(m.conv1.state_dict())
    (0.3, ['bias', 'weight'])
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

from funclens.compress import CompressInfo, register, tensor_bytes, weight_layers
from funclens.config import PruneCfg
from funclens.errors import ConfigError


def prune_l1_(model: nn.Module, cfg: PruneCfg) -> dict[str, float]:
    """Prune every Conv2d and Linear weight of ``model`` in place by L1 magnitude, permanently.

    Args:
        model: changed in place.
        cfg: ``amount`` (fraction of weights zeroed) and ``scope`` (``layer`` or ``global``).

    Returns:
        Layer name -> measured fraction of zero weights after pruning.

    Example:
        >>> m = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
        >>> prune_l1_(m, PruneCfg(0.5))
        {'0': 0.5, '2': 0.5}
        >>> prune_l1_(nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2)), PruneCfg(0.5, last=False))
        {'0': 0.5}
    """
    layers = _pruned_layers(model, cfg)
    # remember the parameter order: prune.remove re-registers `weight` after `bias`, and a state_dict
    # in the parent's key order diffs and loads like the parent's
    orders = {name: list(layer._parameters) for name, layer in layers}
    if cfg.scope == "layer":
        for _, layer in layers:
            tprune.l1_unstructured(layer, "weight", amount=cfg.amount)
    else:
        tprune.global_unstructured([(layer, "weight") for _, layer in layers],
                                   pruning_method=tprune.L1Unstructured, amount=cfg.amount)
    for name, layer in layers:
        tprune.remove(layer, "weight")
        for key in orders[name]:
            layer._parameters[key] = layer._parameters.pop(key)
    return {name: float((layer.weight == 0).float().mean()) for name, layer in layers}


def _pruned_layers(model: nn.Module, cfg: PruneCfg) -> list[tuple[str, nn.Module]]:
    """The Conv2d and Linear layers ``cfg`` prunes: all, or all but the last one (in module order)."""
    layers = weight_layers(model)
    if not cfg.last and len(layers) < 2:
        raise ConfigError("pruning with the last layer kept needs a model of two or more Conv2d/Linear layers")
    return layers if cfg.last else layers[:-1]


def csr_bytes(w: torch.Tensor) -> int:
    """Bytes to store ``w`` CSR-like over ``(out, in * kh * kw)``: fp32 nonzero values (4 bytes each),
    int32 column indices (4 bytes each) and ``out + 1`` int32 row pointers.

    Args:
        w: a weight with output channels along dim 0.

    Example:
        >>> csr_bytes(torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]]))  # 2 * (4 + 4) + 4 * 4
        32
    """
    return int(torch.count_nonzero(w)) * (4 + 4) + (w.shape[0] + 1) * 4


def _setting(cfg: PruneCfg) -> str:
    pct = f"{round(cfg.amount * 100, 4):g}%"  # 0.3 * 100 = 30.000000000000004
    return pct if cfg.scope == "layer" else f"global {pct}"


@register(PruneCfg)
def _prune(model: nn.Module, cfg: PruneCfg,
           calibration: torch.Tensor | None = None) -> tuple[nn.Module, CompressInfo]:
    """The :func:`funclens.compress.compress` method for :class:`PruneCfg` (``model`` is a private copy)."""
    layers = _pruned_layers(model, cfg)
    by_layer = prune_l1_(model, cfg)
    zeros = sum(int((layer.weight == 0).sum()) for _, layer in layers)
    total = sum(layer.weight.numel() for _, layer in layers)
    weight_keys = {f"{n}.weight" for n, _ in layers}
    return model, CompressInfo(
        "prune", _setting(cfg), loadable=True, layers_compressed=len(layers),
        conv_layers_compressed=sum(isinstance(m, nn.Conv2d) for _, m in layers),
        weight_bytes=tensor_bytes(model),  # dense fp32: the zeros are still stored
        amount=cfg.amount, scope=cfg.scope,
        sparse_bytes=tensor_bytes(model, skip=weight_keys) + sum(csr_bytes(m.weight) for _, m in layers),
        sparsity=zeros / total, sparsity_by_layer=by_layer)
