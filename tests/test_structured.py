"""Structured (channel) pruning with Torch-Pruning: the model really shrinks, and still classifies."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from funclens.compress import compress, tensor_bytes
from funclens.config import ConfigError, StructuredPruneCfg
from funclens.data import load_dataset
from funclens.models import create_model
from funclens.train import calibration_images, evaluate

SRC = Path(__file__).resolve().parents[1] / "src"


def test_lenet_half_the_channels_keeps_about_a_quarter_of_params_and_macs():
    m = create_model("lenet", in_shape=(1, 28, 28), num_classes=10)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    small, info = compress(m, StructuredPruneCfg(0.5), torch.randn(4, 1, 28, 28))
    # conv2 and fc1 lose half their inputs and half their outputs: a quarter of their weights and MACs
    assert (small.conv1.out_channels, small.conv2.out_channels, small.fc1.out_features) == (16, 32, 64)
    assert small.fc2.out_features == 10 and small(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert info.base_params == 225_034 and 0.2 < info.params / info.base_params < 0.3
    assert 0.2 < info.macs / info.base_macs < 0.3
    assert info.params == sum(p.numel() for p in small.parameters())
    assert info.weight_bytes == tensor_bytes(small) == 4 * info.params and info.fp32_bytes == 4 * 225_034
    assert info.setting == "channels 50%" and info.scope == "channels" and not info.loadable
    assert info.library.startswith("torch-pruning 1.") and info.layers_compressed == 4
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())  # the caller's model untouched


def test_kept_channels_are_those_of_largest_group_l1_norm():
    m = create_model("lenet", in_shape=(1, 8, 8), num_classes=10)
    # a channel's group: its filter in conv1 and the slice of conv2 that reads it
    w1, w2 = m.conv1.weight.detach(), m.conv2.weight.detach()
    norms = w1.abs().sum(dim=(1, 2, 3)) + w2.abs().sum(dim=(0, 2, 3))
    small, _ = compress(m, StructuredPruneCfg(0.25), torch.zeros(1, 1, 8, 8))
    kept = sorted(norms.topk(24).indices.tolist())
    assert torch.equal(small.conv1.weight, w1[kept]) and torch.equal(small.conv1.bias, m.conv1.bias[kept])


@pytest.mark.parametrize("arch", ["mobilenet_v1", "resnet50"])
def test_batchnorm_and_residual_architectures_prune_and_run(arch):
    torch.manual_seed(0)
    m = create_model(arch, in_shape=(3, 16, 16), num_classes=7).eval()
    x = torch.randn(2, 3, 16, 16)
    small, info = compress(m, StructuredPruneCfg(0.5), x)
    out = small.eval()(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert 0.2 < info.params / info.base_params < 0.3 and 0.2 < info.macs / info.base_macs < 0.35
    # every BatchNorm follows its convolution's channels, statistics included
    for conv, bn in zip([c for c in small.modules() if isinstance(c, torch.nn.Conv2d)],
                        [b for b in small.modules() if isinstance(b, torch.nn.BatchNorm2d)]):
        assert bn.running_mean.numel() == bn.num_features == conv.out_channels


def test_pruning_the_same_weights_twice_gives_the_same_model():
    ds = load_dataset("digits")
    m = create_model("lenet", in_shape=ds.in_shape, num_classes=10)
    a, _ = compress(m, StructuredPruneCfg(0.3), calibration_images(ds, 1))
    b, _ = compress(m, StructuredPruneCfg(0.3), calibration_images(ds, 1))
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    probs, metrics = evaluate(a, ds)
    assert probs.shape == (360, 10) and 0 <= metrics["test_acc"] <= 1


@pytest.mark.parametrize("amount, whole", [(0.97, "1 of 3 layers whole (conv1)"),
                                           (0.995, "3 of 3 layers whole (conv1, conv2, fc1)")])
def test_an_amount_that_would_empty_a_layer_is_refused_not_left_unpruned(amount, whole):
    # Torch-Pruning keeps whole a layer that would lose every channel (LeNet's 32-channel conv1 past 31/32):
    # the row would be named "channels 97%" with conv1 untouched, or at 99.5% be the unpruned model itself
    m = create_model("lenet", in_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ConfigError, match=f"channels 9.*% left {re.escape(whole)}.*choose a smaller amount"):
        compress(m, StructuredPruneCfg(amount), torch.zeros(1, 1, 8, 8))
    assert compress(m, StructuredPruneCfg(0.95), torch.zeros(1, 1, 8, 8))[0].conv1.out_channels == 1


def test_structured_pruning_without_an_example_input_is_bad_input():
    m = create_model("lenet", in_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ConfigError, match="example input"):
        compress(m, StructuredPruneCfg(0.5))


def test_without_torch_pruning_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # as if it were not installed: import fails
    m = create_model("lenet", in_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ConfigError, match=r'pip install "funclens\[pruning\]"'):
        compress(m, StructuredPruneCfg(0.5), torch.zeros(1, 1, 8, 8))


def test_a_bf16_trained_parent_is_pruned_and_evaluated_in_bf16(tmp_path):
    from funclens.config import DataCfg, ModelCfg, RunSpec, TrainCfg
    from funclens.execute import RunContext, execute_run
    from funclens.store import Store

    ctx = RunContext(out=str(tmp_path))
    base = execute_run(RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(epochs=1, precision="bf16")),
                       ctx)
    rid = execute_run(RunSpec("prune", DataCfg("digits"), ModelCfg("lenet"), parent=base,
                              compress=StructuredPruneCfg(0.3)), ctx)
    m = Store(tmp_path).load_metrics(rid)
    # the channels removed, not also a switch of arithmetic from the autocast the parent computed under
    assert m["precision"] == "bf16" and m["params"] < m["base_params"] and not m["loadable"]


@pytest.mark.parametrize("missing, key, extra", [("torch_pruning", "prune_structured = [0.5]", "pruning"),
                                                  ("torchao", "pt2e = true", "torchao")])
def test_a_study_needing_a_missing_library_is_refused_before_anything_trains(tmp_path, missing, key, extra):
    (tmp_path / "s.toml").write_text(f'name = "lib"\nseeds = [0, 1]\nquantize = []\nprune = []\n{key}\n'
                                     '[train]\nepochs = 1\n[distill]\nalphas = []\n')
    code = (f"import sys, runpy; sys.modules[{missing!r}] = None\n"
            "sys.argv = ['funclens', 'study', 's.toml', '--out', 'out', '--jobs', '1', '--offline']\n"
            "runpy.run_module('funclens', run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert f'pip install "funclens[{extra}]"' in r.stderr
    assert not (tmp_path / "out" / "runs").exists()
