"""The training loop (plain and distillation) and inference. Knows nothing of files.

One loop, top to bottom: seed, build, (resume), then per epoch: shuffle with the run's own generator,
step through batches drawn from the in-memory uint8 tensors, evaluate the whole test set in order and
hand the softmax to ``on_epoch`` with everything a resume needs.

Example:
    >>> from funclens.config import DataCfg, ModelCfg, RunSpec, TrainCfg
    >>> from funclens.data import load_dataset
    >>> ds = load_dataset("digits")
    >>> spec = RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(epochs=1))
    >>> model, history = train(spec, ds)
    >>> round(history[-1]["test_acc"], 1) > 0.5
    True
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from funclens.config import RunSpec, lr_at
from funclens.data import Dataset
from funclens.models import create_model

EpochHook = Callable[[int, np.ndarray, dict, dict], None]
StepHook = Callable[[int, int, int], None]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            alpha: float, temperature: float) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)`` (Hinton et al. 2015).

    The T^2 factor keeps the soft term's gradients on the scale of the hard term's as T grows.
    """
    ce = F.cross_entropy(student_logits, labels)
    if alpha == 0:
        return ce  # exactly plain training, not 0 * KL + CE (which differs if KL is inf or nan)
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                  log_target=True, reduction="batchmean")
    return alpha * t * t * kl + (1 - alpha) * ce


@torch.no_grad()
def infer(model: nn.Module, x: torch.Tensor, data: Dataset, *, device: torch.device | str = "cpu",
          batch_size: int | None = None, precision: str = "fp32", channels_last: bool = True) -> torch.Tensor:
    """Logits for every image of ``x`` (uint8 ``[N, C, H, W]``), in order, as float32 on the CPU.

    Args:
        model: any module mapping normalised images to logits; put in eval mode here.
        x: the images, e.g. ``data.test_x``.
        data: supplies the normalisation.
        device: where to compute.
        batch_size: images per forward pass; default: what suits the device.
        precision: ``bf16`` computes under the autocast the model was trained with (see :func:`_autocast`).
        channels_last: the channels-last memory layout (changes only float rounding).

    Example:
        >>> from funclens.data import load_dataset
        >>> from funclens.models import create_model
        >>> ds = load_dataset("digits")
        >>> model = create_model("lenet", in_shape=ds.in_shape, num_classes=ds.num_classes)
        >>> logits = infer(model, ds.test_x, ds, precision="bf16")
        >>> tuple(logits.shape), logits.dtype
        ((360, 10), torch.float32)
    """
    if batch_size is None:
        # On the CPU, batches past a few hundred images spill the caches: LeNet infers 2.2x faster
        # in batches of 256 than of 1024 (one thread).
        batch_size = 1024 if torch.device(device).type == "cuda" else 256
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)  # 4-D weights only; no-op for linear models
    out = []
    for i in range(0, len(x), batch_size):
        xb = data.normalize(x[i:i + batch_size].to(device))
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with _autocast(device, precision):
            out.append(model(xb).float().cpu())
    return torch.cat(out) if out else torch.empty(0, data.num_classes)


CALIBRATION_SEED = 0  # the calibration images are one fixed draw, the same for every run of a data set


def calibration_images(data: Dataset, n: int) -> torch.Tensor:
    """``n`` training images (all of them when there are fewer), drawn at random with a fixed seed,
    normalized as the model sees them: float ``[n, C, H, W]`` on the CPU, what calibrating compressors get.

    A fixed draw, not the first ``n``: a data set stored by class would calibrate on one class.

    Args:
        data: the data set.
        n: how many images.

    Example:
        >>> from funclens.data import load_dataset
        >>> ds = load_dataset("digits")
        >>> x = calibration_images(ds, 32)
        >>> tuple(x.shape), x.dtype, torch.equal(x, calibration_images(ds, 32))
        ((32, 1, 8, 8), torch.float32, True)
    """
    gen = torch.Generator().manual_seed(CALIBRATION_SEED)
    idx = torch.randperm(len(data.train_x), generator=gen)[:n]
    return data.normalize(data.train_x[idx]).float().contiguous()


def hold_zeros(model: nn.Module) -> Callable[[nn.Module], None]:
    """A step hook for :func:`funclens.train.train` that sets back to zero every Conv2d and Linear weight
    that is zero in ``model`` now: fine-tuning a pruned model keeps its sparsity exactly.

    Masking after the optimizer's step, not the gradient: momentum and weight decay move a weight even
    when its gradient is zero.

    Args:
        model: the pruned model, before training (the hook keeps its zeros, on whatever device it moves to).

    Example:
        >>> m = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = m.weight.copy_(torch.tensor([[0.0, 1.0], [2.0, 0.0]]))
        >>> hold = hold_zeros(m)
        >>> with torch.no_grad():
        ...     _ = m.weight.add_(0.5)
        >>> hold(m); m.weight.tolist()
        [[0.0, 1.5], [2.5, 0.0]]
    """
    from funclens.compress import weight_layers

    pruned = [(layer, layer.weight.detach() == 0) for _, layer in weight_layers(model)]

    def hold(_model: nn.Module) -> None:
        with torch.no_grad():
            for i, (layer, zero) in enumerate(pruned):
                if zero.device != layer.weight.device:
                    zero = zero.to(layer.weight.device)  # once, when training moved the model
                    pruned[i] = (layer, zero)
                layer.weight.masked_fill_(zero, 0.0)

    return hold


