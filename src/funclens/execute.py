"""What one run does: :func:`execute_run` turns a RunSpec into a finished run folder.

Every backend (``funclens.backends``) calls it, through :func:`funclens.schedule.attempt`, so where
a run was computed never changes what it holds. Which runs to compute, and when, is decided by
:func:`funclens.schedule.run_plan`.

Testing hook: ``FUNCLENS_KILL_AFTER=<run id prefix>:<epoch>[:group]`` makes the process computing a
training run (or a pruning run's fine-tuning) whose id starts with the prefix SIGKILL itself once that epoch's predictions and
checkpoint are written (``:group``: its whole process group, as when a user kills a study with its
workers). The kill-and-resume tests use it to stop a study at a chosen epoch; nothing else should
set it.

Example:
    >>> import tempfile
    >>> from funclens.config import DataCfg, ModelCfg, RunSpec, TrainCfg
    >>> spec = RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(epochs=1))
    >>> execute_run(spec, RunContext(out=tempfile.mkdtemp())) == spec.run_id
    True
"""

from __future__ import annotations

import dataclasses
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from funclens.config import CompressCfg, ConfigError, DataCfg, FunclensError, PruneCfg, RunSpec, StructuredPruneCfg
from funclens.data import Dataset, check_content, load_from_cfg
from funclens.models import create_model
from funclens.store import Store

ProgressFn = Callable[[str, int, int, int, int], None]  # run id, epoch, epochs, step, steps


