"""Users' own compressors ([[custom]]): called on the base with calibration images, their output checked, their
source file pinned into the run id; their rows, the fine-tuned pruning rows and the cost table in the report."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import funclens
from conftest import run_cli
from funclens.compress import compress
from funclens.compress.custom import pin_custom
from funclens.config import ConfigError, CustomCfg, StudyCfg
from funclens.data import load_dataset
from funclens.models import create_model
from funclens.plan import ROLES, plan
from funclens.report import cost_md
from funclens.summary import analyse, load_study
from funclens.train import calibration_images
from test_cli import one_line_error

SRC = Path(funclens.__file__).resolve().parents[1]

# Compressors of a user's own, in a module outside the package. `half` halves the weights' bytes: fp16 weights
# and arithmetic behind an fp32 interface (another structure: its predictions count, not a state_dict).
# `rounded` rounds the weights to fp16 in place (the study's architecture, fp32 arithmetic: loadable).
COMPRESSORS = '''
import torch
import torch.nn as nn


class Half(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model.half()

    def forward(self, x):
        return self.model(x.half()).float()


def half(model, calibration):
    return Half(model)


def rounded(model, calibration):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def seen(model, calibration):
    model.seen = calibration.clone()
    return model


def fails(model, calibration):
    raise ValueError("no layers to squeeze\\nsecond line")


def not_a_model(model, calibration):
    return model.state_dict()


def wrong_head(model, calibration):
    return nn.Sequential(model, nn.Linear(10, 3))


def nan_logits(model, calibration):
    model.fc2.bias.data.fill_(float("nan"))
    return model


def exits(model, calibration):
    raise SystemExit(0)
'''

STUDY = """name = "mine"
seeds = [0, 1]
quantize = []
prune = [0.5]
finetune_epochs = 1
calibration_images = 64
[data]
dataset = "digits"
[train]
epochs = 2
[distill]
alphas = []
[[custom]]
name = "half"
fn = "mycomp:half"
"""


@pytest.fixture
def mods(tmp_path: Path, monkeypatch) -> Path:
    """``tmp_path/mods/mycomp.py`` on this process's import path (and ``PYTHONPATH`` for the CLI)."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "mycomp.py").write_text(COMPRESSORS)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.delitem(sys.modules, "mycomp", raising=False)  # another test's mycomp.py, imported before
    return tmp_path / "mods"


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, env={"PYTHONPATH": os.pathsep.join([str(cwd / "mods"), str(SRC)])})


def digits_model() -> tuple[nn.Module, torch.Tensor]:
    ds = load_dataset("digits")
    torch.manual_seed(0)
    return create_model("lenet", in_shape=ds.in_shape, num_classes=ds.num_classes), calibration_images(ds, 32)


# ---------------------------------------------------------------- the method

def test_the_compressor_gets_a_copy_and_the_calibration_images_and_its_info_is_measured(mods):
    model, cal = digits_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out, info = compress(model, CustomCfg("seen", "mycomp:seen"), cal)
    assert torch.equal(out.seen, cal) and out is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert (info.method, info.setting, info.loadable, info.layers_compressed) == ("custom", "seen", True, 0)

    out, info = compress(model, CustomCfg("rounded", "mycomp:rounded"), cal)
    assert info.loadable and info.layers_compressed == info.layers_total == 4 and info.conv_layers_compressed == 2
    assert all(torch.equal(p, p.half().float()) for p in out.parameters())
    assert info.weight_bytes == info.fp32_bytes   # rounded, but still stored at fp32

    out, info = compress(model, CustomCfg("half", "mycomp:half"), cal)
    assert not info.loadable   # another structure: its state_dict is not the architecture's
    assert info.weight_bytes == info.fp32_bytes // 2 and info.layers_compressed == 4
    assert out(cal).shape == (32, 10)


@pytest.mark.parametrize("fn, needles", [
    ("mycomp:fails", ("custom compressor 'bad' (mycomp:fails) raised ValueError: no layers to squeeze",)),
    ("mycomp:not_a_model", ("returned a OrderedDict, not a torch.nn.Module",)),
    ("mycomp:wrong_head", ("the model it returned gives [32, 3] on the calibration images, not logits [32, 10]",)),
    ("mycomp:nothing", ("custom compressor 'bad' (mycomp:nothing): mycomp has no function nothing",)),
    ("mycomp:nan_logits", ("gives NaN or infinite logits on the calibration images",)),
    # an exit inside the user's code must not end a study as if it had finished
    ("mycomp:exits", ("custom compressor 'bad' (mycomp:exits) raised SystemExit: 0",)),
])
def test_a_compressor_that_fails_or_returns_no_fitting_model_is_one_line(mods, fn, needles):
    model, cal = digits_model()
    with pytest.raises(ConfigError) as e:
        compress(model, CustomCfg("bad", fn), cal)
    assert "\n" not in str(e.value)
    for n in needles:
        assert n in str(e.value), str(e.value)


# ---------------------------------------------------------------- pinning

def test_editing_the_compressors_file_names_other_runs_and_a_stale_pin_is_refused(mods):
    study = StudyCfg(custom=(CustomCfg("half", "mycomp:half"),))
    first = pin_custom(study.custom)
    assert first[0].source_sha256 == hashlib.sha256((mods / "mycomp.py").read_bytes()).hexdigest()
    assert pin_custom(study.custom) == first   # the same file: the same runs
    (mods / "mycomp.py").write_text(COMPRESSORS + "\n# scale by 0.5 instead\n")
    second = pin_custom(study.custom)
    ids = [{p.run_id: p.role for p in plan(study.replace(custom=c))} for c in (first, second)]
    assert {r for r in ids[0] if ids[0][r] != "custom"} == {r for r in ids[1] if ids[1][r] != "custom"}
    changed = [set(r for r in i if i[r] == "custom") for i in ids]
    assert len(changed[0]) == len(changed[1]) == 1 and changed[0] != changed[1]
    model, cal = digits_model()
    with pytest.raises(ConfigError, match="mycomp.py changed since the study started"):
        compress(model, first[0], cal)


