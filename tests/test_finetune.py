"""Prune, then fine-tune: accuracy comes back, the zeros stay, and a killed fine-tuning resumes byte-identically."""

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from funclens.compress import compress
from funclens.config import DataCfg, ModelCfg, PruneCfg, RunSpec, StructuredPruneCfg, TrainCfg, load_study_toml
from funclens.data import load_dataset
from funclens.execute import RunContext, execute_run
from funclens.models import create_model
from funclens.store import Store
from funclens.train import hold_zeros, train
from test_resume import checkpoint_epoch, killed_study, pred_files

DATA, MODEL = DataCfg("digits"), ModelCfg("lenet")
RECIPE = TrainCfg(epochs=3, lr=0.02)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str]:
    """A store holding a LeNet trained on digits: (store root, its run id)."""
    out = tmp_path_factory.mktemp("finetune") / "out"
    return out, execute_run(RunSpec("train", DATA, MODEL, RECIPE), RunContext(out=str(out)))


def pruned_and_tuned(trained, cfg) -> tuple[str, str]:
    """The run ids of ``cfg`` applied to the trained model, without and with one epoch of fine-tuning."""
    out, base = trained
    ctx = RunContext(out=str(out))
    plain = execute_run(RunSpec("prune", DATA, MODEL, parent=base, compress=cfg), ctx)
    tune = RunSpec("prune", DATA, MODEL, train=TrainCfg(epochs=1, lr=0.02), parent=base, compress=cfg)
    return plain, execute_run(tune, ctx)


def test_finetuning_raises_a_70pct_pruned_lenets_accuracy_and_keeps_its_zeros(trained):
    plain, tuned = pruned_and_tuned(trained, PruneCfg(0.7))
    store = Store(trained[0])
    before, after = store.load_metrics(plain), store.load_metrics(tuned)
    assert after["test_acc"] > before["test_acc"] + 0.02, (before["test_acc"], after["test_acc"])
    assert len(after["history"]) == 1 and store.pred_epochs(tuned) == [1]
    zeros = {k: v == 0 for k, v in store.load_model_state(plain).items() if k.endswith("weight")}
    state = store.load_model_state(tuned)
    for k, was_zero in zeros.items():
        assert torch.equal(state[k] == 0, was_zero), k  # every pruned weight still zero, no other became zero
        assert not torch.equal(state[k], store.load_model_state(plain)[k]), k  # the kept weights trained
    assert after["sparsity"] == before["sparsity"] and after["sparsity_by_layer"] == before["sparsity_by_layer"]


def test_structured_finetuning_trains_the_smaller_model(trained):
    plain, tuned = pruned_and_tuned(trained, StructuredPruneCfg(0.5))
    store = Store(trained[0])
    before, after = store.load_metrics(plain), store.load_metrics(tuned)
    assert after["test_acc"] > before["test_acc"], (before["test_acc"], after["test_acc"])
    assert after["params"] == before["params"] < before["base_params"] / 3
    assert after["library"].startswith("torch-pruning ") and after["setting"] == "channels 50%"
    # another shape than create_model builds: no model.pt, the predictions are what count
    assert "model.pt" not in store.done_record(tuned)["files"] and store.pred_epochs(tuned) == [1]


STUDY = """
name = "finetune"
seeds = [0, 1]
quantize = []
prune = [0.5]
prune_structured = [0.5]
finetune_epochs = 2
[data]
dataset = "digits"
[train]
epochs = 2
lr = 0.02
[distill]
alphas = []
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Path]:
    """The study file and its output, run once uninterrupted with its report."""
    d = tmp_path_factory.mktemp("ftstudy")
    (d / "s.toml").write_text(STUDY)
    r = run_cli("study", str(d / "s.toml"), "--out", str(d / "out"))
    assert r.returncode == 0, r.stderr
    return d / "s.toml", d / "out"


def test_a_study_reports_pruned_and_finetuned_rows_with_verdicts(study):
    rows = json.loads((study[1] / "summary.json").read_text())["rows"]
    pruned = {r["setting"]: r for r in rows if r["method"] == "prune"}
    assert set(pruned) == {"50%", "channels 50%", "50% + 2 ep fine-tune", "channels 50% + 2 ep fine-tune"}
    for r in pruned.values():
        assert r["verdict"] in ("preserves", "partial", "independent-like") and r["rfd"] is not None, r
    # fine-tuning a model that lost half its channels wins accuracy back
    assert pruned["channels 50% + 2 ep fine-tune"]["accuracy"] > pruned["channels 50%"]["accuracy"]


def finetune_runs(study_file: Path) -> dict[str, str]:
    """Setting -> run id of the study's fine-tuned runs, as `funclens study` plans them."""
    from funclens.plan import plan
    from funclens.study import pin_data

    planned = plan(pin_data(load_study_toml(study_file), RunContext(out=".")))
    return {p.setting: p.run_id for p in planned if p.role == "finetune"}


