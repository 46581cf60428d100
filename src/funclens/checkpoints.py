"""Models the user already has: state_dicts read without pickle, named by the sha256 of their bytes.

A study's ``[base] checkpoint`` (and ``independents``) are read here: each file once when the study
starts, to refuse one that is not a state_dict of the study's architecture before any run does, and to
pin its sha256 into the study, so that a changed file is another run and never reuses an old one.

Example:
    >>> import tempfile, torch
    >>> from funclens.models import create_model
    >>> p = Path(tempfile.mkdtemp()) / "base.pt"
    >>> torch.save(create_model("lenet", in_shape=(1, 8, 8), num_classes=10).state_dict(), p)
    >>> model, sha = load_checkpoint(p, "lenet", in_shape=(1, 8, 8), num_classes=10)
    >>> len(sha)
    64
    >>> load_checkpoint(p, "lenet", in_shape=(3, 8, 8), num_classes=10)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    funclens.errors.ConfigError: ...base.pt: not a state_dict of lenet for 3x8x8 images and 10 classes (1 tensor(s) of another shape: conv1.weight)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

import torch
import torch.nn as nn

from funclens.config import BaseCfg
from funclens.data import Dataset
from funclens.safeio import read_regular
from funclens.errors import ConfigError

# ResNet-50's state_dict takes 100 MB; timm's largest CNNs a few GB. A checkpoint is read whole to hash it.
MAX_CHECKPOINT_BYTES = 4 << 30


def read_state_dict(path: Path | str) -> tuple[dict[str, torch.Tensor], str]:
    """A state_dict file (tensors only, read with ``weights_only=True``) and the sha256 of its bytes.

    Args:
        path: a file written by ``torch.save(model.state_dict(), path)``.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "w.pt"
        >>> torch.save({"w": torch.zeros(2)}, p)
        >>> sorted(read_state_dict(p)[0])
        ['w']
    """
    path = Path(path)
    raw = read_regular(path, MAX_CHECKPOINT_BYTES, ConfigError, "checkpoint")
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or pickled-code file can raise nearly anything; all mean "not a state_dict"
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"{path}: not a checkpoint torch.load(weights_only=True) reads "
                          f"({type(e).__name__}: {why})") from None
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in obj.items())):
        raise ConfigError(f"{path}: not a state_dict (a dict of tensors); save model.state_dict()")
    return obj, hashlib.sha256(raw).hexdigest()


def _mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """What keeps ``state`` from loading into ``model``, in one line ("" when it fits)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    parts = [f"{len(v)} {what}: {', '.join(v[:3])}{', ...' if len(v) > 3 else ''}"
             for v, what in ((missing, "missing tensor(s)"), (unexpected, "unexpected tensor(s)"),
                             (shapes, "tensor(s) of another shape")) if v]
    return "; ".join(parts)


def load_checkpoint(path: Path | str, arch: str, *, in_shape: tuple[int, int, int], num_classes: int,
                    sha256: str = "") -> tuple[nn.Module, str]:
    """The model ``arch`` with the weights of ``path``, and the file's sha256; a :class:`ConfigError` when
    the file is not a state_dict of that architecture for these images and classes.

    Args:
        path: the state_dict file.
        arch: the architecture it belongs to (a name :func:`funclens.models.create_model` builds).
        in_shape, num_classes: the data set's image shape ``(C, H, W)`` and class count.
        sha256: the digest the file must have ("": any), as a study pinned it.
    """
    from funclens.models import create_model  # late: the registry imports every model

    state, got = read_state_dict(path)
    if sha256 and got != sha256:
        raise ConfigError(f"{path}: the checkpoint changed since the study was planned (sha256 {got}, "
                          f"planned {sha256})")
    with torch.random.fork_rng(devices=[]):  # building draws initial weights the checkpoint replaces
        model = create_model(arch, in_shape=in_shape, num_classes=num_classes)
    why = _mismatch(model, state)
    if why:
        shape = "x".join(str(d) for d in in_shape)
        raise ConfigError(f"{path}: not a state_dict of {arch} for {shape} images and {num_classes} classes ({why})")
    model.load_state_dict(state)
    return model.eval(), got


def pin_checkpoints(base: BaseCfg, arch: str, data: Dataset) -> BaseCfg:
    """``base`` with the sha256 of each of its files, each checked to be a state_dict of ``arch`` for ``data``.

    Args:
        base: the study's ``[base]``; with no checkpoint it is returned as it is.
        arch: the study's architecture.
        data: the data set the study runs on (its image shape and class count).

    Example:
        >>> from funclens.data import load_dataset
        >>> pin_checkpoints(BaseCfg(), "lenet", load_dataset("digits", test_subset=1))
        BaseCfg(checkpoint='', independents=(), sha256=())
    """
    files = base.files
    if not files:
        return base
    pinned = base.sha256 or ("",) * len(files)
    digests = tuple(load_checkpoint(f, arch, in_shape=data.in_shape, num_classes=data.num_classes, sha256=want)[1]
                    for f, want in zip(files, pinned))
    return dataclasses.replace(base, sha256=digests)
