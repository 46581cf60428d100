"""Killing `funclens study` mid-run and starting it again gives the bytes of an uninterrupted run."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import run_cli


def pred_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "runs").rglob("preds/*.npy"))}


def test_kill_mid_run_then_resume_is_byte_identical(tmp_path, small_study, small_ref):
    ref = small_ref

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "funclens", "study", str(small_study), "--out", str(out),
                             "--no-report", "--jobs", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    # Kill once the first epoch of some run is on disk but before the study is done.
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "runs").glob("train_*/preds/ep_001.npy")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: workers die mid-epoch too
    proc.wait()
    done_before = len(list((out / "runs").glob("*/DONE")))
    assert done_before < len(list((ref / "runs").glob("*/DONE"))), "killed too late to test a resume"

    r = run_cli("study", str(small_study), "--out", str(out), "--no-report", "--jobs", "2")
    assert r.returncode == 0, r.stderr
    assert pred_files(out) == pred_files(ref)
    assert sorted(p.parent.name for p in (out / "runs").glob("*/DONE")) == \
        sorted(p.parent.name for p in (ref / "runs").glob("*/DONE"))
    assert run_cli("verify", str(out)).returncode == 0


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
    from funclens.config import load_study_toml
    from funclens.data import identified, load_from_cfg
    from funclens.execute import RunContext, run_local
    from funclens.plan import plan

    study = load_study_toml(small_study)
    study = study.replace(data=identified(study.data, load_from_cfg(study.data)))  # as `funclens study` plans it
    out = tmp_path / "spawned"
    result = run_local([p.spec for p in plan(study)], RunContext(out=str(out)), jobs=2, start_method="spawn")
    assert not result.failed and not result.skipped
    assert pred_files(out) == pred_files(small_ref)
