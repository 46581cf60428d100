"""Training recipes: named recipes in study files, learning-rate schedules, Nesterov momentum, input
normalisation off, and pruning that leaves the last layer whole; run ids of the defaults unchanged."""

import json

import pytest
import torch
import torch.nn as nn

from funclens.compress import compress, weight_layers
from funclens.config import (RECIPES, ConfigError, DataCfg, DistillGrid, ModelCfg, PruneCfg, RunSpec, StudyCfg,
                             TrainCfg, canonical_json, describe_recipe, load_study_toml, lr_at, preset_changes,
                             preset_study, recipe_train, recipe_values)
from funclens.data import load_dataset, load_from_cfg
from funclens.execute import RunContext
from funclens.models import create_model
from funclens.plan import plan
from funclens.study import run_study
from funclens.train import train


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # a few epochs of LeNet on digits take 0.2 s on one thread and many seconds on two busy cores
    was = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(was)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def study_file(tmp_path, text: str) -> StudyCfg:
    p = tmp_path / "s.toml"
    p.write_text(text)
    return load_study_toml(p)


def test_the_defaults_keep_every_run_id():
    # ids hash non-default fields only: runs made before schedules, normalisation and prune_last existed
    # keep their names (these two ids were computed by funclens before those fields were added)
    spec = RunSpec("train", DataCfg("mnist"), ModelCfg("lenet"), TrainCfg(epochs=2))
    pruned = RunSpec("prune", DataCfg("mnist"), ModelCfg("lenet"), parent=spec.run_id, compress=PruneCfg(0.5, "global"))
    assert (spec.run_id, pruned.run_id) == ("train_bd90bc24e808", "prune_0ede73a434f0")
    assert canonical_json(spec) == '{"data":{"dataset":"mnist"},"kind":"train","model":{},"train":{"epochs":2}}'


def test_a_recipe_fills_the_train_table_and_the_fields_beside_it_win(tmp_path):
    adam = study_file(tmp_path, 'preset = "quick"\n[train]\nrecipe = "adam"\n')
    # the recipe's lr replaces the preset's 0.02; the preset's epochs stay
    assert (adam.train.optimizer, adam.train.lr, adam.train.epochs) == ("adam", 0.001, 12)
    own = study_file(tmp_path, '[train]\nrecipe = "sgd"\nlr = 0.05\nepochs = 3\n')
    assert (own.train.optimizer, own.train.momentum, own.train.lr, own.train.epochs) == ("sgd", 0.0, 0.05, 3)
    cos = study_file(tmp_path, '[train]\nrecipe = "sgd-cosine"\n')
    assert (cos.train.schedule, cos.train.momentum) == ("cosine", 0.9)


def test_the_run_ids_follow_the_values_not_the_name(tmp_path):
    named = study_file(tmp_path, 'preset = "paper-mnist"\n[train]\nrecipe = "adam"\n')
    assert named == preset_study("paper-mnist")  # the preset's own recipe, named: the same study, the same runs
    assert [p.spec.run_id for p in plan(named)] == [p.spec.run_id for p in plan(preset_study("paper-mnist"))]
    spelled = study_file(tmp_path, '[train]\noptimizer = "adam"\nlr = 0.001\n')
    assert spelled.train == study_file(tmp_path, '[train]\nrecipe = "adam"\n').train


def test_every_recipe_is_named_back_from_its_values_and_differs_from_the_others():
    for name in RECIPES:
        assert describe_recipe(recipe_train(name, epochs=3)) == name
    assert len({tuple(recipe_values(n).values()) for n in RECIPES}) == len(RECIPES)
    assert describe_recipe(TrainCfg(momentum=0.5)) == "sgd-momentum with momentum 0.5"


def test_the_recipe_is_in_preset_changes_and_the_report_setup(tmp_path):
    adam = study_file(tmp_path, 'preset = "quick"\n[train]\nrecipe = "adam"\n')
    changes = preset_changes(adam)
    assert changes[0] == "train.recipe: sgd-momentum with lr 0.02 -> adam"
    assert "train.optimizer: sgd -> adam" in changes and "train.lr: 0.02 -> 0.001" in changes


def test_bad_recipes_and_schedules_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe 'rmsprop'"):
        study_file(tmp_path, '[train]\nrecipe = "rmsprop"\n')
    with pytest.raises(ConfigError, match="unknown recipe"):
        study_file(tmp_path, '[train]\nrecipe = 3\n')
    for kw, msg in (({"nesterov": True, "optimizer": "adam"}, "nesterov"), ({"nesterov": True, "momentum": 0.0},
                    "nesterov"), ({"schedule": "linear"}, "schedule"), ({"gamma": 0.5}, "schedule = step"),
                    ({"schedule": "step", "gamma": 0.0}, "gamma"), ({"schedule": "step", "step_epochs": 0},
                    "step_epochs")):
        with pytest.raises(ConfigError, match=msg):
            TrainCfg(**kw)