def test_a_killed_finetuning_resumes_to_identical_predictions(study, tmp_path):
    study_file, ref = study
    out = tmp_path / "killed"
    for setting, rid in sorted(finetune_runs(study_file).items()):
        # the whole study dies once this fine-tuning's first epoch is on disk
        assert killed_study(study_file, out, f"{rid}:1:group", "--jobs", "1") == -signal.SIGKILL, setting
        run = out / "runs" / rid
        assert not (run / "DONE").exists() and checkpoint_epoch(out, rid) == 1, setting
        assert sorted(p.name for p in (run / "preds").glob("*.npy")) == ["ep_001.npy"]
    r = run_cli("study", str(study_file), "--out", str(out), "--no-report")
    assert r.returncode == 0, r.stderr
    assert pred_files(out) == pred_files(ref)
    for rid in finetune_runs(study_file).values():
        assert np.array_equal(Store(out).load_preds(rid), Store(ref).load_preds(rid))


def first_epoch(store: Store, spec: RunSpec) -> tuple[np.ndarray, dict]:
    """(predictions, checkpoint) of fine-tuning run ``spec``'s first epoch, as a run stopped after it leaves them."""
    data = load_dataset("digits")
    parent = create_model("lenet", in_shape=data.in_shape, num_classes=data.num_classes)
    parent.load_state_dict(store.load_model_state(spec.parent))
    pruned, _ = compress(parent, spec.compress)
    kept: dict = {}
    train(spec, data, model=pruned, after_step=hold_zeros(pruned),
          on_epoch=lambda e, probs, _row, ck: kept.setdefault(e, (probs, ck)))
    return kept[1]


@pytest.mark.parametrize("swapped", ["checkpoint", "predictions"])
def test_a_resumed_finetuning_takes_nothing_from_another_runs_files(trained, tmp_path, swapped):
    # layer and global 50% prune the same tensors: another run's checkpoint has this run's shapes
    out, base = trained
    this, other = (RunSpec("prune", DATA, MODEL, train=TrainCfg(epochs=2, lr=0.02), parent=base,
                           compress=PruneCfg(0.5, scope=s)) for s in ("global", "layer"))
    execute_run(this, RunContext(out=str(out)))
    hurt = Store(tmp_path / "hurt")
    shutil.copytree(Store(out).run_dir(base), hurt.run_dir(base))
    for spec in (this, other):   # each stopped after its first epoch
        hurt.prepare(spec)
        probs, ck = first_epoch(hurt, spec)
        hurt.save_preds(spec.run_id, 1, probs)
        hurt.save_checkpoint(spec.run_id, ck)
    # copied over this run's own: the other's checkpoint with its predictions, or its predictions alone
    for name in ("checkpoint.pt", "preds/ep_001.npy")[swapped == "predictions":]:
        shutil.copyfile(hurt.run_dir(other.run_id) / name, hurt.run_dir(this.run_id) / name)
    execute_run(this, RunContext(out=str(hurt.root)))
    assert hurt.verify_run(this.run_id) == []
    for e in (1, 2):
        assert np.array_equal(hurt.load_preds(this.run_id, e), Store(out).load_preds(this.run_id, e)), e



def test_finetuning_a_study_that_prunes_nothing_is_refused_in_one_line(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text('preset = "quick"\nprune = []\nfinetune_epochs = 2\n')
    r = run_cli("study", str(study), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "finetune_epochs fine-tunes pruned models, but the study prunes nothing" in r.stderr
    assert not (tmp_path / "out").exists()
