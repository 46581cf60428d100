"""The Ray backend: the runs of a plan spread over the nodes of a Ray cluster.

Every run is one Ray task that calls :func:`funclens.schedule.attempt`, the very function the local
backends call, with one thread per task, so a run holds the same bytes whichever backend and whichever
node computed it. Scheduling stays on the driver (the ``funclens study`` process), in
:func:`funclens.schedule.run_plan`: a run is submitted once all its parents are DONE. A worker that
dies (killed, node lost) is retried by Ray up to ``MAX_RETRIES`` times, and the retry resumes from the
run's last finished epoch because ``execute_run`` resumes from the checkpoint in the store.

    ray start --head --port=6379 --num-cpus 8            # on the head node
    ray start --address=HEAD:6379                        # on every other node
    funclens study --preset paper-cifar10 --executor ray --ray-address HEAD:6379 \\
        --out /shared/results/paper-cifar10 --device auto

**The store must be on a filesystem every node sees** (NFS, Lustre, a mounted bucket), at the same
path: tasks write their run folders where they run, and the driver, the children of a run and
``funclens report`` read them where they run. Without a shared filesystem, a run computed on another
node writes its folder on that node's disk, its DONE never appears on the driver's, and the driver
fails that run with "run X finished on node N but its folder is not visible here" (after a grace
period for the attribute caches of network filesystems); its descendants are skipped. The data files
(``--data-dir``, or ``$FUNCLENS_DATA`` on the driver) should be shared or present on every node too;
otherwise each node reads its own default folder, downloading when online. funclens itself must be
installed, at the same version, on every node: the tasks import it there.

Ray is optional (``pip install funclens[ray]``) and imported only here, so the local backends work
without it.

Example:
    >>> backend = RayBackend(RunContext(out="/shared/results/quick"), address="head:6379")
    >>> backend.ctx.out
    '/shared/results/quick'
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from funclens.config import FunclensError, RunSpec
from funclens.execute import ProgressFn, RunContext
from funclens.schedule import Outcome, attempt, worker_died
from funclens.store import Store

MAX_RETRIES = 3  # Ray reruns a task whose worker process died this many times; each rerun resumes
PROGRESS_EVERY_S = 0.5  # a task reports its step at most this often (and at every epoch's end)
WAIT_S = 0.25  # how long the driver waits for finished tasks before draining progress again
# A network filesystem may show a file written on another node only after its attribute cache
# expires (NFS: acdirmin, 30 s by default); a run is declared invisible only after this long.
VISIBLE_WITHIN_S = 60.0
CONNECT_S = 5.0  # how long a cluster address may take to accept a connection


class _ProgressSink:
    """A tiny actor that holds progress events until the driver collects them."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def put(self, event: tuple) -> None:
        self.events.append(event)

    def drain(self) -> list[tuple]:
        events, self.events = self.events, []
        return events


def _node_name() -> str:
    """``host (ip)`` of the node this process runs on, for messages."""
    try:
        import ray

        ip = ray.util.get_node_ip_address()
    except Exception:  # outside Ray, or no address to report: the host name still names the node
        ip = "?"
    return f"{socket.gethostname()} ({ip})"


def _ray_task(spec: RunSpec, ctx: RunContext, sink: Any) -> tuple[Outcome, str]:
    """One run inside a Ray worker. Returns its outcome and the node's name.

    Errors are returned rather than raised so that Ray retries only dead workers, never a run that
    failed on its own (bad data, a bug): rerunning those would fail the same way.

    Args:
        spec: the run to compute.
        ctx: where the store and the data are; the same on every node.
        sink: handle of the driver's progress actor, or None.
    """
    torch.set_num_threads(1)  # as the local backends: one thread per run, results independent of the node
    last = [0.0]

    def progress(rid: str, epoch: int, epochs: int, step: int, steps: int) -> None:
        now = time.monotonic()
        if sink is None or not (step == steps or now - last[0] >= PROGRESS_EVERY_S):
            return
        last[0] = now
        with contextlib.suppress(Exception):  # progress is cosmetic: never fail a run over it
            sink.put.remote((rid, epoch, epochs, step, steps))

    return attempt(spec, ctx, progress), _node_name()


