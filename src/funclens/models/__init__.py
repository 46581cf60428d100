"""Model registry: constructors registered by decorator, built by name.

Besides a registered name, an architecture may be a user's factory, ``"package.module:function"`` (called
as ``function(in_shape, num_classes)``, imported by that name), or a timm architecture, ``"timm:NAME"``
(the optional extra ``funclens[timm]``). Only the form of such a name is checked when a config is read
(:func:`funclens.config.check_arch_form`); the module is imported when a model is built, or when a study
checks its architecture before it starts (:func:`check_arch`), never when a stored study is reported.

Example:
    >>> from funclens.models import create_model
    >>> m = create_model("lenet", in_shape=(1, 28, 28), num_classes=10)
    >>> sum(p.numel() for p in m.parameters() if p.requires_grad)
    225034
    >>> create_model("builtins:slice", in_shape=(1, 2, 2), num_classes=4)  # a factory of no model
    Traceback (most recent call last):
    funclens.errors.ConfigError: arch 'builtins:slice': slice((1, 2, 2), 4) returned a slice, not a torch.nn.Module
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch  # noqa: F401  (examples)
import torch.nn as nn

from funclens.config import check_arch_form
from funclens.errors import ConfigError

TIMM_PREFIX = "timm:"

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn(in_shape, num_classes) -> nn.Module`` under its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _timm():  # noqa: ANN202
    try:
        import timm
    except ImportError:
        raise ConfigError('"timm:" architectures need timm: pip install "funclens[timm]"') from None
    return timm


def import_by_name(name: str, what: str) -> Callable[..., object]:
    """The function ``"package.module:function"`` names, imported; a one-line :class:`ConfigError` when there is
    none. Study files name models and compressors this way; the name comes from the study file, never from data.

    Args:
        name: ``"package.module:function"``.
        what: how errors name it, e.g. ``"arch 'mynets:cnn'"``.

    Example:
        >>> import_by_name("funclens.models:list_models", "arch")() == list_models()
        True
        >>> import_by_name("funclens.models:nothing", "custom compressor 'mine'")
        Traceback (most recent call last):
        funclens.errors.ConfigError: custom compressor 'mine': funclens.models has no function nothing
    """
    module_name, _, fn_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{what}: cannot import {module_name} ({type(e).__name__}: {e}; is its folder "
                          "on PYTHONPATH?)") from None
    except (Exception, SystemExit) as e:  # the user's module failed while imported (an exit too: its code
        # would otherwise set funclens's exit status, and 3 reads as a failed --fail-if)
        raise ConfigError(f"{what}: importing {module_name} failed ({type(e).__name__}: {e})") from None
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"{what}: {module_name} has no function {fn_name}")
    return fn


def _factory(arch: str) -> Callable[..., object]:
    return import_by_name(arch, f"arch {arch!r}")


def check_arch(arch: str) -> None:
    """Refuse an architecture that builds nothing: an unknown name, a factory that cannot be imported,
    timm without the extra or without that model. Imports the factory's module; builds no model.

    Args:
        arch: a registered name, ``"package.module:function"`` or ``"timm:NAME"``.

    Example:
        >>> check_arch("lenet")
        >>> check_arch("funclens.models:nothing")
        Traceback (most recent call last):
        funclens.errors.ConfigError: arch 'funclens.models:nothing': funclens.models has no function nothing
    """
    check_arch_form(arch)
    if arch.startswith(TIMM_PREFIX):
        name = arch[len(TIMM_PREFIX):]
        if not _timm().is_model(name):
            raise ConfigError(f"arch {arch!r}: timm has no model {name!r} (timm.list_models() names them)")
    elif ":" in arch:
        _factory(arch)
    elif arch not in _REGISTRY:
        raise ConfigError(f"unknown arch {arch!r}; known: {', '.join(list_models())}, "
                          '"package.module:function" or "timm:NAME"')


def create_model(name: str, *, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build a model for inputs of shape ``(C, H, W)`` and ``num_classes`` outputs.

    Args:
        name: a name from :func:`list_models`, ``"package.module:function"`` (a factory called as
            ``function(in_shape, num_classes)`` that returns an ``nn.Module``) or ``"timm:NAME"`` (built
            without pretrained weights, with ``in_chans`` and ``num_classes`` set).
        in_shape: channels, height, width of one input image.
        num_classes: number of logits.

    Example:
        >>> m = create_model("funclens.models.lenet:lenet", in_shape=(1, 8, 8), num_classes=10)
        >>> m(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    check_arch(name)
    in_shape = tuple(in_shape)
    if name in _REGISTRY:
        return _REGISTRY[name](in_shape=in_shape, num_classes=num_classes)
    if name.startswith(TIMM_PREFIX):
        build = lambda: _timm().create_model(name[len(TIMM_PREFIX):], pretrained=False,  # noqa: E731
                                              in_chans=in_shape[0], num_classes=num_classes)
        call = f"timm.create_model({name[len(TIMM_PREFIX):]!r}, in_chans={in_shape[0]}, num_classes={num_classes})"
    else:
        fn = _factory(name)
        build = lambda: fn(in_shape, num_classes)  # noqa: E731
        call = f"{name.partition(':')[2]}({in_shape}, {num_classes})"
    try:
        model = build()
    except Exception as e:  # the user's factory (or timm) refused these arguments: bad input, one line
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"arch {name!r}: {call} failed ({type(e).__name__}: {why})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"arch {name!r}: {call} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


from funclens.models import lenet, mobilenet, resnet  # noqa: E402,F401  (registration side effect)