@dataclass(frozen=True)
class RunContext:
    """What a run needs besides its spec; plain values so it crosses process boundaries."""

    out: str
    data_dir: str | None = None
    offline: bool = False
    device: str = "cpu"
    # On the CPU, max-pooling an NCHW tensor is ~15x slower than a channels-last one (LeNet trains ~1.7x
    # faster with it), and on CUDA convolutions prefer it too; it changes only float rounding.
    channels_last: bool = True


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; ``cuda`` without one is bad input.

    Args:
        device: ``auto``, ``cpu`` or ``cuda``.

    Example:
        >>> resolve_device("cpu")
        'cpu'
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise FunclensError("--device cuda, but no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise FunclensError(f"--device must be auto, cpu or cuda, got {device!r}")
    return device


_DATA_CACHE: dict[tuple, Dataset] = {}


def preload_dataset(cfg: DataCfg, ctx: RunContext) -> Dataset:
    """The data set of ``cfg``, loaded once per process; a pinned ``cfg.content`` is checked each time.

    Args:
        cfg: which data set, and which subsets of it.
        ctx: where its files are, and whether downloading is allowed.

    Example:
        >>> preload_dataset(DataCfg("digits"), RunContext(out=".")).num_classes
        10
    """
    # the content pin reuses the load
    key = (cfg.dataset, cfg.train_subset, cfg.test_subset, cfg.image_size, cfg.normalize, ctx.data_dir)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # one data set at a time per process: CIFAR takes 180 MB
        _DATA_CACHE[key] = load_from_cfg(cfg, Path(ctx.data_dir) if ctx.data_dir else None, ctx.offline)
    return check_content(cfg, _DATA_CACHE[key])


_TEACHER_CACHE: dict[tuple, torch.Tensor] = {}


def _teacher_logits(store: Store, teacher_id: str, arch: str, data_cfg: DataCfg, data: Dataset,
                    ctx: RunContext) -> torch.Tensor:
    """The teacher's logits on the training set, on the run's device, computed once per process and teacher.

    Every student of a study's grid shares the base as teacher; recomputing its logits for each one
    cost a second per LeNet student on MNIST. Computed by the same call each time, so the cached
    tensor is the one a fresh computation would give. There is no augmentation, so every step of
    the student would see these very logits from a forward pass of the teacher.
    """
    from funclens.train import infer

    key = (ctx.out, teacher_id, arch, data_cfg, ctx.data_dir, ctx.device, ctx.channels_last)
    if key not in _TEACHER_CACHE:
        _TEACHER_CACHE.clear()  # one teacher at a time: CIFAR-100 logits take 20 MB
        teacher = _load_model(store, teacher_id, arch, data).to(ctx.device)
        trained = store.load_spec(teacher_id).train
        # The teacher computes as it was trained (a bf16 teacher under autocast: the function its own
        # predictions record); its logits come back fp32, and the student's loss is computed in fp32.
        _TEACHER_CACHE[key] = infer(teacher, data.train_x, data, device=ctx.device, channels_last=ctx.channels_last,
                                    precision=trained.precision if trained else "fp32").to(ctx.device)
    return _TEACHER_CACHE[key]


def _load_model(store: Store, run_id: str, arch: str, data: Dataset) -> torch.nn.Module:
    """A finished run's model, built as ``arch``: the architecture of the run being computed (a study's
    runs share one), never one named in a stored file, from which no factory is ever imported."""
    model = create_model(arch, in_shape=data.in_shape, num_classes=data.num_classes)
    model.load_state_dict(store.load_model_state(run_id))
    return model


def execute_run(spec: RunSpec, ctx: RunContext, progress: ProgressFn | None = None) -> str:
    """Compute one run into the store, resuming from its last finished epoch. Returns its id.

    Args:
        spec: the run; its parents must be DONE in the store.
        ctx: where the store and the data are, and the device.
        progress: called as ``progress(run_id, epoch, epochs, step, steps)``.
    """
    store = Store(Path(ctx.out))
    rid = spec.run_id
    resolve_device(ctx.device)  # on a cluster the driver may lack the GPU a worker must have
    if store.prepare(spec) == "done":  # a damaged finished run is cleared and recomputed, never re-signed
        return rid
    data = preload_dataset(spec.data, ctx)
    if spec.kind == "train":
        _train_run(spec, ctx, store, data, progress)
    elif spec.kind == "prune" and spec.train is not None:
        _finetune_run(spec, ctx, store, data, progress)
    else:
        (_given_run if spec.kind == "given" else _compress_run)(spec, ctx, store, data)
        if progress is not None:
            progress(rid, 1, 1, 1, 1)
    return rid


def _train_run(spec: RunSpec, ctx: RunContext, store: Store, data: Dataset, progress: ProgressFn | None) -> None:
    from funclens.train import train

    assert spec.train is not None
    rid, epochs, device = spec.run_id, spec.train.epochs, torch.device(ctx.device)
    init_state = teacher_logits = None
    if spec.distill is not None:
        if spec.distill.uses_teacher:  # alpha 0 trains on labels alone: the teacher is never loaded or run
            teacher_logits = _teacher_logits(store, spec.distill.teacher, spec.model.arch, spec.data, data, ctx)
        if spec.distill.init_source:
            init_state = store.load_init(spec.distill.init_source)

    on_epoch, on_step = _epoch_hooks(rid, store, epochs, progress)
    model, history = train(spec, data, device=device, init_state=init_state, teacher_logits=teacher_logits,
                           resume=store.load_checkpoint(rid), on_epoch=on_epoch, on_step=on_step,
                           on_init=lambda sd: store.save_init(rid, sd), channels_last=ctx.channels_last)
    final = history[-1]
    store.save_labels(rid, data.test_y.numpy())  # flips, per-class accuracy and ECE read them from the store
    store.finish(rid, state_dict=model.state_dict(), metrics={
        "test_acc": final["test_acc"], "test_loss": final["test_loss"], "history": history,
        "device": device.type, "precision": spec.train.precision, "channels_last": ctx.channels_last,
        "train_images": len(data.train_x), "test_images": len(data.test_x)})


def _epoch_hooks(rid: str, store: Store, epochs: int, progress: ProgressFn | None
                 ) -> tuple[Callable[[int, np.ndarray, dict, dict], None], Callable[[int, int, int], None]]:
    """``train``'s ``on_epoch`` (predictions, then checkpoint, then the kill hook) and ``on_step`` (progress)."""

    def on_epoch(epoch: int, probs: np.ndarray, row: dict, ckpt: dict) -> None:
        store.save_preds(rid, epoch, probs)
        store.save_checkpoint(rid, ckpt)  # after the predictions: a resume never skips an epoch's file
        _kill_if_asked(rid, epoch)

    def on_step(epoch: int, step: int, steps: int) -> None:
        if progress is not None:
            progress(rid, epoch, epochs, step, steps)

    return on_epoch, on_step


def _calibration(cfg: CompressCfg, data: Dataset) -> torch.Tensor | None:
    """The training images a compressor is shown: PT2E's and custom compressors' calibration set, and
    one image for structured pruning, which traces the model's graph and counts its MACs with it."""
    from funclens.train import calibration_images

    n = getattr(cfg, "calibration", 0) or (1 if isinstance(cfg, StructuredPruneCfg) else 0)
    return calibration_images(data, n) if n else None


def _compress_run(spec: RunSpec, ctx: RunContext, store: Store, data: Dataset) -> None:
    from funclens.compress import compress
    from funclens.train import evaluate

    rid = spec.run_id
    assert spec.parent is not None and spec.compress is not None
    model = _load_model(store, spec.parent, spec.model.arch, data)
    cmodel, info = compress(model, spec.compress, _calibration(spec.compress, data))
    # A compressed bf16-trained model computes under the autocast its parent was trained and evaluated
    # under, so its row measures the compression alone, not also a switch of arithmetic. torch's own
    # quantized modules (dynamic-int8, not loadable) run their int8 kernels and take fp32 activations;
    # a structurally pruned model is not loadable either, but its layers are torch's float ones.
    parent = store.load_spec(spec.parent).train
    plain_layers = info.loadable or isinstance(spec.compress, StructuredPruneCfg)
    precision = parent.precision if parent is not None and plain_layers else "fp32"
    # torch's quantized modules run on the CPU only
    probs, m = evaluate(cmodel, data, device="cpu", channels_last=ctx.channels_last, precision=precision)
    if not np.isfinite(probs).all():  # a compressor that breaks the arithmetic: no row is better than a NaN one
        raise ConfigError(f"{rid}: the compressed model gives NaN or infinite outputs on the test set")
    store.save_preds(rid, 0, probs)
    store.finish(rid, state_dict=cmodel.state_dict() if info.loadable else None, packed=info.packed,
                 metrics={**m, **info.to_json(), "device": "cpu", "precision": precision,
                          "channels_last": ctx.channels_last, "test_images": len(data.test_x)})


def _finetune_run(spec: RunSpec, ctx: RunContext, store: Store, data: Dataset,
                  progress: ProgressFn | None) -> None:
    """Prune the parent as ``compress`` does, then train the pruned model with ``spec.train``'s recipe,
    every pruned weight held at zero; predictions and a checkpoint after every epoch, like a training run.

    Pruning is deterministic, so a resumed run rebuilds the very structure (structured pruning: the same
    channels removed) and the same zeros, then loads its checkpoint into it.
    """
    from funclens.compress import compress, weight_layers
    from funclens.train import hold_zeros, train

    assert spec.parent is not None and spec.compress is not None and spec.train is not None
    rid, device = spec.run_id, torch.device(ctx.device)
    parent = _load_model(store, spec.parent, spec.model.arch, data)
    pruned, info = compress(parent, spec.compress, _calibration(spec.compress, data))
    # Unstructured zeros sit inside dense weights, where gradients, momentum and weight decay would move
    # them; structured pruning removed its channels, so nothing is left to hold.
    hold = hold_zeros(pruned) if isinstance(spec.compress, PruneCfg) else None
    resume = store.load_checkpoint(rid)
    if resume is not None and _shapes(resume["model"]) != _shapes(pruned.state_dict()):
        resume = None  # not this run's structure: a cache to recompute, as the store treats a damaged one
    on_epoch, on_step = _epoch_hooks(rid, store, spec.train.epochs, progress)
    # No init.pt: the pruned start is the parent pruned again, and a second copy of it would cost as much
    # disk as the model itself.
    model, history = train(spec, data, device=device, model=pruned, after_step=hold, resume=resume,
                           on_epoch=on_epoch, on_step=on_step, channels_last=ctx.channels_last)
    if isinstance(spec.compress, PruneCfg):
        # measured again after fine-tuning: the row describes the model whose predictions it reports
        by_layer = {n: float((m.weight == 0).float().mean()) for n, m in weight_layers(model)}
        zeros = sum(int((m.weight == 0).sum()) for _, m in weight_layers(model))
        total = sum(m.weight.numel() for _, m in weight_layers(model))
        info = dataclasses.replace(info, sparsity=zeros / total, sparsity_by_layer=by_layer)
    final = history[-1]
    store.finish(rid, state_dict=model.state_dict() if info.loadable else None, metrics={
        **info.to_json(), "test_acc": final["test_acc"], "test_loss": final["test_loss"], "history": history,
        "device": device.type, "precision": spec.train.precision, "channels_last": ctx.channels_last,
        "train_images": len(data.train_x), "test_images": len(data.test_x)})


def _shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _given_run(spec: RunSpec, ctx: RunContext, store: Store, data: Dataset) -> None:
    """A model the user already has: its predictions, from the checkpoint as the study pinned it."""
    from funclens.checkpoints import load_checkpoint
    from funclens.train import evaluate

    assert spec.given is not None
    model, sha = load_checkpoint(spec.given.checkpoint, spec.model.arch, in_shape=data.in_shape,
                                 num_classes=data.num_classes, sha256=spec.given.sha256)
    model.to(ctx.device)
    if ctx.channels_last:
        model.to(memory_format=torch.channels_last)
    probs, m = evaluate(model, data, device=ctx.device, channels_last=ctx.channels_last)
    store.save_preds(spec.run_id, 0, probs)
    store.finish(spec.run_id, state_dict=model.state_dict(), metrics={
        **m, "checkpoint": spec.given.checkpoint, "checkpoint_sha256": sha, "device": ctx.device,
        "precision": "fp32", "channels_last": ctx.channels_last, "test_images": len(data.test_x)})


KILL_AFTER_ENV = "FUNCLENS_KILL_AFTER"


def _kill_if_asked(run_id: str, epoch: int) -> None:
    """The testing hook of the module docstring: SIGKILL this process (or its group) after ``epoch``."""
    want = os.environ.get(KILL_AFTER_ENV)
    if not want:
        return
    prefix, _, rest = want.partition(":")
    at, _, scope = rest.partition(":")
    if not prefix or not at.isdigit() or scope not in ("", "group"):
        raise ConfigError(f"{KILL_AFTER_ENV} must be <run id prefix>:<epoch>[:group], got {want!r}")
    if run_id.startswith(prefix) and epoch == int(at):
        if scope == "group":
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
