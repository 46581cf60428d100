"""Executors: run every planned run whose parents are DONE and which is not DONE itself.

Both executors call :func:`execute_run`, the one function that turns a RunSpec into a finished run
folder, so where a run was computed never changes what it holds. The local executor spreads runs
over ``jobs`` worker processes of one thread each: small models are overhead-bound, and two
single-thread processes train them faster than one process with two threads. One thread per run
also makes results independent of ``jobs``.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from funclens.config import DataCfg, FunclensError, RunSpec
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
    teacher_cache: bool = True


class RunFailed(FunclensError):
    pass


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; ``cuda`` without one is bad input."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise FunclensError("--device cuda, but no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise FunclensError(f"--device must be auto, cpu or cuda, got {device!r}")
    return device


_DATA_CACHE: dict[tuple, Dataset] = {}


def preload_dataset(cfg: DataCfg, ctx: RunContext) -> Dataset:
    """The data set of ``cfg``, loaded once per process; a pinned ``cfg.content`` is checked each time."""
    key = (cfg.dataset, cfg.train_subset, cfg.test_subset, ctx.data_dir)  # the content pin reuses the load
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # one data set at a time per process: CIFAR takes 180 MB
        _DATA_CACHE[key] = load_from_cfg(cfg, Path(ctx.data_dir) if ctx.data_dir else None, ctx.offline)
    return check_content(cfg, _DATA_CACHE[key])


_TEACHER_CACHE: dict[tuple, torch.Tensor] = {}


def _teacher_logits(store: Store, teacher_id: str, data_cfg: DataCfg, data: Dataset,
                    ctx: RunContext) -> torch.Tensor:
    """The teacher's logits on the training set, computed once per process and teacher.

    Every student of a study's grid shares the base as teacher; recomputing its logits for each one
    cost a second per LeNet student on MNIST. Computed by the same call each time, so the cached
    tensor is the one a fresh computation would give.
    """
    from funclens.train import infer

    key = (ctx.out, teacher_id, data_cfg, ctx.data_dir, ctx.device, ctx.channels_last)
    if key not in _TEACHER_CACHE:
        _TEACHER_CACHE.clear()  # one teacher at a time: CIFAR-100 logits take 20 MB
        teacher = _load_model(store, teacher_id, data).to(ctx.device)
        _TEACHER_CACHE[key] = infer(teacher, data.train_x, data, device=ctx.device,
                                    channels_last=ctx.channels_last)
    return _TEACHER_CACHE[key]


def _load_model(store: Store, run_id: str, data: Dataset) -> torch.nn.Module:
    spec = store.load_spec(run_id)
    model = create_model(spec.model.arch, in_shape=data.in_shape, num_classes=data.num_classes)
    model.load_state_dict(store.load_model_state(run_id))
    return model


def execute_run(spec: RunSpec, ctx: RunContext, progress: ProgressFn | None = None) -> str:
    """Compute one run into the store, resuming from its last finished epoch. Returns its id."""
    from funclens.train import evaluate, train

    store = Store(Path(ctx.out))
    rid = spec.run_id
    resolve_device(ctx.device)  # on a cluster the driver may lack the GPU a worker must have
    if store.is_done(rid):
        if not store.verify_run(rid):
            return rid
        store.invalidate(rid)  # a damaged finished run is recomputed, never trusted
    for parent in spec.parents:
        if not store.is_done(parent):
            raise RunFailed(f"run {rid} needs {parent}, which is not finished")
    store.begin(spec)
    data = preload_dataset(spec.data, ctx)
    device = torch.device(ctx.device)
    if spec.kind == "train":
        assert spec.train is not None
        init_state = teacher = teacher_logits = None
        if spec.distill is not None:
            if ctx.teacher_cache:
                teacher_logits = _teacher_logits(store, spec.distill.teacher, spec.data, data, ctx)
            else:
                teacher = _load_model(store, spec.distill.teacher, data)
            if spec.distill.init_source:
                init_state = store.load_init(spec.distill.init_source)
        resume = store.load_checkpoint(rid)
        epochs = spec.train.epochs

        def on_epoch(epoch: int, probs, row: dict, ckpt: dict) -> None:
            store.save_preds(rid, epoch, probs)
            store.save_checkpoint(rid, ckpt)  # after the predictions: a resume never skips an epoch's file

        def on_step(epoch: int, step: int, steps: int) -> None:
            if progress is not None:
                progress(rid, epoch, epochs, step, steps)

        model, history = train(spec, data, device=device, init_state=init_state, teacher=teacher,
                               teacher_logits=teacher_logits, resume=resume, on_epoch=on_epoch,
                               on_step=on_step, on_init=lambda sd: store.save_init(rid, sd),
                               teacher_cache=ctx.teacher_cache, channels_last=ctx.channels_last)
        final = history[-1]
        store.finish(rid, state_dict=model.state_dict(), metrics={
            "test_acc": final["test_acc"], "test_loss": final["test_loss"], "history": history,
            "device": device.type, "precision": spec.train.precision, "channels_last": ctx.channels_last,
            "train_images": len(data.train_x), "test_images": len(data.test_x)})
    else:
        from funclens.compress import compress

        assert spec.parent is not None and spec.compress is not None
        model = _load_model(store, spec.parent, data)
        cmodel, info = compress(model, spec.compress)
        # torch's quantized modules run on the CPU only
        probs, m = evaluate(cmodel, data, device="cpu", channels_last=ctx.channels_last)
        store.save_preds(rid, 0, probs)
        packed = info.pop("packed", None)
        loadable = info.get("loadable", True)
        store.finish(rid, state_dict=cmodel.state_dict() if loadable else None, packed=packed,
                     metrics={**m, **info, "device": "cpu", "precision": "fp32", "channels_last": ctx.channels_last,
                              "test_images": len(data.test_x)})
        if progress is not None:
            progress(rid, 1, 1, 1, 1)
    return rid


# ---------------------------------------------------------------- local executor

_PARENT_PID: int | None = None
_QUEUE = None


def _worker_init(q, parent_pid: int) -> None:
    global _PARENT_PID, _QUEUE
    _PARENT_PID, _QUEUE = parent_pid, q
    torch.set_num_threads(1)
    threading.Thread(target=_exit_when_orphaned, daemon=True).start()


def _exit_when_orphaned() -> None:
    # A worker whose study was killed stops rather than race the restarted study or linger: an idle
    # one would wait forever for work, since it holds a copy of the work queue's writing end itself.
    while os.getppid() == _PARENT_PID:
        time.sleep(0.5)
    os._exit(1)


def _worker_run(spec: RunSpec, ctx: RunContext) -> tuple[str, str | None]:
    last = [0.0]

    def progress(rid: str, epoch: int, epochs: int, step: int, steps: int) -> None:
        now = time.monotonic()
        if step == steps or now - last[0] > 0.2:
            last[0] = now
            _QUEUE.put((rid, epoch, epochs, step, steps))

    try:
        return execute_run(spec, ctx, progress), None
    except FunclensError as e:
        return spec.run_id, str(e)
    except Exception as e:  # reported by the parent with the run named; --debug shows the trace
        return spec.run_id, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"


@dataclass
class ExecResult:
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def take_finished(store: Store, pending: dict[str, RunSpec], on_done: Callable[[str], None] | None) -> ExecResult:
    """Move the runs already DONE (with intact files) out of ``pending`` into a new result."""
    result = ExecResult()
    for rid in list(pending):
        if store.is_done(rid) and not store.verify_run(rid):
            result.done.append(rid)
            del pending[rid]
            if on_done:
                on_done(rid)
    return result


def run_local(specs: list[RunSpec], ctx: RunContext, *, jobs: int = 1,
              progress: ProgressFn | None = None, on_done: Callable[[str], None] | None = None,
              start_method: str | None = None) -> ExecResult:
    """Run ``specs`` (parents first) on this machine, up to ``jobs`` at once.

    ``start_method`` of the worker processes: default ``fork`` on the CPU, ``spawn`` on CUDA.

    A run starts once its parents are DONE; a failed run's descendants are skipped, other runs go on.
    """
    store = Store(Path(ctx.out))
    pending = {s.run_id: s for s in specs}
    result = take_finished(store, pending, on_done)
    finished = set(result.done)

    def ready() -> list[RunSpec]:
        return [s for s in pending.values() if all(p in finished or (p not in pending and store.is_done(p))
                                                for p in s.parents)]

    def blocked_by_failure(s: RunSpec) -> bool:
        return any(p in result.failed or p in result.skipped for p in s.parents)

    if jobs <= 1:
        torch.set_num_threads(1)
        while pending:
            for s in [s for s in pending.values() if blocked_by_failure(s)]:
                result.skipped.append(s.run_id)
                del pending[s.run_id]
            batch = ready()
            if not batch:
                break
            s = batch[0]
            del pending[s.run_id]
            try:
                execute_run(s, ctx, progress)
            except FunclensError as e:
                result.failed[s.run_id] = str(e)
                continue
            except Exception as e:  # a bug in one run: report it with its trace, let the others go on
                result.failed[s.run_id] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
                continue
            finished.add(s.run_id)
            result.done.append(s.run_id)
            if on_done:
                on_done(s.run_id)
        result.skipped += list(pending)
        return result

    # Forked workers start at once, sharing this process's imports and loaded data set; spawned ones
    # spent 3.5 s each re-importing torch, building a first optimizer and re-reading the data, a
    # tenth of a short study. CUDA does not survive a fork, so GPU runs spawn.
    method = start_method or ("fork" if ctx.device == "cpu" else "spawn")
    if method == "fork":
        _prepare_fork(specs, ctx)
    mpctx = mp.get_context(method)
    # A plain pipe, not a Manager: a Manager's server process outlives a killed study. A worker
    # killed while writing to it breaks the whole pool anyway (the study then fails, runs kept).
    q = mpctx.SimpleQueue()
    pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mpctx, initializer=_worker_init,
                                  initargs=(q, os.getpid()))
    running: dict[cf.Future, str] = {}
    try:
        while pending or running:
            for s in [s for s in pending.values() if blocked_by_failure(s)]:
                result.skipped.append(s.run_id)
                del pending[s.run_id]
            for s in ready():
                if len(running) >= jobs:
                    break
                del pending[s.run_id]
                running[pool.submit(_worker_run, s, ctx)] = s.run_id
            if not running:
                break
            done, _ = cf.wait(list(running), timeout=0.1, return_when=cf.FIRST_COMPLETED)
            _drain(q, progress)
            for fut in done:
                rid = running.pop(fut)
                try:
                    _, err = fut.result()
                except Exception as e:  # the worker process died (killed, out of memory)
                    err = f"worker process died ({type(e).__name__})"
                if err:
                    result.failed[rid] = err
                else:
                    finished.add(rid)
                    result.done.append(rid)
                    if on_done:
                        on_done(rid)
        _drain(q, progress)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        q.close()
    result.skipped += list(pending)
    return result


def _prepare_fork(specs: list[RunSpec], ctx: RunContext) -> None:
    """Do here, once, the start-up work every forked worker would otherwise repeat."""
    import funclens.compress  # noqa: F401
    import funclens.train  # noqa: F401

    # torch imports its optimizer machinery (a second) when the first optimizer is built.
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    if specs:
        preload_dataset(specs[0].data, ctx)


def _drain(q, progress: ProgressFn | None) -> None:
    while True:
        try:
            if q.empty():
                return
            ev = q.get()
        except (EOFError, OSError):
            return
        if progress is not None:
            progress(*ev)
