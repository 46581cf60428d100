"""Tests for funclens.compress: quantization and L1 pruning checked against independent computations."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

from funclens.compress import compress, weight_layers
from funclens.compress.quantize import dequantize_packed, pack_int4, unpack_int4
from funclens.config import ConfigError, PruneCfg, QuantCfg
from funclens.models import create_model

LENET = dict(in_shape=(1, 28, 28), num_classes=10)
# LeNet on 1x28x28 by hand: conv1 32x1x3x3, conv2 64x32x3x3, fc1 128x(64*5*5), fc2 10x128
LENET_WEIGHTS = {"conv1": (32, 1 * 3 * 3), "conv2": (64, 32 * 3 * 3), "fc1": (128, 64 * 5 * 5), "fc2": (10, 128)}
N_WEIGHTS = sum(o * i for o, i in LENET_WEIGHTS.values())  # 224,800
N_BIASES = sum(o for o, _ in LENET_WEIGHTS.values())  # 234: one per output channel
N_CHANNELS = N_BIASES

LOADABLE_CFGS = [QuantCfg("16-bit"), QuantCfg("bf16"), QuantCfg("8-bit"), QuantCfg("4-bit"),
                 QuantCfg("4-bit", group_size=32), PruneCfg(0.5), PruneCfg(0.5, scope="global")]
ALL_CFGS = LOADABLE_CFGS + [QuantCfg("dynamic-int8")]


def lenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("lenet", **LENET)


def skewed_lenet() -> nn.Module:
    """LeNet whose output channels (and input columns) differ in scale by orders of magnitude, so that a
    per-tensor scale where a per-channel/per-group one is due gives errors far above half a step."""
    m = lenet()
    with torch.no_grad():
        m.conv2.weight[0] *= 1e-3
        m.conv2.weight[5] *= 50.0
        m.fc1.weight[3] *= 1e-3
        m.fc1.weight[:, :32] *= 20.0  # the first group of 32 inputs dwarfs the rest of every row
    return m


def rows(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1)


def test_lenet_shapes_match_the_hand_count() -> None:
    m = lenet()
    assert {n: tuple(rows(l.weight).shape) for n, l in weight_layers(m)} == LENET_WEIGHTS
    assert N_WEIGHTS + N_BIASES == 225_034


# ---------------------------------------------------------------- pruning

@pytest.mark.parametrize("amount", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_layer_pruning_matches_torch_mask_and_amount(amount: float) -> None:
    m = lenet()
    pruned, info = compress(m, PruneCfg(amount))
    assert info.method == "prune" and info.setting == f"{round(amount * 100)}%"
    zeros_all = 0
    for name, layer in weight_layers(m):
        ref = copy.deepcopy(layer)
        tprune.l1_unstructured(ref, "weight", amount=amount)  # torch's own mask, computed independently
        mask = ref.weight_mask.bool()
        w = pruned.get_submodule(name).weight.detach()
        assert torch.equal(w != 0, mask), name
        assert torch.equal(w[mask], layer.weight.detach()[mask]), "kept weights must be unchanged"
        zeros = int((w == 0).sum())
        assert abs(zeros - amount * w.numel()) <= 1, name  # within rounding of one weight
        assert info.sparsity_by_layer[name] == pytest.approx(zeros / w.numel())
        zeros_all += zeros
        assert torch.equal(pruned.get_submodule(name).bias, layer.bias), "biases are not pruned"
    assert info.sparsity == pytest.approx(zeros_all / N_WEIGHTS)
    assert info.layers_compressed == info.layers_total == 4 and info.conv_layers_compressed == 2


@pytest.mark.parametrize("amount", [0.5, 0.8])
def test_global_pruning_uses_one_threshold(amount: float) -> None:
    m = lenet()
    pruned, info = compress(m, PruneCfg(amount, scope="global"))
    assert info.setting == f"global {round(amount * 100)}%"
    orig = torch.cat([l.weight.detach().abs().flatten() for _, l in weight_layers(m)])
    new = torch.cat([l.weight.detach().flatten() for _, l in weight_layers(pruned)])
    assert abs(int((new == 0).sum()) - amount * N_WEIGHTS) <= 1
    assert info.sparsity == pytest.approx(amount, abs=1 / N_WEIGHTS)
    assert orig[new != 0].min() >= orig[new == 0].max()  # every kept |w| >= every pruned |w|
    # default init scales weights by 1/sqrt(fan_in): one threshold prunes the wide fc1 far more than conv1
    by_layer = info.sparsity_by_layer
    assert by_layer["fc1"] > amount > by_layer["conv1"]


@pytest.mark.parametrize("cfg", [PruneCfg(0.3), PruneCfg(0.5, scope="global")])
def test_pruned_state_dict_has_the_original_keys_in_order(cfg: PruneCfg) -> None:
    m = lenet()
    pruned, _ = compress(m, cfg)
    assert list(pruned.state_dict()) == list(m.state_dict())
    assert not any(t._forward_pre_hooks for _, t in weight_layers(pruned)), "pruning must be made permanent"


# ---------------------------------------------------------------- quantization

def test_int8_per_channel_values_and_half_step() -> None:
    m = skewed_lenet()
    q, info = compress(m, QuantCfg("8-bit"))
    packed = info.packed
    for name, layer in weight_layers(m):
        w, w2 = rows(layer.weight), rows(q.get_submodule(name).weight)
        scale = w.abs().amax(dim=1) / 127  # computed here independently
        for c in range(w.shape[0]):
            assert w2[c].unique().numel() <= 255, (name, c)
        err = (w - w2).abs()
        assert (err <= scale[:, None] / 2 + 1e-6 * w.abs().amax(dim=1, keepdim=True)).all(), name
        # the packed int8 values dequantize exactly to the returned weights
        qi, s = packed[f"{name}.weight"], packed[f"{name}.weight_scale"]
        assert qi.dtype == torch.int8 and qi.shape == layer.weight.shape and qi.abs().max() <= 127
        assert s.dtype == torch.float32 and s.shape == (w.shape[0],)
        torch.testing.assert_close(s, scale, rtol=1e-6, atol=0)
        assert torch.equal(rows(qi).float() * s[:, None], w2)
        assert torch.equal(q.get_submodule(name).bias, layer.bias), "biases stay fp32"
    assert info.conv_layers_compressed == 2 and info.loadable is True


def test_int8_all_zero_channel_stays_zero() -> None:
    m = lenet()
    with torch.no_grad():
        m.conv1.weight[7].zero_()
    q, info = compress(m, QuantCfg("8-bit"))
    assert torch.isfinite(q.conv1.weight).all() and (q.conv1.weight[7] == 0).all()
    assert torch.isfinite(info.packed["conv1.weight_scale"]).all()


@pytest.mark.parametrize("group_size", [0, 32, 7])  # per channel; dividing most rows; never dividing evenly
def test_int4_values_and_half_step(group_size: int) -> None:
    m = skewed_lenet()
    cfg = QuantCfg("4-bit", group_size=group_size)
    q, info = compress(m, cfg)
    for name, layer in weight_layers(m):
        w, w2 = rows(layer.weight), rows(q.get_submodule(name).weight)
        length = w.shape[1]
        g = length if group_size == 0 or group_size >= length else group_size
        starts = range(0, length, g)
        scale = info.packed[f"{name}.weight_scale"]
        assert scale.shape == (w.shape[0], len(starts)), name
        for j, s in enumerate(starts):
            wg, w2g = w[:, s:s + g], w2[:, s:s + g]  # the last group may be shorter
            step = wg.abs().amax(dim=1) / 7  # independent: this group's own max|w|
            torch.testing.assert_close(scale[:, j], step, rtol=1e-6, atol=0)
            for c in range(w.shape[0]):
                assert w2g[c].unique().numel() <= 15, (name, c, j)
            assert ((wg - w2g).abs() <= step[:, None] / 2 + 1e-6 * wg.abs().amax()).all(), (name, j)
        packed_w = info.packed[f"{name}.weight"]
        assert packed_w.dtype == torch.uint8 and packed_w.numel() == math.ceil(layer.weight.numel() / 2)
    sd = dequantize_packed(info.packed, cfg, m)
    assert all(torch.equal(sd[k], v) for k, v in q.state_dict().items())


def test_pack_int4_round_trip() -> None:
    q = torch.randint(-7, 8, (3, 5, 3), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.numel() == 23  # 45 values, two per byte
    assert torch.equal(unpack_int4(packed, q.shape), q)


@pytest.mark.parametrize(("scheme", "dtype"), [("16-bit", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_round_trip_is_exact(scheme: str, dtype: torch.dtype) -> None:
    m = lenet()
    q, info = compress(m, QuantCfg(scheme))
    for name, layer in weight_layers(m):
        new = q.get_submodule(name).weight
        assert new.dtype == torch.float32
        assert torch.equal(new, layer.weight.detach().to(dtype).float())
        assert torch.equal(info.packed[f"{name}.weight"], layer.weight.detach().to(dtype))
        assert torch.equal(q.get_submodule(name).bias, layer.bias)
    assert not torch.equal(q.fc1.weight, m.fc1.weight), "rounding must change some weight"


def test_dynamic_int8_quantizes_linear_only_and_agrees() -> None:
    m = lenet().eval()
    q, info = compress(m, QuantCfg("dynamic-int8"))
    assert info.conv_layers_compressed == 0 and info.layers_compressed == 2
    assert info.loadable is False and info.packed is None
    assert type(q.conv1) is nn.Conv2d and q.conv1.weight.dtype == torch.float32
    assert torch.equal(q.conv2.weight, m.conv2.weight), "convolutions are left alone"
    assert not isinstance(q.fc1, nn.Linear)
    x = torch.randn(256, *LENET["in_shape"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        agree = (q(x).argmax(1) == m(x).argmax(1)).float().mean()
    assert agree > 0.95


# ---------------------------------------------------------------- every method

@pytest.mark.parametrize("cfg", ALL_CFGS, ids=str)
def test_caller_model_is_unchanged(cfg: QuantCfg | PruneCfg) -> None:
    m = lenet()
    params = {n: p for n, p in m.named_parameters()}
    before = {k: v.clone() for k, v in m.state_dict().items()}
    out, info = compress(m, cfg)
    assert out is not m
    assert {n: p for n, p in m.named_parameters()} == params, "same Parameter objects"
    assert list(m.state_dict()) == list(before)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in before.items())
    assert type(m.fc1) is nn.Linear and not m.fc1._forward_pre_hooks
    rec = json.loads(json.dumps(info.to_json()))   # what metrics.json keeps: JSON, without the tensors
    assert "packed" not in rec and rec["setting"] == info.setting and rec["fp32_bytes"] == info.fp32_bytes > 0
    assert all(v is not None for v in rec.values())


@pytest.mark.parametrize("cfg", LOADABLE_CFGS, ids=str)
def test_returned_state_dict_loads_into_a_fresh_model(cfg: QuantCfg | PruneCfg) -> None:
    m = lenet()
    out, info = compress(m, cfg)
    assert info.loadable is True
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in out.state_dict().values())
    fresh = lenet(seed=1)
    fresh.load_state_dict(out.state_dict())  # strict: same keys and shapes
    x = torch.randn(4, *LENET["in_shape"])
    with torch.no_grad():
        assert torch.equal(fresh(x), out(x))


def test_weight_bytes_by_hand(tmp_path) -> None:
    m = lenet()
    fp32 = (N_WEIGHTS + N_BIASES) * 4
    biases = N_BIASES * 4  # always fp32
    int4_bytes = sum(math.ceil(o * i / 2) for o, i in LENET_WEIGHTS.values())
    groups32 = sum(o * math.ceil(i / 32) for o, i in LENET_WEIGHTS.values())  # conv1: 9 < 32, one group
    expect = {
        QuantCfg("16-bit"): N_WEIGHTS * 2 + biases,
        QuantCfg("bf16"): N_WEIGHTS * 2 + biases,
        QuantCfg("8-bit"): N_WEIGHTS * 1 + N_CHANNELS * 4 + biases,
        QuantCfg("4-bit"): int4_bytes + N_CHANNELS * 4 + biases,
        QuantCfg("4-bit", group_size=32): int4_bytes + groups32 * 4 + biases,
        # fc1 and fc2 only: int8 weights + fp32 scale and int32 zero point each; convs stay fp32
        QuantCfg("dynamic-int8"): (288 + 18432) * 4 + (204800 + 1280) + 2 * 8 + biases,
        PruneCfg(0.5): fp32,
    }
    for cfg, want in expect.items():
        _, info = compress(m, cfg)
        assert info.fp32_bytes == fp32 == 900_136
        assert info.weight_bytes == want, cfg
    _, info8 = compress(m, QuantCfg("8-bit"))
    assert 0.24 < info8.weight_bytes / fp32 < 0.26
    _, info16 = compress(m, QuantCfg("16-bit"))
    assert 0.49 < info16.weight_bytes / fp32 < 0.51
    # the packed tensors really are that small on disk (plus pickle overhead)
    torch.save(info8.packed, tmp_path / "q8.pt")
    assert info8.weight_bytes < (tmp_path / "q8.pt").stat().st_size < info8.weight_bytes + 20_000


@pytest.mark.parametrize("amount", [0.3, 0.9])
def test_sparse_bytes_by_hand(amount: float) -> None:
    pruned, info = compress(lenet(), PruneCfg(amount))
    nonzero = sum(int(torch.count_nonzero(l.weight)) for _, l in weight_layers(pruned))
    row_ptrs = sum(o + 1 for o, _ in LENET_WEIGHTS.values())
    assert info.sparse_bytes == nonzero * (4 + 4) + row_ptrs * 4 + N_BIASES * 4
    assert info.weight_bytes == info.fp32_bytes


def test_bad_input_raises_config_error() -> None:
    with pytest.raises(ConfigError):
        compress(lenet(), "8-bit")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        compress(nn.Sequential(nn.ReLU()), QuantCfg("8-bit"))


@pytest.mark.parametrize("arch", ["resnet50", "mobilenet_v1"])
def test_big_models_compress_and_run(arch: str) -> None:
    torch.manual_seed(0)
    m = create_model(arch, in_shape=(3, 32, 32), num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    for cfg in (QuantCfg("8-bit"), PruneCfg(0.5)):
        out, info = compress(m, cfg)
        assert info.layers_compressed == info.layers_total > 20
        with torch.no_grad():
            y = out.eval()(x)
        assert y.shape == (2, 10) and torch.isfinite(y).all()
    assert info.sparsity == pytest.approx(0.5, abs=1e-3)


def test_a_model_left_channels_last_by_training_or_inference_compresses_as_any_other():
    m = create_model("lenet", in_shape=(1, 28, 28), num_classes=10)
    want = compress(m, PruneCfg(0.5))[0].state_dict()
    m.to(memory_format=torch.channels_last)   # what train(), infer() and evaluate() leave behind
    got = compress(m, PruneCfg(0.5))[0].state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