def lrs_and_preds(cfg: TrainCfg, data) -> tuple[list[float], list]:
    seen: list = []
    train(RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), cfg), data,
          on_epoch=lambda e, p, r, c: seen.append((c["optimizer"]["param_groups"][0]["lr"], p)))
    return [lr for lr, _ in seen], [p for _, p in seen]


def test_the_schedule_sets_each_epochs_learning_rate(digits):
    step = TrainCfg(epochs=3, lr=0.04, schedule="step", step_epochs=2, gamma=0.5)
    lrs, preds = lrs_and_preds(step, digits)
    assert lrs == [0.04, 0.04, 0.02] == [lr_at(step, e) for e in (1, 2, 3)]
    cosine = TrainCfg(epochs=3, lr=0.04, schedule="cosine")
    assert lrs_and_preds(cosine, digits)[0] == pytest.approx([0.04, 0.03, 0.01])
    # the same first epochs as a constant lr, then another function once the lr drops
    const = lrs_and_preds(TrainCfg(epochs=3, lr=0.04), digits)[1]
    assert (preds[1] == const[1]).all() and not (preds[2] == const[2]).all()


def test_nesterov_reaches_the_optimizer(digits):
    seen = []
    train(RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(epochs=1, nesterov=True)), digits,
          on_epoch=lambda e, p, r, c: seen.append(c["optimizer"]["param_groups"][0]["nesterov"]))
    assert seen == [True]


def test_normalisation_off_feeds_pixels_over_255():
    data = load_from_cfg(DataCfg("digits", normalize=False))
    x = data.train_x[:5]
    assert torch.equal(data.normalize(x), x.float() / 255.0)
    on = load_from_cfg(DataCfg("digits"))
    assert on.content_sha256 == data.content_sha256 and abs(float(on.normalize(on.train_x).mean())) < 1e-4


def test_a_study_without_normalisation_evaluates_its_compressed_models_as_it_trained(tmp_path):
    # were a post-hoc run evaluated with normalised inputs, its 16-bit copy would disagree with the base widely
    study = StudyCfg(name="raw", data=DataCfg("digits", normalize=False), train=TrainCfg(epochs=2, lr=0.02),
                     seeds=(0, 1), distill=DistillGrid(alphas=()), quantize=("16-bit",), prune=())
    result = run_study(study, RunContext(out=str(tmp_path)), jobs=1)
    assert not result.failed
    summary = json.loads((tmp_path / "summary.json").read_text())
    row = next(r for r in summary["rows"] if r["setting"] == "16-bit")
    assert row["disagreement"] < 0.01 and summary["base"]["accuracy"] > 0.5
    assert summary["setup"]["normalize"] is False and summary["setup"]["recipe"] == "sgd-momentum with lr 0.02"
    assert "| training recipe (by its values) | sgd-momentum with lr 0.02 |" in (tmp_path / "report.md").read_text()
    normalised = plan(StudyCfg(name="raw", train=TrainCfg(epochs=2, lr=0.02), seeds=(0, 1)))[0].spec.run_id
    assert plan(study)[0].spec.run_id != normalised


def test_pruning_can_leave_the_last_layer_whole():
    torch.manual_seed(0)
    model = create_model("lenet", in_shape=(1, 28, 28), num_classes=10)
    for scope in ("layer", "global"):
        out, info = compress(model, PruneCfg(0.7, scope, last=False))
        layers = dict(weight_layers(out))
        assert torch.equal(layers["fc2"].weight, model.fc2.weight) and sorted(info.sparsity_by_layer) == [
            "conv1", "conv2", "fc1"]
        # the 70% fall on the other layers: their zeros are 70% of their weights, to within a weight
        zeros = sum(int((layers[n].weight == 0).sum()) for n in ("conv1", "conv2", "fc1"))
        total = sum(layers[n].weight.numel() for n in ("conv1", "conv2", "fc1"))
        assert abs(zeros - round(0.7 * total)) <= 3 and info.sparsity == pytest.approx(zeros / total)
        assert torch.equal(out.fc1.bias, model.fc1.bias)  # biases are never pruned
    with pytest.raises(ConfigError, match="two or more"):
        compress(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), PruneCfg(0.5, last=False))


def test_a_study_may_keep_the_last_layer_whole():
    study = StudyCfg(prune=(0.5,), prune_global=(0.3,), prune_last=False)
    cfgs = [p.spec.compress for p in plan(study) if p.role == "prune"]
    assert [(c.amount, c.scope, c.last) for c in cfgs] == [(0.5, "layer", False), (0.3, "global", False)]
    default = [p.spec.run_id for p in plan(StudyCfg(prune=(0.5,)))]
    assert len(set(default) & {p.spec.run_id for p in plan(study)}) == len(default) - 1  # all but the pruned
