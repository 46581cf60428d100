"""torchao's quantize_ as a study setting: each scheme through compress() on a LeNet trained on digits,
checked against the quantization it names, its stored size by hand, the error when torchao is missing,
and a small study whose summary holds a row per torchao setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchao

import funclens
from conftest import run_cli
from funclens.compress import compress
from funclens.compress.torchao import quantize_torchao_
from funclens.config import ConfigError, DataCfg, ModelCfg, RunSpec, TorchaoCfg, TrainCfg
from funclens.data import load_dataset
from funclens.train import evaluate, infer, train

SRC = Path(funclens.__file__).resolve().parents[1]
SCHEMES = ("int8-weight-only", "int4-weight-only", "int8-dynamic")
# LeNet on digits (1x8x8) by hand: conv1 32x1x3x3, conv2 64x32x3x3, fc1 128x256, fc2 10x128
CONV_FLOATS = 32 * 9 + 32 + 64 * 32 * 9 + 64   # conv weights and biases: 18,816, stay fp32
FC1, FC2 = (128, 256), (10, 128)                # (out, in) of the two Linear layers


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def lenet(digits) -> nn.Module:
    """LeNet trained 3 epochs on digits (about 90% test accuracy): a model with a function to keep."""
    spec = RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(epochs=3, lr=0.02))
    model, hist = train(spec, digits)
    assert hist[-1]["test_acc"] > 0.8
    return model.eval()


@pytest.fixture(scope="module")
def quantized(lenet) -> dict[str, tuple[nn.Module, object]]:
    return {s: compress(lenet, TorchaoCfg(s)) for s in SCHEMES}


# ---------------------------------------------------------------- what each scheme did, said in its info

@pytest.mark.parametrize("scheme, linears", [("int8-weight-only", ["fc1", "fc2"]), ("int4-weight-only", ["fc1"]),
                                             ("int8-dynamic", ["fc1", "fc2"])])
def test_each_scheme_quantizes_linear_layers_only_and_its_info_says_so(lenet, quantized, scheme, linears):
    q, info = quantized[scheme]
    assert (info.method, info.setting, info.scheme, info.loadable) == ("quantize", f"torchao {scheme}", scheme, False)
    assert info.library == f"torchao {torchao.__version__}" and info.library.startswith("torchao 0.")
    # convolutions stay fp32, and the counts show it: 4 weight layers, only Linear ones quantized
    assert (info.layers_total, info.layers_compressed, info.conv_layers_compressed) == (4, len(linears), 0)
    assert info.group_size == (128 if scheme == "int4-weight-only" else None)   # torchao's default group
    for name in ("conv1", "conv2"):
        assert type(getattr(q, name).weight) is nn.Parameter
        assert torch.equal(getattr(q, name).weight, getattr(lenet, name).weight)
    for name in ("fc1", "fc2"):
        kind = type(getattr(q, name).weight).__name__
        assert (kind != "Parameter") == (name in linears), (name, kind)
        assert type(getattr(lenet, name).weight) is nn.Parameter   # the caller's model is untouched
    json.dumps(info.to_json())   # what metrics.json keeps


def test_weight_bytes_count_the_stored_integers_scales_and_zero_points(quantized):
    fp32 = 4 * (CONV_FLOATS + FC1[0] * FC1[1] + FC1[0] + FC2[0] * FC2[1] + FC2[0])
    rest = 4 * (CONV_FLOATS + FC1[0] + FC2[0])   # convolutions and biases at fp32

    def int8(out: int, inp: int) -> int:   # int8 values + an fp32 scale and an int8 zero point per row
        return out * inp + out * 4 + out

    want = {
        "int8-weight-only": rest + int8(*FC1) + int8(*FC2),
        "int8-dynamic": rest + int8(*FC1) + int8(*FC2),
        # two int4 values per byte + an fp32 (scale, zero) pair per group of 128 per row; fc2 (10 rows,
        # not a multiple of 16) stays fp32
        "int4-weight-only": rest + FC1[0] * FC1[1] // 2 + (FC1[1] // 128) * FC1[0] * 2 * 4 + 4 * FC2[0] * FC2[1],
    }
    for scheme, (_, info) in quantized.items():
        assert info.fp32_bytes == fp32 == 212_008
        assert info.weight_bytes == want[scheme], scheme
    assert quantized["int4-weight-only"][1].weight_bytes < quantized["int8-weight-only"][1].weight_bytes < fp32
    # a model that is one Linear layer: its weight is named "weight", with no layer prefix
    _, info = compress(nn.Linear(256, 128), TorchaoCfg("int8-weight-only"))
    assert (info.layers_compressed, info.weight_bytes) == (1, int8(128, 256) + 128 * 4)


# ---------------------------------------------------------------- the arithmetic each scheme names

def test_int8_weights_are_symmetric_per_channel_within_half_a_step(lenet, quantized):
    for scheme in ("int8-weight-only", "int8-dynamic"):
        q, _ = quantized[scheme]
        for name in ("fc1", "fc2"):
            w, qw = getattr(lenet, name).weight.detach(), getattr(q, name).weight
            scale = w.abs().amax(1, keepdim=True) / 127.5   # [-128, 127] over +-max|w| of the row
            assert torch.allclose(qw.scale, scale) and not qw.zero_point.any()
            assert qw.qdata.dtype == torch.int8
            err = (qw.dequantize() - w).abs()
            # the row's max sits at 127.5 steps and rounds to 127: exactly half a step, up to fp32 rounding
            # of a difference of two values 255 half-steps large (a relative 1e-7 each)
            assert (err <= scale / 2 * (1 + 1e-4)).all() and err.max() > 0


def test_int4_weights_are_within_half_a_step_of_each_group_of_128(lenet, quantized):
    q, _ = quantized["int4-weight-only"]
    # the kernel's own weights: a Linear fed the identity returns W^T (+ bias)
    seen = (q.fc1(torch.eye(FC1[1])) - q.fc1.bias).detach().T
    w = lenet.fc1.weight.detach()
    groups = w.view(FC1[0], -1, 128)
    step = (groups.amax(2) - groups.amin(2)) / 15   # 16 levels from min to max of each group
    err = (seen - w).view(FC1[0], -1, 128).abs().amax(2)
    assert (err <= step / 2 * (1 + 1e-3)).all()
    whole_row = (w.amax(1) - w.amin(1)) / 15   # a per-row int4 step would be coarser: groups are real
    assert (step <= whole_row.unsqueeze(1)).all() and (step < whole_row.unsqueeze(1)).any()


def test_predictions_agree_mostly_not_identically_and_int4_moves_more(lenet, quantized, digits):
    base = infer(lenet, digits.test_x, digits)
    moved = {}
    for scheme, (q, _) in quantized.items():
        # as a study evaluates a compressed run: on the CPU, channels-last, eval mode
        probs, m = evaluate(q, digits, device="cpu", channels_last=True)
        logits = infer(q, digits.test_x, digits)
        agree = float((probs.argmax(1) == base.argmax(1).numpy()).mean())
        assert agree >= 0.97 and abs(m["test_acc"] - float((base.argmax(1) == digits.test_y).float().mean())) < 0.03
        assert logits.dtype == torch.float32 and not torch.equal(logits, base), scheme
        moved[scheme] = float((logits - base).abs().mean())
    assert moved["int4-weight-only"] > 2 * moved["int8-weight-only"], moved


def test_int4_group_size_is_the_configs_or_a_one_line_error(lenet):
    q, info = compress(lenet, TorchaoCfg("int4-weight-only", group_size=32))
    assert (info.group_size, info.setting) == (32, "torchao int4-weight-only (group 32)")
    assert q.fc1.weight.block_size == [1, 32]
    with pytest.raises(ConfigError, match="group_size 0 .* 32, 64, 128, got 16"):
        compress(lenet, TorchaoCfg("int4-weight-only", group_size=16))


def test_a_layer_of_a_shape_int4_cannot_take_is_left_fp32_and_not_counted():
    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))

    # groups of 128: only the first layer's 256 inputs divide; groups of 64: the second's 64 too, while the
    # last layer's 10 outputs are no multiple of 16 at any group size
    m = net()
    assert quantize_torchao_(m, TorchaoCfg("int4-weight-only")) == ["0"]
    assert type(m[2].weight) is nn.Parameter and type(m[4].weight) is nn.Parameter
    m = net()
    assert quantize_torchao_(m, TorchaoCfg("int4-weight-only", group_size=64)) == ["0", "2"]
    assert [type(m[i].weight).__name__ for i in (0, 2, 4)] == ["Int4OpaqueTensor", "Int4OpaqueTensor", "Parameter"]


def test_a_model_with_no_layer_the_scheme_takes_is_a_config_error():
    convs = nn.Sequential(nn.Conv2d(1, 16, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ConfigError, match="int8-dynamic quantizes nn.Linear layers only, and Sequential has none"):
        compress(convs, TorchaoCfg("int8-dynamic"))
    with pytest.raises(ConfigError, match="in_features a multiple of 128 and out_features of 16 only"):
        compress(nn.Sequential(nn.Linear(64, 10)), TorchaoCfg("int4-weight-only"))


# ---------------------------------------------------------------- torchao missing

NO_TORCHAO = "import sys; sys.modules['torchao'] = None\n"   # the import system's own "not installed" path


def python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def test_missing_torchao_is_a_config_error_naming_the_extra_and_other_methods_still_work():
    r = python(NO_TORCHAO + """
