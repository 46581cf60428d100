"""The process-pool backend: runs in worker processes of one thread each on this machine.

Small models are overhead-bound, and two single-thread processes train them faster than one process
with two threads; one thread per run also makes results independent of the number of workers.
Workers are forked on the CPU (they start at once, sharing this process's imports and loaded data
set) and spawned for CUDA, which does not survive a fork.

Example (two runs side by side, one per worker):
    >>> import tempfile
    >>> from funclens.config import DataCfg, ModelCfg, RunSpec, TrainCfg
    >>> from funclens.execute import RunContext
    >>> pool = PoolBackend(RunContext(out=tempfile.mkdtemp()))
    >>> pool.start(2, None)
    >>> for seed in (0, 1):
    ...     pool.submit(RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(epochs=1, seed=seed)))
    >>> outcomes = []
    >>> while len(outcomes) < 2:
    ...     outcomes += pool.wait(0.1)
    >>> sorted(o.ok for o in outcomes)
    [True, True]
    >>> pool.close()
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import torch

from funclens.config import DataCfg, RunSpec
from funclens.execute import ProgressFn, RunContext, preload_dataset
from funclens.schedule import Outcome, attempt, worker_died

PROGRESS_EVERY_S = 0.2  # a worker reports its step at most this often (and at every epoch's end)

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


def _worker_run(spec: RunSpec, ctx: RunContext) -> Outcome:
    last = [0.0]

    def progress(rid: str, epoch: int, epochs: int, step: int, steps: int) -> None:
        now = time.monotonic()
        if step == steps or now - last[0] > PROGRESS_EVERY_S:
            last[0] = now
            _QUEUE.put((rid, epoch, epochs, step, steps))

    return attempt(spec, ctx, progress)


def _prepare_fork(data: DataCfg, ctx: RunContext) -> None:
    """Do here, once, the start-up work every forked worker would otherwise repeat."""
    import funclens.compress  # noqa: F401
    import funclens.train  # noqa: F401

    # torch imports its optimizer machinery (a second) when the first optimizer is built.
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    preload_dataset(data, ctx)


class PoolBackend:
    """Worker processes, ``start_method`` ``fork`` or ``spawn`` (default: fork on the CPU, spawn for CUDA)."""

    def __init__(self, ctx: RunContext, start_method: str | None = None) -> None:
        self.ctx = ctx
        # Spawned workers spent 3.5 s each re-importing torch, building a first optimizer and
        # re-reading the data, a tenth of a short study; forked ones start at once.
        self.method = start_method or ("fork" if ctx.device == "cpu" else "spawn")
        self._pool: cf.ProcessPoolExecutor | None = None
        self._queue = None
        self._progress: ProgressFn | None = None
        self._running: dict[cf.Future, str] = {}
        self._lost: list[Outcome] = []  # runs a broken pool refused, reported at the next wait
        self._prepared = False

    def start(self, workers: int, progress: ProgressFn | None) -> None:
        mpctx = mp.get_context(self.method)
        # A plain pipe, not a Manager: a Manager's server process outlives a killed study. A worker
        # killed while writing to it breaks the whole pool anyway (the study then fails, runs kept).
        self._queue = mpctx.SimpleQueue()
        self._progress = progress
        self._pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mpctx, initializer=_worker_init,
                                            initargs=(self._queue, os.getpid()))

    def submit(self, spec: RunSpec) -> None:
        assert self._pool is not None, "start() first"
        if self.method == "fork" and not self._prepared:
            _prepare_fork(spec.data, self.ctx)  # before the first submit: the pool forks its workers then
            self._prepared = True
        try:
            self._running[self._pool.submit(_worker_run, spec, self.ctx)] = spec.run_id
        except BrokenProcessPool:
            self._lost.append(worker_died(spec.run_id, "not started: a worker process of the pool died"))

    def wait(self, timeout: float) -> list[Outcome]:
        done: set[cf.Future] = set()
        if self._running:
            done, _ = cf.wait(list(self._running), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        self._drain()  # before the outcomes: a run's last events never re-open its progress bar
        outcomes, self._lost = self._lost, []
        for fut in done:
            rid = self._running.pop(fut)
            try:
                outcomes.append(fut.result())
            except Exception as e:  # the worker process died (killed, out of memory)
                outcomes.append(worker_died(rid, f"worker process died ({type(e).__name__})"))
        return outcomes

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._drain()
            self._queue.close()
            self._pool = None

    def _drain(self) -> None:
        q = self._queue
        while q is not None:
            try:
                if q.empty():
                    return
                ev = q.get()
            except (EOFError, OSError):
                return
            if self._progress is not None:
                self._progress(*ev)
