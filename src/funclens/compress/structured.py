"""Structured (channel) L1 pruning with Torch-Pruning: whole channels go, so the model really gets smaller.

Every prunable layer loses ``amount`` of its output channels (``global_pruning=False``), those of smallest
group L1 norm (``tp.importance.MagnitudeImportance(p=1)``, Torch-Pruning's default reduction): a channel's
group is its filter, the input slices of the layers that read it and its BatchNorm scale, and the norms of
their weights are averaged. Torch-Pruning's dependency graph removes the whole group, BatchNorm statistics
included, and the channels a residual addition ties together go as one. The classifier's output layer keeps
its outputs (they are the classes). The result has other shapes than ``create_model`` builds, so it is not
loadable (``info.loadable`` is False); its parameters and multiply-accumulates are counted by
``tp.utils.count_ops_and_params`` before and after.

Needs the optional extra ``funclens[pruning]``.

Example:
    >>> from funclens.models import create_model
    >>> m = create_model("lenet", in_shape=(1, 8, 8), num_classes=10)
    >>> small, info = prune_channels(m, StructuredPruneCfg(0.5), torch.zeros(1, 1, 8, 8))
    >>> small.conv1.out_channels, small.conv2.out_channels, small.fc2.out_features
    (16, 32, 10)
"""

from __future__ import annotations

import importlib.metadata

import torch
import torch.nn as nn

from funclens.compress import CompressInfo, import_extra, register, tensor_bytes, weight_layers
from funclens.config import ConfigError, StructuredPruneCfg


def _torch_pruning():
    """The ``torch_pruning`` module, or a one-line error saying how to install it."""
    return import_extra("structured pruning", "pruning", "torch_pruning")


def output_layer(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The Conv2d or Linear layer a forward pass of ``example`` runs last: a classifier's output layer.

    The forward order, not the order of definition: a model may define its head before its body.

    Args:
        model: the classifier (eval mode: the pass must not move BatchNorm statistics).
        example: one batch of its input.

    Example:
        >>> from funclens.models import create_model
        >>> m = create_model("lenet", in_shape=(1, 8, 8), num_classes=10).eval()
        >>> output_layer(m, torch.zeros(1, 1, 8, 8)) is m.fc2
        True
    """
    ran: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: ran.append(mod)) for _, m in weight_layers(model)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    if not ran:
        raise ConfigError("structured pruning found no Conv2d or Linear layer in the model's forward pass")
    return ran[-1]


def _counts(tp, model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(parameters, multiply-accumulates of one image's forward pass), as Torch-Pruning counts them."""
    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(params), int(macs)


@register(StructuredPruneCfg)
def prune_channels(model: nn.Module, cfg: StructuredPruneCfg,
                   calibration: torch.Tensor | None) -> tuple[nn.Module, CompressInfo]:
    """Remove ``cfg.amount`` of every prunable layer's output channels by L1 norm, in place.

    Deterministic: the same weights give the same channels removed, so a fine-tuning run that resumes
    rebuilds the very structure its checkpoint was saved from.

    Args:
        model: an fp32 CPU model, changed in place (put in eval mode).
        cfg: the fraction of channels removed.
        calibration: images ``[N, C, H, W]`` as the model sees them; the first traces the dependency graph
            and sizes the counts (its values do not matter: the L1 norms are the weights').

    Returns:
        The pruned model (the same object) and its :class:`CompressInfo`.

    Example:
        >>> from funclens.models import create_model
        >>> m = create_model("lenet", in_shape=(1, 8, 8), num_classes=10)
        >>> _, info = prune_channels(m, StructuredPruneCfg(0.25), torch.zeros(1, 1, 8, 8))
        >>> m.conv1.out_channels, info.params < info.base_params
        (24, True)
    """
    tp = _torch_pruning()
    if calibration is None or calibration.ndim != 4 or len(calibration) == 0:
        raise ConfigError("structured pruning needs an example input: one image [1, C, H, W] as calibration")
    example = calibration[:1].float().cpu()
    model.eval()  # tracing runs forward passes, which in training mode would move BatchNorm statistics
    before = {n: tuple(m.weight.shape) for n, m in weight_layers(model)}
    base_params, base_macs = _counts(tp, model, example)
    head = output_layer(model, example)
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=cfg.amount, global_pruning=False, ignored_layers=[head])
    pruner.step()
    setting = f"channels {round(cfg.amount * 100, 4):g}%"
    _check_all_pruned(model, head, before, setting)
    params, macs = _counts(tp, model, example)
    changed = [(n, m) for n, m in weight_layers(model) if tuple(m.weight.shape) != before.get(n)]
    return model, CompressInfo(
        "prune", setting, loadable=False,  # other shapes
        layers_compressed=len(changed), conv_layers_compressed=sum(isinstance(m, nn.Conv2d) for _, m in changed),
        weight_bytes=tensor_bytes(model),  # fp32, of the smaller model: the channels are gone, not zeroed
        amount=cfg.amount, scope="channels", params=params, macs=macs, base_params=base_params,
        base_macs=base_macs, library=f"torch-pruning {_version(tp)}")


def _check_all_pruned(model: nn.Module, head: nn.Module, before: dict[str, tuple[int, ...]], setting: str) -> None:
    """Refuse a pruning that left a layer of several channels whole: Torch-Pruning skips, without a word, a layer
    that would lose every channel (a 32-channel layer past 31/32), and the row would then name a pruning the
    model did not get (at 99.5% of LeNet's channels, the unpruned model itself)."""
    layers = [(n, m) for n, m in weight_layers(model) if m is not head and before[n][0] > 1]
    whole = [n for n, m in layers if m.weight.shape[0] == before[n][0]]
    if whole:
        raise ConfigError(f"structured pruning {setting} left {len(whole)} of {len(layers)} layers whole "
                          f"({', '.join(whole[:5])}{', ...' if len(whole) > 5 else ''}): Torch-Pruning keeps a layer "
                          "that would lose every channel, so the model is not pruned as the setting says; "
                          "choose a smaller amount")


def _version(tp) -> str:
    try:
        return importlib.metadata.version("torch-pruning")  # the installed release; tp.__version__ lags it
    except importlib.metadata.PackageNotFoundError:
        return str(tp.__version__)

