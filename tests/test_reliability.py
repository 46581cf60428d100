"""Nothing lost, nothing half-written reported as done: kills, concurrent studies, full disks."""

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import SMALL_STUDY, run_cli


def study_cmd(toml: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "funclens", "study", str(toml), "--out", str(out), "--no-report", *extra]


def durable_files(out: Path) -> dict[str, bytes]:
    """Every file a run vouches for, except the records of wall time (metrics.json, DONE's timestamp)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "runs").rglob("*"))
            if p.is_file() and p.name not in ("metrics.json", "DONE") and not p.name.startswith(".")}


def _files(out: Path) -> int:
    return sum(1 for _ in (out / "runs").rglob("*")) if (out / "runs").is_dir() else 0


def test_soak_ten_random_sigkills_then_identical_store(tmp_path):
    # The small study with four times the epochs, so that ten kills fit into its work.
    soak = tmp_path / "soak.toml"
    soak.write_text(SMALL_STUDY.replace("epochs = 3", "epochs = 12"))
    ref = tmp_path / "ref"
    r = run_cli("study", str(soak), "--out", str(ref), "--no-report", "--jobs", "1")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "soak"
    rng = random.Random(1234)
    kills = 0
    while kills < 10:
        proc = subprocess.Popen(study_cmd(soak, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        # Kill at a random moment once this attempt has written something: start-up (imports) is
        # most of a short attempt, and a kill there would test nothing.
        before, deadline = _files(out), time.monotonic() + 120
        while proc.poll() is None and _files(out) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is not None:
            break  # finished before this kill: the store is complete
        # Alternate: kill the whole process group, or only the study (its workers are then orphans
        # and must stop by themselves rather than race the restarted study).
        if kills % 2:
            os.kill(proc.pid, signal.SIGKILL)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= 5, "the study finished before enough kills: the test no longer tests anything"
    r = run_cli("study", str(soak), "--out", str(out), "--no-report")
    assert r.returncode == 0, r.stderr
    assert durable_files(out) == durable_files(ref)
    assert run_cli("verify", str(out)).returncode == 0


def test_a_second_study_on_the_same_out_is_refused_naming_the_holder_or_waits(tmp_path):
    long_study = tmp_path / "long.toml"  # long enough to still be running when the second one starts
    long_study.write_text('name = "long"\nseeds = [0, 1]\nquantize = []\nprune = []\n[train]\nepochs = 150\n'
                          '[distill]\nalphas = []\ncontrol = false\n')
    out = tmp_path / "o"
    first = subprocess.Popen(study_cmd(long_study, out, "--jobs", "1"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "runs").glob("*/preds/ep_001.npy")):
        time.sleep(0.05)
    second = run_cli("study", str(long_study), "--out", str(out), "--no-report")
    assert first.poll() is None, "the first study ended too soon to test the lock"
    assert second.returncode == 2 and f"funclens pid {first.pid}" in second.stderr, second.stderr
    waiting = run_cli("study", str(long_study), "--out", str(out), "--no-report", "--wait")
    assert first.wait(300) == 0
    assert waiting.returncode == 0, waiting.stderr
    assert run_cli("verify", str(out)).returncode == 0


def _limit_file_size():
    # 120 kB: config and predictions fit, a LeNet checkpoint (~215 kB) does not, like a disk filling up.
    resource.setrlimit(resource.RLIMIT_FSIZE, (120_000, 120_000))


def test_a_failed_write_fails_the_run_cleanly_and_leaves_no_done(tmp_path, small_study):
    out = tmp_path / "o"
    r = subprocess.run(study_cmd(small_study, out, "--jobs", "1"), capture_output=True, text=True,
                       preexec_fn=_limit_file_size, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "cannot write" in r.stderr and "File too large" in r.stderr and "Traceback" not in r.stderr
    assert not list((out / "runs").glob("*/DONE"))
    assert not list((out / "runs").rglob(".*.tmp"))  # no temporary files left behind
    # With room again, the same command finishes the study.
    assert run_cli("study", str(small_study), "--out", str(out), "--no-report").returncode == 0
    assert run_cli("verify", str(out)).returncode == 0
