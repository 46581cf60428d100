"""Shared fixtures: where the real data files are, and small studies to run end to end."""

from __future__ import annotations

import os
import shutil
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


def two_seed_study(name: str, *, dataset: str = "digits", data: str = "", epochs: int = 1, train: str = "",
                   distill: str = "") -> str:
    """A study file of the base and one independent model, 8-bit quantization and no students: the smallest
    study that still has a yardstick. ``data``, ``train`` and ``distill`` add lines to those tables."""
    return (f'name = "{name}"\nseeds = [0, 1]\nquantize = ["8-bit"]\nprune = []\n'
            f'[data]\ndataset = "{dataset}"\n{data}[train]\nepochs = {epochs}\n{train}[distill]\nalphas = []\n{distill}')


def chromium(page: Path, tmp_path: Path, height: int = 2400) -> tuple[str, Path]:
    """(DOM after load, screenshot) of ``page`` in headless Chromium, as a person would see it."""
    exe = next((c for c in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(c).exists()), None)
    assert exe, "chromium is part of the test setup (make test installs it)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([exe, *flags, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    shot = tmp_path / "report.png"
    subprocess.run([exe, *flags, f"--window-size=1200,{height}", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    return dom, shot


@pytest.fixture(scope="session")
def small_reported(small_ref: Path, tmp_path_factory) -> Path:
    """A copy of the small study (quantize = ["16-bit", "8-bit"]) with its report built. Tests read it only."""
    out = tmp_path_factory.mktemp("reported") / "out"
    shutil.copytree(small_ref, out)
    r = run_cli("report", str(out))
    assert r.returncode == 0, r.stderr
    return out


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
