"""The controls that read a study's findings: the no-teacher start (alpha 0 from the base's initial weights) and
the noise floor (Gaussian weight noise on the scale of 8-bit rounding)."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli
from funclens import paths
from funclens.compress import compress, weight_layers
from funclens.compress.noise import int8_error_rms
from funclens.config import (BaseCfg, ConfigError, DataCfg, DistillCfg, ModelCfg, NoiseCfg, QuantCfg, RunSpec,
                             StudyCfg, TrainCfg, preset_study)
from funclens.data import load_dataset
from funclens.execute import RunContext, execute_run
from funclens.models import create_model
from funclens.plan import NO_TEACHER, plan
from funclens.store import Store
from funclens.train import kd_loss, train

DIGITS = DataCfg("digits")
RECIPE = TrainCfg(epochs=2, lr=0.02)
SHORT = (DataCfg("digits", train_subset=600), TrainCfg(epochs=2, lr=0.02))  # runs that need not learn much


def test_the_alpha_0_loss_is_cross_entropy_and_needs_no_teacher():
    logits, labels = torch.randn(16, 10), torch.randint(0, 10, (16,))
    assert torch.equal(kd_loss(logits, torch.full((16, 10), float("nan")), labels, 0.0, 3.0),
                       F.cross_entropy(logits, labels))
    ds = load_dataset("digits", train_subset=600)
    init = create_model("lenet", in_shape=ds.in_shape, num_classes=10).state_dict()
    control = RunSpec("train", SHORT[0], ModelCfg("lenet"), dataclasses.replace(SHORT[1], seed=24),
                      DistillCfg(teacher="train_000000000000", alpha=0.0, init="base-init"))
    plain = dataclasses.replace(control, distill=None)
    # no teacher logits at all, and the same training as plain cross-entropy from the same start and seed
    _, h_control = train(control, ds, init_state=init, teacher_logits=None)
    _, h_plain = train(plain, ds, init_state=init)
    assert [h["train_loss"] for h in h_control] == [h["train_loss"] for h in h_plain]
    assert h_control[-1]["test_acc"] == h_plain[-1]["test_acc"]
    assert h_control[-1]["train_loss"] < h_control[0]["train_loss"]   # it learns from the labels


def test_the_paper_presets_plan_the_no_teacher_control_from_the_base_init_with_the_students_seeds():
    runs = plan(preset_study("paper-mnist"))
    base = runs[0]
    starts = [r for r in runs if r.role == "start"]
    assert [r.seed for r in starts] == list(preset_study("paper-mnist").distill.seeds) == [2, 24, 42]
    for r in starts:
        d = r.spec.distill
        assert (r.setting, d.alpha, d.init, d.init_source, d.uses_teacher) == (NO_TEACHER, 0.0, "base-init",
                                                                              base.run_id, False)
        assert r.spec.parents == (base.run_id,)      # for its initial weights only: no teacher to wait for
        assert r.spec.train.seed == r.seed != base.spec.train.seed   # another data order than the base's
    assert not [r for r in plan(preset_study("quick")) if r.role in ("start", "noise")]   # quick stays fast


def test_a_grids_alpha_0_students_are_the_no_teacher_control_planned_once():
    quick = preset_study("quick")
    both = quick.replace(distill=dataclasses.replace(quick.distill, alphas=(0.0, 0.5), no_teacher=True))
    runs = plan(both)
    assert len({r.run_id for r in runs}) == len(runs)
    assert [r.setting for r in runs if r.role == "student"] == ["alpha=0.5"] * 3
    grid_only = plan(both.replace(distill=dataclasses.replace(both.distill, no_teacher=False)))
    assert {r.run_id for r in grid_only if r.setting == "alpha=0"} == {r.run_id for r in runs if r.role == "start"}


def test_a_given_base_has_no_initial_weights_so_no_no_teacher_control():
    study = preset_study("paper-mnist").replace(base=BaseCfg(checkpoint="base.pt", sha256=("0" * 64,)))
    assert not [r for r in plan(study) if r.role == "start"]
    assert [r.role for r in plan(study)].count("student") == 9


def test_the_no_teacher_control_never_loads_the_base_model_only_its_initial_weights(tmp_path):
    ctx = RunContext(out=str(tmp_path))
    base = RunSpec("train", SHORT[0], ModelCfg("lenet"), SHORT[1])
    execute_run(base, ctx)
    store = Store(tmp_path)
    os.remove(paths.model_file(store.run_dir(base.run_id)))   # a teacher would have to read it
    control = RunSpec("train", SHORT[0], ModelCfg("lenet"), dataclasses.replace(SHORT[1], seed=2),
                      DistillCfg(teacher=base.run_id, alpha=0.0, init="base-init"))
    execute_run(control, ctx)
    assert store.is_done(control.run_id)
    ours, theirs = store.load_init(control.run_id), store.load_init(base.run_id)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    student = dataclasses.replace(control, distill=dataclasses.replace(control.distill, alpha=0.5))
    with pytest.raises(Exception, match="model.pt|No such file"):
        execute_run(student, ctx)   # with a teacher term, the same run needs the model it no longer finds


@pytest.fixture(scope="module")
def trained_lenet():
    ds = load_dataset("digits")
    model, _ = train(RunSpec("train", DIGITS, ModelCfg("lenet"), RECIPE), ds)
    return model


def test_the_noise_matches_its_target_the_8_bit_error_times_the_scale(trained_lenet):
    q8, _ = compress(trained_lenet, QuantCfg("8-bit"))
    layers = dict(weight_layers(trained_lenet))
    for scale in (1.0, 4.0):
        noisy, info = compress(trained_lenet, NoiseCfg(scale=scale, seed=3))
        assert (info.method, info.setting, info.loadable, info.layers_compressed) == ("noise", f"{scale:g}x", True, 4)
        total_err = total_target = 0.0
        for name, layer in weight_layers(noisy):
            w = layers[name].weight.detach()
            rounding = (dict(weight_layers(q8))[name].weight.detach() - w).pow(2).mean().sqrt()
            assert info.noise_target_by_layer[name] == pytest.approx(scale * float(rounding), rel=1e-5)
            moved = (layer.weight.detach() - w).pow(2).mean().sqrt()
            assert float(moved) == pytest.approx(info.noise_rms_by_layer[name], rel=1e-4)
            # a sample RMS of n Gaussian draws is off its sigma by about 1 / sqrt(2n): four of those at most
            assert abs(float(moved) / info.noise_target_by_layer[name] - 1) < 4 / math.sqrt(2 * w.numel())
            assert torch.equal(layer.bias, layers[name].bias)   # weights only, as 8-bit quantization
            total_err += float(moved) ** 2 * w.numel()
            total_target += info.noise_target_by_layer[name] ** 2 * w.numel()
        assert math.sqrt(total_err / total_target) == pytest.approx(1.0, abs=0.03)


def test_the_noise_is_fixed_by_its_seed_and_scales_along_one_direction(trained_lenet):
    one, _ = compress(trained_lenet, NoiseCfg(1.0))
    again, _ = compress(trained_lenet, NoiseCfg(1.0))
    two, _ = compress(trained_lenet, NoiseCfg(2.0))
    other, _ = compress(trained_lenet, NoiseCfg(1.0, seed=1))
    base = trained_lenet.state_dict()
    for k in ("conv1.weight", "fc1.weight"):
        d1, d2 = one.state_dict()[k] - base[k], two.state_dict()[k] - base[k]
        assert torch.equal(one.state_dict()[k], again.state_dict()[k])
        assert torch.allclose(d2, 2 * d1, atol=1e-6)
        assert not torch.allclose(other.state_dict()[k], one.state_dict()[k])
    assert int8_error_rms(base["fc1.weight"]) > 0


def test_noise_settings_are_checked():
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ConfigError, match="noise scale"):
            NoiseCfg(scale=bad)
    with pytest.raises(ConfigError, match="noise lists 2x twice"):
        StudyCfg(noise=(2.0, 2))
    with pytest.raises(ConfigError, match="no_teacher must be true or false"):
        preset_study("quick").distill.__class__(no_teacher=1)


CONTROLS_STUDY = """
name = "controls"
seeds = [0, 1, 2]
quantize = ["8-bit"]
prune = []
noise = [1, 8]
metric = "js"
[data]
dataset = "digits"
[train]
epochs = 3
lr = 0.02
[distill]
alphas = [0.5]
seeds = [2, 24]
control = false
no_teacher = true
"""


@pytest.fixture(scope="module")
def controls_study(tmp_path_factory):
    d = tmp_path_factory.mktemp("controls")
    (d / "controls.toml").write_text(CONTROLS_STUDY)
    r = run_cli("study", str(d / "controls.toml"), "--out", str(d / "out"))
    assert r.returncode == 0, r.stderr
    return d / "out"


def test_a_study_reports_the_no_teacher_control_and_the_noise_floor(controls_study):
    s = json.loads(paths.summary_file(controls_study).read_text())
    rows = {(r["method"], r["setting"]): r for r in s["rows"]}
    start = rows[("distill", NO_TEACHER)]
    assert start["role"] == "start" and len(start["runs"]) == 2 and start["members"] == 2
    noise1, noise8, q8 = rows[("noise", "1x")], rows[("noise", "8x")], rows[("quantize", "8-bit")]
    # 1x noise moves the weights as far as 8-bit rounding: its function moves about as far (JS, a continuous
    # distance, since on 360 test inputs both change few top-1 predictions); 8x moves it much further
    assert 1 / 3 < noise1["rfd"] / q8["rfd"] < 3, (noise1["rfd"], q8["rfd"])
    assert noise8["rfd"] > 4 * noise1["rfd"]
    md = paths.report_md(controls_study).read_text()
    assert "no-teacher control (the base's initial weights, another data order, alpha 0)" in md
    assert "Start or teacher (alpha=0.5): from the same initial weights with no teacher, the control ends" in md
    assert "noise floor 1x (Gaussian weight noise, 1x the 8-bit error)" in md
    assert "| no-teacher control | True |" in md and "| noise floor (x 8-bit error) | 1.0, 8.0 |" in md


def test_the_report_splits_start_from_teacher_and_says_when_a_given_base_has_no_control():
    from funclens.report import verdict_sentences

    def row(role, setting, rfd, ci):
        return {"method": "distill", "role": role, "setting": setting, "runs": ["train_x"], "accuracy": 0.9,
                "accuracy_deviation_pct": 0.1, "accuracy_deviation_std": 0.2, "disagreement": 0.05, "js": 0.01,
                "rfd": rfd, "rfd_ci": ci, "rfd_ci_yardstick": ci, "p_closer": 0.001, "verdict": "preserves",
                "caveats": []}

    summary = {"metric": "disagreement", "num_test": 360, "reference": {"pairs": 2},
               "setup": {"distill_no_teacher": True, "distill_seeds": [2, 24, 42]},
               "rows": [row("student", "alpha=0.5", 0.2, [0.15, 0.25]), row("start", NO_TEACHER, 0.35, [0.3, 0.4])]}
    split = verdict_sentences(summary)[-1]
    assert split.startswith("Start or teacher (alpha=0.5)")
    assert "control ends at RFD 0.35 [0.30, 0.40]; the students, taught by the base, at 0.20 [0.15, 0.25]: the " \
           "teacher moves them 0.15 nearer to the base than the start alone leaves them." in split
    given = dict(summary, rows=summary["rows"][:1])
    assert verdict_sentences(given)[-1] == ("No no-teacher control: a given base has no initial weights to start "
                                            "it from.")
    assert "No no-teacher control" not in " ".join(verdict_sentences(dict(given, setup={"distill_no_teacher": False})))