import torch.nn as nn
from funclens.compress import compress
from funclens.config import QuantCfg, TorchaoCfg
m = nn.Sequential(nn.Linear(8, 4))
print(compress(m, QuantCfg("8-bit"))[1].setting)
try:
    compress(m, TorchaoCfg("int8-weight-only"))
except Exception as e:
    print(type(e).__name__, e)
""")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "8-bit" and len(lines) == 2
    assert lines[1].startswith("ConfigError ") and 'pip install "funclens[torchao]"' in lines[1]


def test_study_with_a_torchao_setting_without_torchao_exits_2_naming_the_extra(tmp_path):
    (tmp_path / "s.toml").write_text(study_file(["int8-weight-only"], epochs=1))
    r = python(NO_TORCHAO + "import runpy\nsys.argv = ['funclens', 'study', 's.toml', '--out', 'out', "
               "'--jobs', '1', '--offline']\nrunpy.run_module('funclens', run_name='__main__')", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    # refused at the start, in one line naming the extra, before anything trained
    assert r.stderr.strip().count("\n") == 0 and 'pip install "funclens[torchao]"' in r.stderr, r.stderr
    assert not (tmp_path / "out" / "runs").exists()


# ---------------------------------------------------------------- a study with torchao settings

def study_file(schemes: list[str], epochs: int) -> str:
    return (f'name = "ao"\nseeds = [0, 1]\nquantize = []\nprune = []\ntorchao = {json.dumps(schemes)}\n'
            f'[data]\ndataset = "digits"\n[train]\nepochs = {epochs}\nlr = 0.02\n[distill]\nalphas = []\n')


def test_study_has_a_row_per_torchao_setting_with_a_verdict(tmp_path):
    (tmp_path / "s.toml").write_text(study_file(list(SCHEMES), epochs=2))
    r = run_cli("study", str(tmp_path / "s.toml"), "--out", str(tmp_path / "out"), "--jobs", "1", "--offline")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    rows = {row["setting"]: row for row in s["rows"] if row["method"] == "quantize"}
    assert set(rows) == {f"torchao {x}" for x in SCHEMES}
    for row in rows.values():
        assert row["verdict"] in ("preserves", "partial", "independent-like") and len(row["runs"]) == 1
        lo, hi = row["rfd_ci"]
        assert lo <= row["rfd"] <= hi and 0 <= row["disagreement"] < 0.5
        metrics = json.loads((tmp_path / "out" / "runs" / row["runs"][0] / "metrics.json").read_text())
        assert metrics["library"] == f"torchao {torchao.__version__}" and metrics["loadable"] is False
        assert metrics["weight_bytes"] < metrics["fp32_bytes"] and metrics["conv_layers_compressed"] == 0
        assert not (tmp_path / "out" / "runs" / row["runs"][0] / "model.pt").exists()   # only its predictions
