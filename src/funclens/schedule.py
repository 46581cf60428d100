"""The one scheduler: which runs of a plan are pending, ready, running, done, failed or skipped.

:func:`run_plan` owns that state for every backend (in this process, a process pool, a Ray cluster): a
run is submitted once all its parents are DONE, at most ``jobs`` at a time; a failed run's descendants
are skipped and the other runs go on; a run already DONE with intact files is never submitted again.
A backend only submits runs and waits for their :class:`Outcome`.

A run's error is captured once, on the worker's side, by :func:`attempt`: an :class:`Outcome` whose
``fault`` says whose problem it is. ``"input"`` is a :class:`~funclens.errors.FunclensError` (bad
data, a file that cannot be written: the command exits 2); ``"internal"`` is any other exception, or
a worker process that died (a fault of funclens: exit 1, the traceback in ``detail``).

Example:
    >>> import tempfile
    >>> from funclens.backends.inprocess import InProcessBackend
    >>> from funclens.config import DataCfg, ModelCfg, RunSpec, TrainCfg
    >>> from funclens.execute import RunContext
    >>> from funclens.store import Store
    >>> out = tempfile.mkdtemp()
    >>> spec = RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(epochs=1))
    >>> result = run_plan([spec], InProcessBackend(RunContext(out=out)), store=Store(out), jobs=1)
    >>> result.done == [spec.run_id], result.failed, result.skipped
    (True, {}, [])
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Callable, Protocol

from funclens.config import RunSpec
from funclens.errors import ConfigError, FunclensError
from funclens.execute import ProgressFn, RunContext, execute_run
from funclens.store import Store

WAIT_S = 0.1  # how long one wait for finished runs lasts before the scheduler looks again


@dataclass(frozen=True)
class Outcome:
    """How one attempt at a run ended.

    ``fault`` is None on success, ``"input"`` for the user's input (exit 2) and ``"internal"`` for a
    fault of funclens (exit 1). ``message`` is one line; ``detail`` holds the traceback of an
    internal fault (shown with ``--debug``).
    """

    run_id: str
    ok: bool
    fault: str | None = None
    message: str = ""
    detail: str = ""


def attempt(spec: RunSpec, ctx: RunContext, progress: ProgressFn | None = None) -> Outcome:
    """Compute one run and say how it ended; never raises for the run's own errors.

    Every backend calls this on the worker's side, so an error is classified the same way wherever
    the run was computed.

    Args:
        spec: the run.
        ctx: where the store and the data are.
        progress: called as ``progress(run_id, epoch, epochs, step, steps)``.

    Example:
        >>> import tempfile
        >>> from funclens.config import DataCfg, ModelCfg, RunSpec, QuantCfg
        >>> orphan = RunSpec("quant", DataCfg("digits"), ModelCfg("lenet"), parent="train_000000000000",
        ...                  compress=QuantCfg())
        >>> o = attempt(orphan, RunContext(out=tempfile.mkdtemp()))
        >>> o.ok, o.fault
        (False, 'input')
    """
    try:
        execute_run(spec, ctx, progress)
    except FunclensError as e:
        return Outcome(spec.run_id, False, "input", " ".join(str(e).split()))
    except Exception as e:  # a bug in one run: named with its trace, the other runs go on
        return Outcome(spec.run_id, False, "internal", f"{type(e).__name__}: {' '.join(str(e).split())}",
                       traceback.format_exc())
    return Outcome(spec.run_id, True)


def worker_died(run_id: str, why: str) -> Outcome:
    """The outcome of a run whose worker process died before it could report (killed, out of memory).

    Example:
        >>> worker_died("train_abc", "worker process died (BrokenProcessPool)").fault
        'internal'
    """
    return Outcome(run_id, False, "internal", why)


class Backend(Protocol):
    """Where runs are computed. It submits and waits; the scheduler decides what and when."""

    def start(self, workers: int, progress: ProgressFn | None) -> None:
        """Prepare ``workers`` slots; ``progress`` is called on this process only."""

    def submit(self, spec: RunSpec) -> None:
        """Start computing ``spec`` (its parents are DONE)."""

    def wait(self, timeout: float) -> list[Outcome]:
        """The outcomes of submitted runs that ended within about ``timeout`` seconds."""

    def close(self) -> None:
        """Release the workers; runs still running are stopped."""


@dataclass
class PlanResult:
    """What :func:`run_plan` did: runs DONE (in the order they ended), failed (with their outcome), and
    skipped (a descendant of a failed or skipped run)."""

    done: list[str] = field(default_factory=list)
    failed: dict[str, Outcome] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


@dataclass
class _State:
    planned: set[str]
    pending: dict[str, RunSpec]
    running: set[str] = field(default_factory=set)
    result: PlanResult = field(default_factory=PlanResult)

    def skip_blocked(self) -> None:
        """Skip every pending run with a failed or skipped parent, down the whole tree."""
        while True:
            bad = set(self.result.failed) | set(self.result.skipped)
            blocked = [s for s in self.pending.values() if any(p in bad for p in s.parents)]
            if not blocked:
                return
            for s in blocked:
                self.result.skipped.append(s.run_id)
                del self.pending[s.run_id]

    def ready(self, store: Store) -> list[RunSpec]:
        """Pending runs whose parents are all DONE (a parent outside the plan must be DONE in the store)."""
        done = set(self.result.done)
        return [s for s in self.pending.values()
                if all(p in done or (p not in self.planned and store.is_done(p)) for p in s.parents)]


def _take_finished(state: _State, store: Store, on_done: Callable[[str], None] | None) -> None:
    """Move the runs already DONE with intact files out of ``pending``: they are never submitted."""
    for rid in list(state.pending):
        if store.is_done(rid) and not store.verify_run(rid):
            del state.pending[rid]
            state.result.done.append(rid)
            if on_done:
                on_done(rid)


def run_plan(specs: list[RunSpec], backend: Backend, *, store: Store, jobs: int,
             on_done: Callable[[str], None] | None = None, progress: ProgressFn | None = None) -> PlanResult:
    """Compute every run of ``specs`` not yet DONE, parents before children, up to ``jobs`` at once.

    A failed run's descendants are skipped and the other runs go on. The backend is started with
    ``min(jobs, runs left)`` workers, and not at all when every run is already DONE.

    Args:
        specs: the planned runs, parents before children.
        backend: where the runs are computed (see ``funclens.backends``).
        store: the study's store, for the DONE runs.
        jobs: the most runs submitted at once (>= 1, else a ConfigError).
        on_done: called with each run's id once it is DONE (also for runs DONE before).
        progress: called as ``progress(run_id, epoch, epochs, step, steps)`` for running runs only.

    Example:
        >>> import tempfile
        >>> from funclens.backends.inprocess import InProcessBackend
        >>> from funclens.execute import RunContext
        >>> out = tempfile.mkdtemp()
        >>> run_plan([], InProcessBackend(RunContext(out=out)), store=Store(out), jobs=4).done
        []
    """
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    state = _State({s.run_id for s in specs}, {s.run_id: s for s in specs})
    _take_finished(state, store, on_done)
    if not state.pending:
        return state.result

    def live(rid: str, *ev: int) -> None:  # a run's late events, after its outcome, are dropped
        if progress is not None and rid in state.running:
            progress(rid, *ev)

    backend.start(max(1, min(jobs, len(state.pending))), live if progress is not None else None)
    try:
        _loop(state, backend, store, jobs, on_done)
    finally:
        backend.close()
    state.result.skipped += list(state.pending)  # waiting on parents that will never finish
    return state.result


def _loop(state: _State, backend: Backend, store: Store, jobs: int,
          on_done: Callable[[str], None] | None) -> None:
    while state.pending or state.running:
        state.skip_blocked()
        for s in state.ready(store)[:max(0, jobs - len(state.running))]:
            del state.pending[s.run_id]
            state.running.add(s.run_id)
            backend.submit(s)
        if not state.running:
            return
        for outcome in backend.wait(WAIT_S):
            state.running.discard(outcome.run_id)
            if outcome.ok:
                state.result.done.append(outcome.run_id)
                if on_done:
                    on_done(outcome.run_id)
            else:
                state.result.failed[outcome.run_id] = outcome
