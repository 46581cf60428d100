"""Users' own compressors: a study file's ``[[custom]]`` tables, ``fn(model, calibration) -> nn.Module``.

``fn`` is imported by the name the study file gives (``"package.module:function"``), never from data. It gets
a private fp32 CPU copy of the trained model (it may change it in place) and ``calibration``, training images
``[N, C, H, W]`` normalized as the model sees them, and returns the model to compare. Whatever it returns is
checked on those images before a single test prediction is made: it must be an ``nn.Module`` that gives logits
``[N, num_classes]``. A function that raises, returns something else or a model of the wrong output is bad
input, one line naming the compressor.

A changed compressor is another run: :func:`pin_custom` records the sha256 of the file that defines ``fn``
in its config when a study starts, so it enters the run id, and the run refuses to compress when that file
changed in between. Only that file is pinned, not the modules it imports.

Example:
    >>> from funclens.compress import compress
    >>> from funclens.config import CustomCfg
    >>> from funclens.models import create_model
    >>> m = create_model("lenet", in_shape=(1, 8, 8), num_classes=10)
    >>> out, info = compress(m, CustomCfg("same", "funclens.compress.custom:unchanged"), torch.zeros(4, 1, 8, 8))
    >>> info.method, info.setting, info.loadable, info.layers_compressed, info.weight_bytes == info.fp32_bytes
    ('custom', 'same', True, 0, True)
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from funclens.compress import CompressInfo, register, weight_layers
from funclens.config import ConfigError, CustomCfg
from funclens.models import import_by_name

# A returned model whose state_dict, loaded into the study's architecture, gives logits this close to its own
# on the calibration images is stored as model.pt (fp32 logits: rounding of the same arithmetic, not a change).
RELOAD_RTOL, RELOAD_ATOL = 1e-4, 1e-5
# calibration images the returned model is checked on: enough to see its output's shape and whether its
# state_dict reproduces it, without a second pass over a calibration set of up to 65,536 images
CHECK_IMAGES = 64


def unchanged(model: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """A compressor that compresses nothing: the model as it came (a reference point and an example).

    Args:
        model: the model to compress.
        calibration: training images (unused).

    Example:
        >>> m = nn.Linear(2, 2)
        >>> unchanged(m, torch.zeros(1, 2)) is m
        True
    """
    return model


def _what(cfg: CustomCfg) -> str:
    return f"custom compressor {cfg.name!r} ({cfg.fn})"


def _why(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(e).strip()
    return type(e).__name__ + (f": {text.splitlines()[0]}" if text else "")


def source_file(fn: Callable[..., object], name: str, what: str) -> Path:
    """The file of the module that defines ``fn`` (importlib's spec origin), for pinning its bytes.

    Args:
        fn: the imported function.
        name: the ``"package.module:function"`` it was imported by (its module when ``fn`` names none).
        what: how errors name the compressor.

    Example:
        >>> source_file(unchanged, "funclens.compress.custom:unchanged", "custom").name
        'custom.py'
    """
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    spec = getattr(module, "__spec__", None) or importlib.util.find_spec(name.partition(":")[0])
    origin = getattr(spec, "origin", None)
    if not origin or not Path(origin).is_file():
        raise ConfigError(f"{what}: it is defined in no source file ({origin or 'no origin'}), so a change to "
                          "it could not be told from the old one; define it in a .py file")
    return Path(origin)


def source_sha256(cfg: CustomCfg) -> str:
    """The sha256 (hex) of the bytes of the file that defines ``cfg.fn``; imports it.

    Args:
        cfg: the compressor.

    Example:
        >>> len(source_sha256(CustomCfg("same", "funclens.compress.custom:unchanged")))
        64
    """
    fn = import_by_name(cfg.fn, _what(cfg))
    return hashlib.sha256(source_file(fn, cfg.fn, _what(cfg)).read_bytes()).hexdigest()


def pin_custom(custom: tuple[CustomCfg, ...]) -> tuple[CustomCfg, ...]:
    """``custom`` with every ``source_sha256`` filled from its source file, as a study starts: a compressor
    whose file changed names other runs. A module or function that cannot be found is a :class:`ConfigError`.

    Args:
        custom: the study's compressors.

    Example:
        >>> pin_custom((CustomCfg("same", "funclens.compress.custom:unchanged"),))[0].source_sha256 != ""
        True
        >>> pin_custom((CustomCfg("gone", "funclens.compress.custom:nothing"),))
        Traceback (most recent call last):
        funclens.errors.ConfigError: custom compressor 'gone' (funclens.compress.custom:nothing): funclens.compress.custom has no function nothing
    """
    return tuple(dataclasses.replace(c, source_sha256=source_sha256(c)) for c in custom)


def _logits(model: nn.Module, x: torch.Tensor, want: torch.Size, what: str) -> torch.Tensor:
    """``model``'s logits on the calibration images, refused unless a tensor of the base model's shape."""
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except (Exception, SystemExit) as e:  # the user's model: bad input, one line
        raise ConfigError(f"{what}: the model it returned fails on the calibration images {list(x.shape)} "
                          f"({_why(e)})") from None
    if not isinstance(out, torch.Tensor) or out.shape != want:
        got = list(out.shape) if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise ConfigError(f"{what}: the model it returned gives {got} on the calibration images, not logits "
                          f"{list(want)} (images x classes)")
    if not torch.isfinite(out).all():
        raise ConfigError(f"{what}: the model it returned gives NaN or infinite logits on the calibration images")
    return out.float()


def _reloads(twin: nn.Module, out: nn.Module, logits: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether ``out``'s state_dict loads into ``twin`` (the study's architecture) and then computes what ``out``
    computes: only then is the stored state_dict the model whose predictions are stored."""
    try:
        twin.load_state_dict(out.state_dict())
        with torch.no_grad():
            again = twin.eval()(x)
    except Exception:  # another structure, other tensor shapes or types: the predictions are what count
        return False
    return torch.allclose(again.float(), logits, rtol=RELOAD_RTOL, atol=RELOAD_ATOL)


def _changed_layers(before: nn.Module, after: nn.Module) -> tuple[int, int]:
    """(Conv2d and Linear layers, Conv2d among them) whose weight is no longer the same tensor of values."""
    now = after.state_dict()
    changed = [layer for name, layer in weight_layers(before)
               if not (isinstance(now.get(f"{name}.weight"), torch.Tensor)
                       and now[f"{name}.weight"].shape == layer.weight.shape
                       and torch.equal(now[f"{name}.weight"].float(), layer.weight.float()))]
    return len(changed), sum(isinstance(layer, nn.Conv2d) for layer in changed)


def own_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers at their own dtypes' sizes (shared tensors once).

    Args:
        model: any module.

    Example:
        >>> own_bytes(nn.Linear(3, 2).half())  # (6 weights + 2 biases) * 2 bytes
        16
    """
    return sum(t.numel() * t.element_size() for _, t in [*model.named_parameters(), *model.named_buffers()])


@register(CustomCfg)
def _custom(model: nn.Module, cfg: CustomCfg,
            calibration: torch.Tensor | None = None) -> tuple[nn.Module, CompressInfo]:
    """The :func:`funclens.compress.compress` method for :class:`CustomCfg` (``model`` is a private copy)."""
    what = _what(cfg)
    if calibration is None:
        raise ConfigError(f"{what}: needs calibration images [N, C, H, W], normalized as the model sees them")
    fn = import_by_name(cfg.fn, what)
    if cfg.source_sha256:
        path = source_file(fn, cfg.fn, what)
        if hashlib.sha256(path.read_bytes()).hexdigest() != cfg.source_sha256:
            raise ConfigError(f"{what}: {path} changed since the study started; rerun the study to compress "
                              "with the new code")
    x = calibration.float().cpu()
    probe = x[:CHECK_IMAGES]
    with torch.no_grad():
        want = model.eval()(probe).shape
    twin = copy.deepcopy(model)  # the study's architecture with the original weights, before fn may edit them
    try:
        out = fn(model, x.clone())  # a copy: a compressor that edits its images leaves the check's alone
    except (Exception, SystemExit) as e:  # the user's code: bad input, one line (an exit too: not a finished study)
        raise ConfigError(f"{what} raised {_why(e)}") from None
    if not isinstance(out, nn.Module):
        raise ConfigError(f"{what} returned a {type(out).__name__}, not a torch.nn.Module")
    logits = _logits(out, probe, want, what)
    changed, conv = _changed_layers(twin, out)  # before _reloads loads the new weights into twin
    return out, CompressInfo("custom", cfg.name, _reloads(twin, out, logits, probe), changed, conv, own_bytes(out))
