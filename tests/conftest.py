"""Shared fixtures: where the real data files are, and small studies to run end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    """Canonical MNIST and CIFAR-10: shared/data beside the checkout where it exists (see its SOURCES.md),
    else funclens's data cache, where `make test` downloads them (scripts/test-setup.sh)."""
    if os.environ.get("FUNCLENS_SHARED_DATA"):
        return Path(os.environ["FUNCLENS_SHARED_DATA"])
    beside = REPO.parent / "shared" / "data"
    if beside.is_dir():
        return beside
    from funclens.data import default_data_dir

    return default_data_dir()


SHARED_DATA = _shared_data()
FASHION = Path("/usr/share/datasets/fashion-mnist")


def need(path: Path) -> Path:
    """The real data are part of the test contract: missing files fail loudly rather than skip."""
    assert path.exists(), f"test data missing: {path} (see README, 'Data sets')"
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return need(SHARED_DATA)


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    """The real `funclens` command in a subprocess, as a user runs it."""
    e = {**os.environ, "PYTHONHASHSEED": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", "funclens", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=e)


SMALL_STUDY = """
name = "small"
seeds = [0, 1, 2]
quantize = ["16-bit", "8-bit"]
prune = [0.5]
[data]
dataset = "digits"
[train]
epochs = 3
lr = 0.02
[distill]
alphas = [0.5]
seeds = [2]
control = false
"""


@pytest.fixture
def small_study(tmp_path: Path) -> Path:
    p = tmp_path / "small.toml"
    p.write_text(SMALL_STUDY)
    return p


@pytest.fixture(scope="session")
def small_ref(tmp_path_factory) -> Path:
    """The small study run once, uninterrupted, in one process: the reference the kill tests compare with.
    Tests that change it work on a copy."""
    d = tmp_path_factory.mktemp("small_ref")
    (d / "small.toml").write_text(SMALL_STUDY)
    r = run_cli("study", str(d / "small.toml"), "--out", str(d / "out"), "--no-report", "--jobs", "1")
    assert r.returncode == 0, r.stderr
    return d / "out"
