"""Per-layer attribution: a layer made fragile on purpose is ranked first, by the function and by the command."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from conftest import run_cli
from funclens.attribute import attribute, parse_compress
from funclens.cli import main
from funclens.config import DataCfg, ModelCfg, QuantCfg, RunSpec, TrainCfg
from funclens.data import identified, load_from_cfg
from funclens.execute import RunContext, execute_run
from funclens.models import create_model
from funclens.store import Store
from funclens.train import infer

DATA = DataCfg("digits")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LeNet trained 2 epochs on digits, as a study's run folder."""
    out = tmp_path_factory.mktemp("attr")
    data = load_from_cfg(DATA)
    spec = RunSpec("train", identified(DATA, data), ModelCfg("lenet"), TrainCfg(epochs=2, lr=0.02))
    execute_run(spec, RunContext(out=str(out)))
    model = create_model("lenet", in_shape=data.in_shape, num_classes=data.num_classes)
    model.load_state_dict(Store(out).load_model_state(spec.run_id))
    return out, spec, model, data


def fragile(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with fc1 made fragile to 8-bit quantization: conv2's channel 0 is silenced (zero weights, a bias
    far below zero, so ReLU gives exactly 0), and fc1's weights reading that channel are set to 50. The model still
    computes nearly the same function, but every fc1 row's largest weight is 50, so its per-channel int8 step
    (50/127 = 0.39) rounds all of its ordinary weights (|w| ~ 0.05) to 0."""
    m = create_model("lenet", in_shape=(1, 8, 8), num_classes=10)
    m.load_state_dict(model.state_dict())
    with torch.no_grad():
        m.conv2.weight[0] = 0
        m.conv2.bias[0] = -1e4
        per_channel = m.fc1.in_features // m.conv2.out_channels  # flatten keeps channel-major order
        m.fc1.weight[:, :per_channel] = 50.0
    return m


def _probs(model, data) -> np.ndarray:
    return torch.softmax(infer(model, data.test_x, data), dim=1).numpy()


def test_fragile_layer_ranked_first_and_spared_by_all_but(trained):
    _, _, model, data = trained
    labels = data.test_y.numpy()
    weak = fragile(model)
    base = _probs(weak, data)
    rows = attribute(weak, QuantCfg("8-bit"), lambda m: _probs(m, data), base, labels)
    assert [r.layer for r in rows[:2]] == ["fc1", "fc1"] and [r.mode for r in rows[:2]] == ["only", "all-but"]
    only = {r.layer: r for r in rows if r.mode == "only"}
    all_but = {r.layer: r for r in rows if r.mode == "all-but"}
    assert only["fc1"].disagreement > 0.3 and all(only[n].disagreement < 0.05 for n in ("conv1", "conv2", "fc2"))
    # sparing fc1 spares the function: its all-but model is the nearest of all
    assert min(all_but.values(), key=lambda r: r.kl).layer == "fc1"
    # the same layer of the unmodified model is not fragile: the finding comes from the weights, not the name
    plain = {r.layer: r for r in attribute(model, QuantCfg("8-bit"), lambda m: _probs(m, data),
                                           _probs(model, data), labels) if r.mode == "only"}
    assert plain["fc1"].disagreement < 0.05 < only["fc1"].disagreement
    # flips by hand: correctness changed, both directions
    fc1 = only["fc1"]
    assert 0 < fc1.flips <= fc1.disagreement


def test_attribute_command_ranks_the_fragile_layer_first(trained, tmp_path):
    out, spec, model, data = trained
    weak = fragile(model)
    store = Store(out)
    spec2 = RunSpec("train", spec.data, spec.model, TrainCfg(epochs=2, lr=0.02, seed=7))  # the fragile model's run
    store.begin(spec2)
    store.save_preds(spec2.run_id, 1, _probs(weak, data).astype(np.float16))
    store.finish(spec2.run_id, state_dict=weak.state_dict(), metrics={"test_acc": 0.0})
    r = run_cli("attribute", str(out / "runs" / spec2.run_id), "--compress", "8-bit", "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    assert "most harmful layer: fc1" in r.stdout
    with open(tmp_path / "a" / "attribution.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"layer", "mode", "flips", "disagreement", "kl"} <= set(rows[0])
    assert (rows[0]["layer"], rows[0]["mode"], rows[0]["rank"]) == ("fc1", "only", "1")
    assert len(rows) == 8 and float(rows[0]["disagreement"]) > 0.3
    assert rows[0]["kl_rel"] == ""  # a run outside any study has no independent models to compare with
    png = (tmp_path / "a" / "attribution.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_attribute_bad_input_is_one_line_exit_2(trained, tmp_path, capsys):
    out, spec, _, _ = trained
    run = str(out / "runs" / spec.run_id)
    for args, needle in (([run, "--compress", "2-bit"], "--compress"),
                         ([run, "--compress", "prune:1.5"], "amount"),
                         ([run, "--compress", "dynamic-int8"], "--compress"),
                         ([str(out), "--compress", "8-bit"], "not a run folder"),
                         ([str(tmp_path / "missing" / "runs" / "x"), "--compress", "8-bit"], "not a run folder")):
        rc = main(["attribute", *args, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, (args, err)


def test_parse_compress():
    assert parse_compress("4-bit") == QuantCfg("4-bit")
    assert parse_compress("prune:global:0.3").scope == "global"


def test_attribute_relative_to_the_study_independents(tmp_path):
    """A base run of a study: distances are also given over the mean base-independent distance."""
    from funclens.config import DistillGrid, StudyCfg
    from funclens.study import run_study

    study = StudyCfg(name="attr", train=TrainCfg(epochs=1, lr=0.02), seeds=(0, 1),
                     distill=DistillGrid(alphas=()), quantize=(), prune=())
    run_study(study, RunContext(out=str(tmp_path / "s")), jobs=1, report=False)
    rec = Store(tmp_path / "s").read_study()
    base = next(r["run"] for r in rec["runs"] if r["role"] == "base")
    indep = next(r["run"] for r in rec["runs"] if r["role"] == "independent")
    r = run_cli("attribute", str(tmp_path / "s" / "runs" / base), "--compress", "prune:0.5",
                "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "a" / "attribution.csv") as f:
        rows = list(csv.DictReader(f))
    st = Store(tmp_path / "s")
    b, i = st.load_preds(base).astype(np.float32), st.load_preds(indep).astype(np.float32)
    yard = float(np.mean(b.argmax(1) != i.argmax(1)))
    for row in rows:
        assert float(row["disagreement_rel"]) == pytest.approx(float(row["disagreement"]) / yard, rel=1e-4)