def _autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """The context a run's forward passes compute in: bf16 autocast on the CPU or CUDA, else none.

    Under autocast only the ops torch lists as safe in bf16 (convolutions, matmuls) take bf16 inputs,
    with fp32 accumulation; the weights stay fp32 tensors (the master copy the optimizer updates), and
    each step rounds a bf16 copy of them. A CPU with AVX-512 BF16 or AMX runs a bf16 matmul at several
    times the fp32 rate (``benchmarks/bf16.py`` measures both, and LeNet's training beside them). fp32
    takes no context at all, so its arithmetic is exactly what it was before bf16 ran on the CPU.
    """
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _rng_state(gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "gen": gen.get_state()}


def train(spec: RunSpec, data: Dataset, *, device: torch.device | str = "cpu",
          init_state: dict | None = None, teacher_logits: torch.Tensor | None = None,
          resume: dict | None = None, on_epoch: EpochHook | None = None, on_step: StepHook | None = None,
          on_init: Callable[[dict], None] | None = None, channels_last: bool = True,
          model: nn.Module | None = None, after_step: Callable[[nn.Module], None] | None = None
          ) -> tuple[nn.Module, list[dict]]:
    """Train ``spec``'s model and return it with its per-epoch history.

    Args:
        spec: a RunSpec with a ``train`` recipe: a ``train`` run, or a pruning run's fine-tuning (with
            ``model``); with ``spec.distill`` the loss is :func:`kd_loss` against the teacher.
        data: the in-memory data set.
        device: where to train.
        init_state: initial weights (a base-init student gets the base's); default: built from the seed.
        teacher_logits: a distillation run's teacher logits for every training image, in order (from
            :func:`infer`: there is no augmentation, so they are what a teacher forward per step gives).
        resume: a checkpoint dict given earlier to ``on_epoch``; training continues after its epoch.
        on_epoch: called after every epoch with (epoch, float16 softmax [N, C], metrics, checkpoint).
        on_step: called after every step with (epoch, step, steps per epoch), for progress bars.
        on_init: called once, before training, with the initial state_dict.
        channels_last: the channels-last memory layout (changes only float rounding).
        model: start from this model (trained in place) instead of one built from ``spec.model`` and the
            seed; the seed still fixes the data order. A pruned model is fine-tuned this way.
        after_step: called with the model after every optimizer step, e.g. to hold pruned weights at zero.

    Example:
        >>> from funclens.config import DataCfg, ModelCfg, RunSpec, TrainCfg
        >>> from funclens.data import load_dataset
        >>> ds = load_dataset("digits")
        >>> spec = RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(epochs=1))
        >>> start = create_model("lenet", in_shape=ds.in_shape, num_classes=10)
        >>> zero = lambda m: m.fc2.bias.data.zero_()
        >>> tuned, history = train(spec, ds, model=start, after_step=zero)
        >>> tuned is start, bool((tuned.fc2.bias == 0).all()), len(history)
        (True, True, 1)
    """
    cfg = spec.train
    assert cfg is not None and (spec.kind == "train" or model is not None)
    assert spec.distill is None or not spec.distill.uses_teacher or teacher_logits is not None, \
        "a distillation run with alpha > 0 needs its teacher's logits"
    device = torch.device(device)
    model, opt, gen = _build(spec, data, device, init_state, on_init, channels_last, model)
    if teacher_logits is not None:
        teacher_logits = teacher_logits.to(device)
    history: list[dict] = []
    start_epoch = 1
    if resume is not None:
        history, start_epoch = _restore(resume, model, opt, gen)
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        train_loss = _train_epoch(spec, data, model, opt, gen, teacher_logits, device, epoch, on_step,
                                  channels_last, after_step)
        train_time = time.perf_counter() - t0  # seconds of the training pass alone, without the evaluation
        probs, m = evaluate(model, data, device, channels_last, cfg.precision)
        history.append({"epoch": epoch, "train_loss": train_loss, "test_loss": m["test_loss"],
                        "test_acc": m["test_acc"], "train_seconds": train_time,
                        "images_per_second": len(data.train_x) / train_time})
        if on_epoch is not None:
            on_epoch(epoch, probs, history[-1], _checkpoint(epoch, model, opt, gen, history))
    return model, history


