"""Killing `funclens study` mid-run and starting it again gives the bytes of an uninterrupted run."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import torch

from conftest import run_cli


def pred_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "runs").rglob("preds/*.npy"))}


def base_run(study_file: Path) -> str:
    from funclens.config import load_study_toml
    from funclens.execute import RunContext
    from funclens.plan import plan
    from funclens.study import pin_data

    study = pin_data(load_study_toml(study_file), RunContext(out="."))  # as `funclens study` plans it
    return next(p.run_id for p in plan(study) if p.role == "base")


def killed_study(study_file: Path, out: Path, kill_after: str, *extra: str) -> int:
    """`funclens study` with the kill hook set; returns its exit status (negative: the signal)."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "FUNCLENS_KILL_AFTER": kill_after}
    proc = subprocess.run([sys.executable, "-m", "funclens", "study", str(study_file), "--out", str(out),
                           "--no-report", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=env, start_new_session=True, timeout=300)
    return proc.returncode


def checkpoint_epoch(out: Path, run_id: str) -> int:
    return int(torch.load(out / "runs" / run_id / "checkpoint.pt", weights_only=True)["epoch"])


def assert_resumes_to_the_reference(study_file: Path, out: Path, ref: Path) -> None:
    r = run_cli("study", str(study_file), "--out", str(out), "--no-report", "--jobs", "2")
    assert r.returncode == 0, r.stderr
    assert pred_files(out) == pred_files(ref)
    assert sorted(p.parent.name for p in (out / "runs").glob("*/DONE")) == \
        sorted(p.parent.name for p in (ref / "runs").glob("*/DONE"))
    assert run_cli("verify", str(out)).returncode == 0


def test_a_study_killed_after_an_epoch_resumes_byte_identical(tmp_path, small_study, small_ref):
    base = base_run(small_study)
    out = tmp_path / "killed"
    # The whole process group dies once the base's second epoch is on disk, workers mid-epoch included.
    assert killed_study(small_study, out, f"{base}:2:group", "--jobs", "2") == -signal.SIGKILL
    run = out / "runs" / base
    assert sorted(p.name for p in (run / "preds").glob("*.npy")) == ["ep_001.npy", "ep_002.npy"]
    assert not (run / "DONE").exists() and checkpoint_epoch(out, base) == 2
    first = (run / "preds" / "ep_001.npy").stat()
    assert_resumes_to_the_reference(small_study, out, small_ref)
    # Resumed at epoch 3, not restarted: the epochs finished before the kill were never written again.
    assert (run / "preds" / "ep_001.npy").stat().st_mtime_ns == first.st_mtime_ns


def test_a_killed_worker_fails_its_run_as_internal_and_the_rerun_resumes_it(tmp_path, small_study, small_ref):
    base = base_run(small_study)
    out = tmp_path / "killed"
    # Only the worker computing the base dies: the study reports a dead worker (a fault, exit 1).
    env = {"FUNCLENS_KILL_AFTER": f"{base}:1"}
    r = run_cli("study", str(small_study), "--out", str(out), "--no-report", "--jobs", "2", env=env)
    assert r.returncode == 1, r.stderr
    assert f"run {base} failed: worker process died" in r.stderr and "Traceback" not in r.stderr
    assert checkpoint_epoch(out, base) == 1 and not (out / "runs" / base / "DONE").exists()
    assert_resumes_to_the_reference(small_study, out, small_ref)


def test_a_rerun_of_a_finished_study_recomputes_nothing(tmp_path, small_study, small_ref):
    out = tmp_path / "o"
    shutil.copytree(small_ref, out)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    assert run_cli("study", str(small_study), "--out", str(out), "--no-report").returncode == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()} == stamps


def test_a_damaged_finished_run_is_recomputed_identically(tmp_path, small_study, small_ref):
    out = tmp_path / "o"
    shutil.copytree(small_ref, out)
    before = pred_files(out)
    victim = sorted((out / "runs").glob("train_*/preds/ep_002.npy"))[0]
    victim.write_bytes(victim.read_bytes()[:50])
    assert run_cli("verify", str(out)).returncode == 2
    assert run_cli("study", str(small_study), "--out", str(out), "--no-report").returncode == 0
    assert pred_files(out) == before


def test_spawned_workers_give_the_forked_workers_bytes(tmp_path, small_study, small_ref):
    # CUDA runs spawn their workers (CUDA does not survive a fork); on the CPU they fork. Same bytes.
    from funclens.backends.pool import PoolBackend
    from funclens.config import load_study_toml
    from funclens.execute import RunContext
    from funclens.plan import plan
    from funclens.schedule import run_plan
    from funclens.store import Store
    from funclens.study import pin_data

    study = load_study_toml(small_study)
    study = pin_data(study, RunContext(out=str(tmp_path)))  # as `funclens study` plans it
    out = tmp_path / "spawned"
    backend = PoolBackend(RunContext(out=str(out)), start_method="spawn")
    result = run_plan([p.spec for p in plan(study)], backend, store=Store(out), jobs=2)
    assert not result.failed and not result.skipped
    assert pred_files(out) == pred_files(small_ref)