@pytest.mark.parametrize("fn, needles", [
    ("nosuchmod:half", ("custom compressor 'half' (nosuchmod:half): cannot import nosuchmod", "PYTHONPATH")),
    ("mycomp:nothing", ("custom compressor 'half' (mycomp:nothing): mycomp has no function nothing",)),
])
def test_a_missing_module_or_function_is_refused_at_study_start(mods, fn, needles):
    (mods.parent / "s.toml").write_text(STUDY.replace("mycomp:half", fn))
    one_line_error(cli(mods.parent, "study", "s.toml", "--out", "out"), *needles)
    assert not (mods.parent / "out").exists()   # refused before the data were read or a folder made


def test_a_module_that_exits_while_imported_is_one_line_not_exit_3(mods):
    # exit 3 is --fail-if's "a condition failed": a user's module must not pass for it
    (mods / "quits.py").write_text("import sys\nsys.exit(3)\n")
    (mods.parent / "s.toml").write_text(STUDY.replace("mycomp:half", "quits:half"))
    one_line_error(cli(mods.parent, "study", "s.toml", "--out", "out"),
                   "custom compressor 'half' (quits:half): importing quits failed (SystemExit: 3)")
    assert not (mods.parent / "out").exists()


# ---------------------------------------------------------------- a study with it, and its report

def test_a_digits_study_has_the_custom_and_fine_tuned_rows_with_verdicts(mods):
    root = mods.parent
    (root / "s.toml").write_text(STUDY)
    r = cli(root, "study", "s.toml", "--out", "out", "--jobs", "1")
    assert r.returncode == 0, r.stderr
    s = json.loads((root / "out" / "summary.json").read_text())
    rows = {(row["role"], row["method"], row["setting"]): row for row in s["rows"]}
    assert set(rows) == {("independent", "independent", "seed=1"), ("prune", "prune", "50%"),
                         ("finetune", "prune", "50% + 1 ep fine-tune"), ("custom", "custom", "half")}
    mine = rows[("custom", "custom", "half")]
    assert mine["verdict"] in ("preserves", "partial", "independent-like")
    assert mine["weight_bytes"] * 2 == mine["fp32_bytes"] and 0 <= mine["disagreement"] < 0.05
    sha = hashlib.sha256((mods / "mycomp.py").read_bytes()).hexdigest()
    assert s["setup"]["custom"] == [{"name": "half", "fn": "mycomp:half", "source_sha256": sha}]
    assert s["setup"]["finetune_epochs"] == 1 and s["setup"]["calibration_images"] == 64
    assert not any(k in row for row in s["rows"] for k in ("latency_ms", "library"))
    md = (root / "out" / "report.md").read_text()
    assert "- custom half: RFD" in md and "- prune 50% + 1 ep fine-tune: RFD" in md
    assert f"half = mycomp:half ({sha})" in md and "| custom half |" in md.split("## Functional distance")[0]
    assert "## Cost" not in md   # no row measured latency or counted MACs
    with open(root / "out" / "tables" / "landscape.csv") as f:
        roles = {row["role"] for row in csv.DictReader(f)}
    assert {"custom", "finetune"} <= roles and (ROLES["custom"].letter, ROLES["finetune"].letter) == ("X", "R")
    # The report is redone from the store alone, without the compressor's module on the path.
    r = run_cli("report", "out", cwd=root, env={"PYTHONPATH": str(SRC)})
    assert r.returncode == 0, r.stderr
    assert json.loads((root / "out" / "summary.json").read_text())["rows"] == s["rows"]
    # The libraries' measurements, where a run recorded them, are carried into its row and shown as cost.
    sv = load_study(root / "out")
    cost = {"params": 900, "base_params": 1800, "latency_ms": 1.5, "fp32_latency_ms": 3.0, "latency_batch": 64,
            "library": "mylib 1.0"}
    sv.runs = [dataclasses.replace(v, info={**v.info, **cost}) if v.role == "custom" else v for v in sv.runs]
    row = next(row for row in analyse(sv)["rows"] if row["role"] == "custom")
    assert {k: row[k] for k in cost} == cost
    table = cost_md([{"arch": "lenet", "rows": [row]}])
    assert "| lenet | custom | half | mylib 1.0 |" in table and "| 1,800 → 900 |" in table
    assert "| 3.000 → 1.500 (64) | 2.00x |" in table


def test_the_cost_table_shows_only_what_was_measured():
    rows = [{"method": "prune", "setting": "channels 50%", "params": 1200, "base_params": 4800, "macs": 10_000,
             "base_macs": 40_000, "library": "torch-pruning 1.6.1"},
            {"method": "prune", "setting": "50%", "fp32_bytes": 400}]
    table = cost_md([{"arch": "lenet", "rows": rows}]).splitlines()
    assert len(table) == 3   # head, rule, and the one row that measured something
    assert table[2] == ("| lenet | prune | channels 50% | torch-pruning 1.6.1 |  | 4,800 → 1,200 | "
                        "40,000 → 10,000 |  |  |")
