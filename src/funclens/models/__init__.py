"""Model registry: constructors registered by decorator, built by name.

Example:
    >>> from funclens.models import create_model
    >>> m = create_model("lenet", in_shape=(1, 28, 28), num_classes=10)
    >>> sum(p.numel() for p in m.parameters() if p.requires_grad)
    225034
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from funclens.errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn(in_shape, num_classes) -> nn.Module`` under its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, *, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build a registered model for inputs of shape ``(C, H, W)`` and ``num_classes`` outputs.

    Args:
        name: a name from :func:`list_models`.
        in_shape: channels, height, width of one input image.
        num_classes: number of logits.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown arch {name!r}; known: {', '.join(list_models())}")
    return _REGISTRY[name](in_shape=tuple(in_shape), num_classes=num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


from funclens.models import lenet, mobilenet, resnet  # noqa: E402,F401  (registration side effect)
