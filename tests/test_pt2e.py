"""PT2E static int8 (x86 inductor quantizer): a trained LeNet on digits, quantized and compiled once per module."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torchao
from torch.profiler import ProfilerActivity, profile

from funclens.compress import compress
from funclens.config import ConfigError, DataCfg, ModelCfg, Pt2eCfg, RunSpec, TrainCfg
from funclens.data import load_dataset
from funclens.train import calibration_images, evaluate, train

CAL = 64


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained(digits):
    model, _ = train(RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(epochs=2, lr=0.02)), digits)
    return model.eval()


@pytest.fixture(scope="module")
def int8(trained, digits):
    return compress(trained, Pt2eCfg(calibration=CAL), calibration_images(digits, CAL))


def test_int8_agrees_with_fp32_on_most_inputs_but_not_identically(trained, int8, digits) -> None:
    model, info = int8
    fp32_probs, fp32_m = evaluate(trained, digits, device="cpu", channels_last=True)
    probs, m = evaluate(model, digits, device="cpu", channels_last=True)   # 360 images: the last chunk is padded
    assert probs.shape == fp32_probs.shape == (len(digits.test_y), 10)
    agree = (probs.argmax(1) == fp32_probs.argmax(1)).mean()
    assert agree >= 0.95, agree
    assert abs(m["test_acc"] - fp32_m["test_acc"]) < 0.05
    # int8 arithmetic, not the fp32 function again: the probabilities move
    assert abs(probs.astype("float32") - fp32_probs.astype("float32")).max() > 1e-3
    assert not info.loadable and info.setting == "PT2E int8" and info.method == "quantize"


def test_convolutions_and_linears_run_as_onednn_int8_kernels(int8, digits) -> None:
    model, info = int8
    x = digits.normalize(digits.test_x[:100])      # two 64-image chunks
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
    ran = {e.key: e.count for e in prof.key_averages()}
    assert ran.get("onednn::qconv_pointwise") == 2 * 2, ran     # LeNet's 2 convolutions, per chunk
    assert ran.get("onednn::qlinear_pointwise") == 2 * 2, ran   # and its 2 linear layers
    fp32_ops = [k for k in ran if k in ("aten::conv2d", "aten::convolution", "aten::linear", "aten::addmm",
                                        "mkldnn::_convolution_pointwise", "mkl::_mkl_linear")]
    assert fp32_ops == [], fp32_ops
    assert (info.layers_compressed, info.conv_layers_compressed, info.layers_total) == (4, 2, 4)


def test_latency_is_measured_for_both_models(int8) -> None:
    _, info = int8
    for ms in (info.latency_ms, info.fp32_latency_ms):
        assert isinstance(ms, float) and 0 < ms < 10_000
    assert info.latency_batch == CAL
    assert info.library == f"torchao {torchao.__version__}, torch {torch.__version__}"
    assert {"latency_ms", "fp32_latency_ms", "latency_batch", "library"} <= set(info.to_json())


def test_weight_bytes_by_hand(trained, int8) -> None:
    _, info = int8
    layers = [m for m in trained.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    # int8 weights, an fp32 scale and an int32 zero point per output channel, fp32 biases
    want = sum(m.weight.numel() + 8 * m.weight.shape[0] + 4 * m.bias.numel() for m in layers)
    assert info.weight_bytes == want == 55_576
    assert info.fp32_bytes == 4 * sum(p.numel() for p in trained.parameters())


def test_each_image_is_computed_alone_whatever_the_batch(int8, digits) -> None:
    model, _ = int8
    x = digits.normalize(digits.test_x[:70])
    alone = torch.cat([model(x[i:i + 1]) for i in (0, 5, 69)])
    together = model(x)[[0, 5, 69]]
    assert together.shape == (3, 10)
    torch.testing.assert_close(alone, together, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="takes inputs"):
        model(torch.zeros(2, 3, 8, 8))


def test_bad_input_is_a_config_error(trained) -> None:
    with pytest.raises(ConfigError, match="needs calibration images"):
        compress(trained, Pt2eCfg(calibration=4))
    with pytest.raises(ConfigError, match="float tensor"):
        compress(trained, Pt2eCfg(calibration=4), torch.zeros(0, 1, 8, 8))


class _Branchy(nn.Module):
    """A branch on the data's values: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x.flatten(1))
        return y if y.sum() > 0 else -y


def test_a_model_export_cannot_capture_is_a_config_error(digits) -> None:
    with pytest.raises(ConfigError, match="torch.export cannot capture _Branchy"):
        compress(_Branchy(), Pt2eCfg(calibration=8), calibration_images(digits, 8))


def test_missing_torchao_names_the_extra() -> None:
    code = ("import sys; sys.modules['torchao'] = None\n"
            "import torch\n"
            "from funclens.compress import compress\n"
            "from funclens.config import ConfigError, Pt2eCfg\n"
            "from funclens.models import create_model\n"
            "m = create_model('lenet', in_shape=(1, 8, 8), num_classes=10)\n"
            "try:\n"
            "    compress(m, Pt2eCfg(calibration=4), torch.zeros(4, 1, 8, 8))\n"
            "except ConfigError as e:\n"
            "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ['PT2E quantization needs torchao, which does not import here (import of '
                                     'torchao halted; None in sys.modules): pip install "funclens[torchao]"']