def _shared_ctx(ctx: RunContext) -> RunContext:
    """``ctx`` with the paths every node must read the same way: absolute, since a worker's current
    folder is not the driver's, and the driver's ``$FUNCLENS_DATA``, which remote nodes lack."""
    data_dir = ctx.data_dir or os.environ.get("FUNCLENS_DATA") or None
    return dataclasses.replace(ctx, out=str(Path(ctx.out).resolve()),
                               data_dir=str(Path(data_dir).resolve()) if data_dir else None)


def _visible(store: Store, run_id: str) -> bool:
    """Whether the driver sees the run's DONE."""
    # Listing the folder makes a network filesystem revalidate it, rather than answer from a stale cache.
    with contextlib.suppress(OSError):
        os.listdir(store.run_dir(run_id))
    return store.is_done(run_id)


def _reachable(address: str) -> bool:
    """Whether something accepts connections at ``host:port`` (a cluster head's GCS port)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=CONNECT_S):
            return True
    except ValueError:  # not host:port: leave the judgement to Ray
        return True
    except OSError:
        return False


def _recorded_cluster() -> str | None:
    """The address Ray recorded for the last `ray start` on this machine, if any."""
    try:
        from ray._private.services import find_bootstrap_address  # private, hence the broad except

        return find_bootstrap_address(None) or None
    except Exception:
        return None


def _resolve_address(address: str | None) -> str:
    """What to pass to ``ray.init``: a live cluster's address, or ``"local"`` to start one.

    Ray's own default (no address) joins the cluster recorded by the last `ray start` on this machine
    even when that cluster is gone, and then waits for it (minutes, measured with Ray 2.60); so it is
    probed first, and a dead one is passed over for a fresh local cluster. An explicit address that
    nothing answers is bad input, reported at once rather than waited on.
    """
    addr = address or os.environ.get("RAY_ADDRESS") or None
    if addr is None or addr == "auto":
        recorded = _recorded_cluster()
        if recorded and _reachable(recorded):
            return recorded
        if addr == "auto":
            raise FunclensError("--ray-address auto: no running Ray cluster on this machine (ray start --head)")
        return "local"
    if addr != "local" and "://" not in addr and not _reachable(addr):
        raise FunclensError(f"no Ray cluster answers at {addr}: start it with `ray start --head` "
                            "or fix --ray-address")
    return addr


def _init_ray(address: str | None) -> tuple[Any, bool]:
    """Import Ray and connect to (or start) a cluster. Returns (the ray module, whether we initialised it)."""
    try:
        import ray
    except ImportError:
        raise FunclensError("--executor ray needs Ray: pip install funclens[ray]") from None
    if ray.is_initialized():  # a caller's own session (Python use): use it, and leave it open
        return ray, False
    address = _resolve_address(address)
    try:
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False,
                 log_to_driver=False,  # tasks report their errors in their results; worker logs stay in Ray's
                 logging_level=logging.ERROR)  # no banners or token notices among the progress bars
    except Exception as e:
        where = f" at {address}" if address != "local" else ""
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FunclensError(f"cannot start or join a Ray cluster{where}: {first}") from None
    return ray, True


class RayBackend:
    """Runs as Ray tasks; connects to (or starts) a cluster at :meth:`start`, stops what it started at :meth:`close`.

    Args:
        ctx: store, data and device; ``ctx.out`` must be on a filesystem shared by every node.
        address: ``host:port`` of a running cluster; None uses ``$RAY_ADDRESS``, else joins the live
            cluster `ray start` left on this machine, else starts a local one (stopped at the end).
    """

    def __init__(self, ctx: RunContext, address: str | None = None) -> None:
        self.ctx = _shared_ctx(ctx)
        self.address = address
        self.store = Store(Path(self.ctx.out))
        self._ray: Any = None
        self._initialised = False
        self._task: Any = None
        self._sink: Any = None
        self._progress: ProgressFn | None = None
        self._running: dict[Any, str] = {}  # object ref -> run id
        self._unseen: dict[str, tuple[str, float]] = {}  # run id -> (node it ran on, deadline to appear here)

    def start(self, workers: int, progress: ProgressFn | None) -> None:
        # Ray places the tasks on the cluster's CPUs itself; ``workers`` bounds only what is submitted.
        self._ray, self._initialised = _init_ray(self.address)
        self._progress = progress
        self._task = self._ray.remote(num_cpus=1, num_gpus=1 if self.ctx.device == "cuda" else 0,
                                      max_retries=MAX_RETRIES, retry_exceptions=False)(_ray_task)
        if progress is not None:
            self._sink = self._ray.remote(num_cpus=0, max_restarts=0)(_ProgressSink).remote()

    def submit(self, spec: RunSpec) -> None:
        # The name shows in `ray list tasks` and in the worker's process title: ray::funclens:<id>
        ref = self._task.options(name=f"funclens:{spec.run_id}").remote(spec, self.ctx, self._sink)
        self._running[ref] = spec.run_id

    def wait(self, timeout: float) -> list[Outcome]:
        if self._running:
            refs, _ = self._ray.wait(list(self._running), num_returns=len(self._running),
                                     timeout=max(timeout, WAIT_S))
        else:
            refs = []
            time.sleep(max(timeout, WAIT_S))
        self._drain()  # before the outcomes: a run's last events never re-open its progress bar
        outcomes = [o for o in (self._collect(ref) for ref in refs) if o is not None]
        return outcomes + self._appeared()

    def close(self) -> None:
        ray = self._ray
        if ray is None:
            return
        for ref in self._running:  # interrupted or crashed: leave no task writing to a store we no longer hold
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        if self._sink is not None:
            with contextlib.suppress(Exception):
                ray.kill(self._sink)
        if self._initialised:
            # Stops the cluster this backend started; from a cluster it joined, it only disconnects.
            ray.shutdown()
        self._ray = None

    def _collect(self, ref: Any) -> Outcome | None:
        """The outcome of a finished task, or None while its run is not yet visible here."""
        ray, rid = self._ray, self._running.pop(ref)
        try:
            outcome, node = ray.get(ref)
        except ray.exceptions.WorkerCrashedError as e:
            return worker_died(rid, f"its Ray worker died {MAX_RETRIES + 1} time(s) ({type(e).__name__}); "
                                    "see the Ray logs of its node")
        except ray.exceptions.RayError as e:  # out of memory, node lost, cancelled, ...
            first = (str(e).strip().splitlines() or [""])[0]
            return worker_died(rid, f"Ray could not run it ({type(e).__name__}): {first}")
        if not outcome.ok or _visible(self.store, rid):
            return outcome
        self._unseen[rid] = (node, time.monotonic() + VISIBLE_WITHIN_S)
        return None

    def _appeared(self) -> list[Outcome]:
        """Runs finished elsewhere that became visible here, or whose grace period ran out."""
        outcomes = []
        for rid, (node, deadline) in list(self._unseen.items()):
            if _visible(self.store, rid):
                outcomes.append(Outcome(rid, True))
            elif time.monotonic() >= deadline:
                outcomes.append(Outcome(rid, False, "input", (
                    f"run {rid} finished on node {node} but its folder is not visible here: "
                    "--out must be on a filesystem shared by every node")))
            else:
                continue
            del self._unseen[rid]
        return outcomes

    def _drain(self) -> None:
        if self._sink is None:
            return
        try:
            events = self._ray.get(self._sink.drain.remote(), timeout=10)
        except Exception:  # the actor is gone: runs go on without step-level progress
            self._sink = None
            return
        if self._progress is not None:
            for ev in events:
                self._progress(*ev)
