"""`--executor ray` on a real local Ray cluster: the same bytes as the local executor, through a killed worker.

Each `funclens study --executor ray` here starts its own local cluster (one CPU per core) and stops it when
done, so no cluster outlives a test and no process is killed by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SMALL_STUDY, run_cli
from funclens.backends import ray as ray_backend
from funclens.backends.ray import RayBackend
from funclens.config import FunclensError, load_study_toml
from funclens.execute import RunContext
from funclens.plan import plan
from funclens.schedule import run_plan
from funclens.store import Store

EPOCHS = 20  # about 0.1 s per epoch on digits: a training run lasts long enough to be killed mid-way
# A fresh cluster of this machine, never one a `ray start` left behind; no usage report, no token in ~/.ray.
RAY_ENV = {"RAY_ADDRESS": "local", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def pred_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "runs").rglob("preds/*.npy"))}


def done_runs(out: Path) -> list[str]:
    return sorted(p.parent.name for p in (out / "runs").glob("*/DONE"))


@pytest.fixture(scope="module")
def study_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("ray_study") / "small.toml"
    p.write_text(SMALL_STUDY.replace("epochs = 3", f"epochs = {EPOCHS}"))
    return p


@pytest.fixture(scope="module")
def reference(study_file: Path) -> Path:
    """The study computed by the local executor, one run at a time."""
    out = study_file.parent / "local"
    r = run_cli("study", str(study_file), "--out", str(out), "--no-report", "--jobs", "1")
    assert r.returncode == 0, r.stderr
    return out


def test_ray_executor_gives_the_local_executors_bytes(tmp_path, study_file, reference):
    out = tmp_path / "ray"
    r = run_cli("study", str(study_file), "--out", str(out), "--no-report", "--executor", "ray", env=RAY_ENV,
                timeout=900)  # a limit for a hung cluster, not a speed target
    assert r.returncode == 0, r.stderr
    assert done_runs(out) == done_runs(reference)
    assert pred_files(out) == pred_files(reference)


def _ray_worker_running(run_id: str, session: int) -> int | None:
    """PID of the Ray worker whose process title names ``run_id``, among the processes of ``session``."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            title = (d / "cmdline").read_bytes()
            stat = (d / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # Ray sets a task's worker title to ray::<task name>; RayBackend names tasks funclens:<run id>.
        # Field 6 of stat (after the parenthesised command) is the session id: only the study's own processes.
        if title.startswith(f"ray::funclens:{run_id}".encode()) and int(stat.rsplit(")", 1)[1].split()[3]) == session:
            return int(d.name)
    return None


def test_a_killed_ray_worker_is_retried_and_resumes_from_its_last_epoch(tmp_path, study_file, reference):
    out = tmp_path / "ray"
    log = tmp_path / "study.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "funclens", "study", str(study_file), "--out", str(out),
                                 "--no-report", "--executor", "ray"], stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "PYTHONHASHSEED": "0", **RAY_ENV}, start_new_session=True)
    try:
        killed = None
        deadline = time.time() + 120
        while killed is None and time.time() < deadline and proc.poll() is None:
            for run in sorted((out / "runs").glob("train_*")):
                epochs = sorted(run.glob("preds/ep_*.npy"))
                # A checkpoint on disk covers ep_001 at least; with epochs to spare, the task is mid-run.
                if not (run / "checkpoint.pt").exists() or not epochs or len(epochs) > EPOCHS // 2:
                    continue
                pid = _ray_worker_running(run.name, proc.pid)
                if pid is not None:
                    first = run / "preds" / "ep_001.npy"
                    before = first.stat()
                    os.kill(pid, signal.SIGKILL)
                    killed = (run, first, before)
                    break
            time.sleep(0.02)
        assert killed is not None, f"no training run's Ray worker was caught mid-run:\n{log.read_text()}"
        assert proc.wait(timeout=900) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    run, first, before = killed
    assert (run / "DONE").exists()
    # Resumed, not restarted: the epoch finished before the kill was never written again.
    after = first.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert done_runs(out) == done_runs(reference)
    assert pred_files(out) == pred_files(reference)
    r = run_cli("verify", str(out))
    assert r.returncode == 0, r.stderr


def test_a_run_whose_folder_the_driver_cannot_see_fails_with_a_clear_message(tmp_path, small_study, monkeypatch):
    # A store that is not shared: workers write DONE on their disk, the driver's view never shows it.
    for k, v in RAY_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(ray_backend, "VISIBLE_WITHIN_S", 0.5)
    monkeypatch.setattr(Store, "is_done", lambda self, run_id: False)  # this process only, not the workers
    planned = plan(load_study_toml(small_study))
    base = next(p.spec for p in planned if p.role == "base")
    child = next(p.spec for p in planned if base.run_id in p.spec.parents)
    out = tmp_path / "o"
    result = run_plan([base, child], RayBackend(RunContext(out=str(out))), store=Store(out), jobs=2)

    assert result.done == []
    assert result.skipped == [child.run_id]
    assert result.failed[base.run_id].fault == "input"
    err = result.failed[base.run_id].message
    assert err.startswith(f"run {base.run_id} finished on node ")
    assert err.endswith("but its folder is not visible here: --out must be on a filesystem shared by every node")
    assert (out / "runs" / base.run_id / "DONE").is_file()  # the worker did finish it


def test_without_ray_installed_the_ray_executor_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(FunclensError, match=r"^--executor ray needs Ray: pip install funclens\[ray\]$"):
        RayBackend(RunContext(out=str(tmp_path))).start(1, None)


def _dead_address() -> str:
    with socket.socket() as s:  # a port nothing listens on once this socket closes
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_an_address_nothing_answers_is_bad_input_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    dead = _dead_address()
    t = time.monotonic()
    with pytest.raises(FunclensError, match=f"^no Ray cluster answers at {dead}: "):
        RayBackend(RunContext(out=str(tmp_path)), address=dead).start(1, None)
    assert time.monotonic() - t < 30  # Ray itself would wait for the dead cluster without end


def test_a_dead_cluster_recorded_by_ray_start_is_passed_over_for_a_fresh_one(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    dead = _dead_address()
    monkeypatch.setattr(ray_backend, "_recorded_cluster", lambda: dead)
    assert ray_backend._resolve_address(None) == "local"
    with pytest.raises(FunclensError, match="^--ray-address auto: no running Ray cluster"):
        ray_backend._resolve_address("auto")
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert ray_backend._resolve_address(None) == "local"