def _checkpoint(epoch: int, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                history: list[dict]) -> dict:
    """What a resume after ``epoch`` needs (:func:`_restore` reads it back)."""
    # Copies, not views of live tensors: the hook may keep the checkpoint while training goes on.
    return copy.deepcopy({"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "rng": _rng_state(gen), "history": history})


def _build(spec: RunSpec, data: Dataset, device: torch.device, init_state: dict | None,
           on_init: Callable[[dict], None] | None, channels_last: bool, model: nn.Module | None = None
           ) -> tuple[nn.Module, torch.optim.Optimizer, torch.Generator]:
    """The seeded model (or ``model``, as given), its optimizer, and the generator of the data order."""
    cfg = spec.train
    assert cfg is not None
    torch.manual_seed(cfg.seed)
    if model is None:
        model = create_model(spec.model.arch, in_shape=data.in_shape, num_classes=data.num_classes)
    if init_state is not None:
        model.load_state_dict(init_state)
    if on_init is not None:
        on_init(copy.deepcopy(model.state_dict()))
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                                     weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # The data order has its own generator, so model code that draws random numbers cannot shift it.
    gen = torch.Generator().manual_seed(cfg.seed)
    return model, opt, gen


def _restore(resume: dict, model: nn.Module, opt: torch.optim.Optimizer,
             gen: torch.Generator) -> tuple[list[dict], int]:
    """Load a checkpoint's state; returns its history and the first epoch still to train."""
    model.load_state_dict(resume["model"])
    opt.load_state_dict(resume["optimizer"])
    torch.set_rng_state(resume["rng"]["torch"])
    gen.set_state(resume["rng"]["gen"])
    return list(resume["history"]), int(resume["epoch"]) + 1


def _train_epoch(spec: RunSpec, data: Dataset, model: nn.Module, opt: torch.optim.Optimizer,
                 gen: torch.Generator, teacher_logits: torch.Tensor | None, device: torch.device, epoch: int,
                 on_step: StepHook | None, channels_last: bool,
                 after_step: Callable[[nn.Module], None] | None = None) -> float:
    """One pass over the training set in the generator's order; returns the mean training loss."""
    cfg, dcfg = spec.train, spec.distill
    assert cfg is not None
    n = len(data.train_x)
    steps = (n + cfg.batch_size - 1) // cfg.batch_size
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    model.train()
    if cfg.schedule != "constant":
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, epoch)
    order = torch.randperm(n, generator=gen).to(device)
    loss_sum = torch.zeros((), device=device)
    for step in range(steps):
        idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        xb, yb = data.normalize(train_x[idx]), train_y[idx]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with _autocast(device, cfg.precision):
            logits = model(xb).float()
        # The loss stays fp32, outside autocast: log-softmax over bf16 logits (8 bits of mantissa) would
        # round small losses to zero late in training, and the KD term's T^2-scaled KL between two
        # softmaxes is a difference of nearly equal numbers. The teacher's logits are fp32 too. Gradients
        # reach the fp32 weights as fp32, so the optimizer's state (momentum, Adam's moments) and its
        # update (lr x grad, often under a bf16 weight's rounding step) are computed in fp32.
        if dcfg is None or not dcfg.uses_teacher:
            # alpha 0 (the no-teacher control): the teacher's logits are not even looked up
            loss = F.cross_entropy(logits, yb)
        else:
            assert teacher_logits is not None
            loss = kd_loss(logits, teacher_logits[idx], yb, dcfg.alpha, dcfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step(model)
        loss_sum += loss.detach() * len(idx)
        if on_step is not None:
            on_step(epoch, step + 1, steps)
    train_loss = float(loss_sum) / n
    if not np.isfinite(train_loss):
        raise FloatingPointError(f"training diverged at epoch {epoch} (loss {train_loss}); lower the lr")
    return train_loss


def evaluate(model: nn.Module, data: Dataset, device: torch.device | str = "cpu",
             channels_last: bool = True, precision: str = "fp32") -> tuple[np.ndarray, dict]:
    """Softmax (float16) and accuracy/loss of a model on the test set, in dataset order: after every epoch
    of training, and of a finished or compressed model.

    A bf16 run is evaluated under the autocast it trained under: its predictions are the function that
    was trained (its weights were fitted to bf16 rounding of the activations) and that runs where bf16 is
    deployed; evaluating it in fp32 would add a second change, a switch of number format after training,
    which is what post-hoc quantization measures. The logits come back fp32 and the softmax is taken in
    fp32 (bf16's 3 significant digits would flatten the small probabilities the distances read), then
    stored as float16 like every run's.

    Args:
        model: the model; put in eval mode.
        data: the data set whose test split is evaluated.
        device: where to compute.
        channels_last: the channels-last memory layout (changes only float rounding).
        precision: ``bf16`` computes under autocast, as a bf16-trained model was trained and evaluated.

    Example:
        >>> from funclens.data import load_dataset
        >>> from funclens.models import create_model
        >>> ds = load_dataset("digits")
        >>> probs, m = evaluate(create_model("lenet", in_shape=ds.in_shape, num_classes=10), ds)
        >>> probs.dtype, sorted(m)
        (dtype('float16'), ['test_acc', 'test_loss'])
    """
    logits = infer(model, data.test_x, data, device=device, channels_last=channels_last, precision=precision)
    probs = torch.softmax(logits, dim=1).numpy().astype(np.float16)
    return probs, {"test_acc": float((logits.argmax(1) == data.test_y).float().mean()),
                   "test_loss": float(F.cross_entropy(logits, data.test_y))}
