"""bf16 training on the CPU: it trains, it resumes to the byte, it leaves fp32 results alone, and a study's
precision check compares every bf16-trained twin with the fp32 model of its own seed."""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli, two_seed_study
from funclens import metrics
from funclens.config import DataCfg, DistillGrid, ModelCfg, RunSpec, StudyCfg, TrainCfg
from funclens.data import load_dataset
from funclens.execute import RunContext
from funclens.rfd import rfd
from funclens.study import run_study
from funclens.summary import analyse, load_study
from funclens.train import train
from test_resume import base_run, checkpoint_epoch, killed_study, pred_files

# sha256 over every prediction file of conftest's SMALL_STUDY (run with --jobs 1), each as its path
# relative to the study folder, a NUL byte, then its bytes, in sorted order: computed with the code as it
# was before bf16 ran on the CPU, on this project's machine. fp32 must keep computing exactly this.
SMALL_STUDY_FP32_PREDS = "fd586e8efe1ad583fe37d915198f4f652449be06188d97e16e2a3fd71d63d473"

BF16_STUDY = two_seed_study("bf16", epochs=3, train='lr = 0.02\nprecision = "bf16"\n')


def preds_digest(out: Path) -> str:
    h = hashlib.sha256()
    for name, data in pred_files(out).items():
        h.update(name.encode() + b"\0" + data)
    return h.hexdigest()


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_bf16_trains_on_the_cpu_well_above_chance_and_computes_otherwise_than_fp32(digits):
    torch.set_num_threads(1)

    def run(precision: str) -> tuple[list[np.ndarray], list[dict]]:
        preds: list[np.ndarray] = []
        spec = RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(epochs=3, lr=0.02, precision=precision))
        _, hist = train(spec, digits, on_epoch=lambda e, p, r, c: preds.append(p))
        return preds, hist

    bf16, hist = run("bf16")
    assert hist[-1]["test_acc"] > 0.8  # chance is 0.1
    assert all(np.isfinite(h["train_loss"]) for h in hist) and hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert bf16[-1].dtype == np.float16 and np.allclose(bf16[-1].astype(np.float32).sum(1), 1, atol=1e-2)
    fp32, _ = run("fp32")
    # autocast really ran: bf16 rounding moved the predictions, though not the function's answers by much
    assert bf16[-1].tobytes() != fp32[-1].tobytes()
    assert metrics.distance(fp32[-1], bf16[-1], "disagreement") < 0.1
    again, _ = run("bf16")
    assert all(a.tobytes() == b.tobytes() for a, b in zip(bf16, again))


def test_a_bf16_study_killed_after_an_epoch_resumes_byte_identical(tmp_path):
    study = tmp_path / "bf16.toml"
    study.write_text(BF16_STUDY)
    ref = tmp_path / "ref"
    r = run_cli("study", str(study), "--out", str(ref), "--no-report", "--jobs", "1")
    assert r.returncode == 0, r.stderr
    base = base_run(study)
    out = tmp_path / "killed"
    assert killed_study(study, out, f"{base}:2", "--jobs", "1") == -signal.SIGKILL
    assert checkpoint_epoch(out, base) == 2 and not (out / "runs" / base / "DONE").exists()
    r = run_cli("study", str(study), "--out", str(out), "--no-report", "--jobs", "1")
    assert r.returncode == 0, r.stderr
    assert len(pred_files(ref)) == 7 and pred_files(out) == pred_files(ref)  # 2 runs x 3 epochs + 8-bit
    for run in (out / "runs").iterdir():
        m = json.loads((run / "metrics.json").read_text())
        # the 8-bit model of the bf16 base computes under the autocast its parent trained under
        assert m["precision"] == "bf16", run.name


def test_fp32_predictions_are_unchanged_by_bf16_on_the_cpu(small_ref):
    assert preds_digest(small_ref) == SMALL_STUDY_FP32_PREDS


def test_a_precision_check_rows_each_bf16_twin_against_its_own_fp32_seed(tmp_path):
    study = StudyCfg(name="pc", train=TrainCfg(epochs=3, lr=0.02), seeds=(0, 1, 2), distill=DistillGrid(alphas=()),
                     quantize=(), prune=(), precision_check=True)
    run_study(study, RunContext(out=str(tmp_path)), jobs=1, report=False)
    sv = load_study(tmp_path)
    rows = [r for r in analyse(sv)["rows"] if r["method"] == "precision"]
    assert [r["setting"] for r in rows] == ["bf16 base", "bf16 seed=1", "bf16 seed=2"]
    fp32 = {r.seed: r for r in sv.runs if r.role in ("base", "independent")}
    for row, twin in zip(rows, sv.of("precision")):
        assert row["runs"] == [twin.run] and twin.info["precision"] == "bf16" and row["accuracy"] > 0.8
        lo, hi = row["rfd_ci"]
        assert row["rfd"] is not None and lo <= row["rfd"] <= hi
        own = fp32[twin.seed]
        others = [r.final for s, r in fp32.items() if s != twin.seed]
        # anchored at the fp32 model of the twin's own seed, with the other fp32 seeds as its yardstick
        assert row["disagreement"] == metrics.distance(own.final, twin.final, "disagreement")
        assert row["rfd"] == pytest.approx(rfd(own.final, twin.final, others).rfd)
        assert row["accuracy_deviation_pct"] == pytest.approx(metrics.accuracy_deviation(twin.accuracy, own.accuracy))
