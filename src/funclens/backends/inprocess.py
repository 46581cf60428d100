"""The in-process backend: runs one submitted run at a time, in this process, on one thread.

Example:
    >>> import tempfile
    >>> from funclens.config import DataCfg, ModelCfg, RunSpec, TrainCfg
    >>> from funclens.execute import RunContext
    >>> b = InProcessBackend(RunContext(out=tempfile.mkdtemp()))
    >>> b.start(1, None)
    >>> b.submit(RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(epochs=1)))
    >>> [o.ok for o in b.wait(0.1)]
    [True]
    >>> b.close()
"""

from __future__ import annotations

import torch

from funclens.config import RunSpec
from funclens.execute import ProgressFn, RunContext
from funclens.schedule import Outcome, attempt


class InProcessBackend:
    """Computes each submitted run when waited on; ``progress`` is called live, from this thread."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._queue: list[RunSpec] = []
        self._progress: ProgressFn | None = None

    def start(self, workers: int, progress: ProgressFn | None) -> None:
        # One thread, as in every worker process: the bytes of a run never depend on where it ran.
        torch.set_num_threads(1)
        self._progress = progress

    def submit(self, spec: RunSpec) -> None:
        self._queue.append(spec)

    def wait(self, timeout: float) -> list[Outcome]:
        if not self._queue:
            return []
        return [attempt(self._queue.pop(0), self.ctx, self._progress)]

    def close(self) -> None:
        self._queue.clear()
