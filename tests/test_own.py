"""Users' own models, data and checkpoints in a study, and models compared in Python with compare_models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import funclens
from conftest import run_cli
from funclens.checkpoints import load_checkpoint, pin_checkpoints
from funclens.config import BaseCfg, ConfigError, DataCfg, DistillGrid, ModelCfg, StudyCfg, TrainCfg
from funclens.data import load_dataset
from funclens.errors import DataError
from funclens.execute import RunContext
from funclens.models import check_arch, create_model
from funclens.plan import plan
from funclens.store import Store
from funclens.study import run_study
from test_cli import one_line_error

SRC = Path(funclens.__file__).resolve().parents[1]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "own"  # the README's "Bring your own" files
OWN_STUDY = (EXAMPLES / "study.toml").read_text()
# The example's factory module, with one more factory that builds no model, for the bad-input cases.
FACTORIES = (EXAMPLES / "mynets.py").read_text() + '''

def not_a_model(in_shape, num_classes):
    return "a model"
'''


def digits_arrays() -> dict[str, np.ndarray]:
    """The digits set as an npz data set holds it: [N, H, W] uint8 images and integer labels."""
    d = load_dataset("digits")
    return {"x_train": d.train_x[:, 0].numpy(), "y_train": d.train_y.numpy(),
            "x_test": d.test_x[:, 0].numpy(), "y_test": d.test_y.numpy()}


@pytest.fixture
def own(tmp_path: Path) -> Path:
    """A folder with a factory module (mods/mynets.py), a compressor (mods/mycompress.py), digits as digits.npz,
    and the study file."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "mynets.py").write_text(FACTORIES)
    shutil.copy(EXAMPLES / "mycompress.py", tmp_path / "mods" / "mycompress.py")
    np.savez(tmp_path / "digits.npz", **digits_arrays())
    (tmp_path / "own.toml").write_text(OWN_STUDY)
    return tmp_path


def cli(own: Path, *args: str, pythonpath: bool = True) -> subprocess.CompletedProcess:
    """The command in ``own``, with its factory module on PYTHONPATH (or not)."""
    path = os.pathsep.join([str(own / "mods"), str(SRC)] if pythonpath else [str(SRC)])
    return run_cli(*args, cwd=own, env={"PYTHONPATH": path})


# ---------------------------------------------------------------- a study of your own model and data

def test_study_of_a_factory_from_outside_on_an_npz_data_set_has_every_row(own):
    r = cli(own, "study", "own.toml", "--out", "out", "--jobs", "1")
    assert r.returncode == 0, r.stderr
    s = json.loads((own / "out" / "summary.json").read_text())
    assert (s["arch"], s["dataset"], s["num_test"], s["num_classes"]) == ("mynets:small_cnn", "npz:digits.npz", 360, 10)
    got = {(row["method"], row["setting"]): row["verdict"] for row in s["rows"]}
    assert set(got) == {("independent", "seed=1"), ("distill", "alpha=0.5"), ("distill", "control alpha=0.5"),
                        ("quantize", "8-bit"), ("prune", "50%"), ("quantize", "torchao int8-weight-only"),
                        ("quantize", "PT2E int8"), ("custom", "cluster16")}
    assert got[("independent", "seed=1")] == "yardstick"   # the yardstick gets no verdict of its own
    assert {v for k, v in got.items() if k[0] != "independent"} <= {"preserves", "partial", "independent-like"}
    rows = {row["setting"]: row for row in s["rows"]}
    # PT2E ran int8 kernels and timed them beside fp32, in the same run; the libraries say their versions
    assert rows["PT2E int8"]["latency_ms"] > 0 and rows["PT2E int8"]["fp32_latency_ms"] > 0
    assert rows["PT2E int8"]["library"].startswith("torchao ")
    assert rows["torchao int8-weight-only"]["library"].startswith("torchao ")
    # weight sharing with bias correction moves the function a little, not like another training run
    assert 0 < rows["cluster16"]["disagreement"] < got_disagreement(s, "seed=1")
    # The runs are named by the data's content, which is that of the built-in digits set it was made from.
    rec = json.loads((own / "out" / "study.json").read_text())
    assert rec["study"]["data"]["content"] == load_dataset("digits").content_sha256
    # A stored study is reported without its factory: the report never imports or builds the model.
    shutil.rmtree(own / "out" / "figures")
    r = cli(own, "report", "out", pythonpath=False)
    assert r.returncode == 0, r.stderr
    assert (own / "out" / "figures" / "landscape.png").is_file()


def got_disagreement(summary: dict, setting: str) -> float:
    return next(r["disagreement"] for r in summary["rows"] if r["setting"] == setting)


def test_the_arch_string_and_the_data_content_name_the_runs(own):
    a = StudyCfg(data=DataCfg("npz:digits.npz", content="a" * 64), model=ModelCfg("mynets:small_cnn"))
    ids = {p.run_id for p in plan(a)}
    assert ids.isdisjoint(p.run_id for p in plan(a.replace(model=ModelCfg("lenet"))))
    assert ids.isdisjoint(p.run_id for p in plan(a.replace(data=DataCfg("npz:digits.npz", content="b" * 64))))


def test_folder_data_set_of_tiny_pngs(tmp_path):
    from PIL import Image

    # Each class's images hold one grey level, so the resized pixels are known exactly.
    for which, n in (("train", 4), ("test", 2)):
        for label, cls in enumerate(("cat", "dog", "emu")):
            (tmp_path / which / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (12, 10), 40 + 80 * label).save(tmp_path / which / cls / f"{i}.png")
    ds = load_dataset(f"folder:{tmp_path}", image_size=6)
    assert ds.classes == ("cat", "dog", "emu") and ds.num_classes == 3
    assert ds.train_x.shape == (12, 1, 6, 6) and ds.test_x.shape == (6, 1, 6, 6) and ds.train_x.dtype == torch.uint8
    assert ds.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert ds.test_x[:, 0, 0, 0].tolist() == [40, 40, 120, 120, 200, 200]
    # One colour image makes the whole set RGB; a grey image then holds three equal channels.
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "train" / "cat" / "red.png")
    rgb = load_dataset(f"folder:{tmp_path}", image_size=6)
    assert rgb.train_x.shape == (13, 3, 6, 6) and rgb.train_x[0, :, 0, 0].tolist() == [40, 40, 40]
    assert rgb.content_sha256 != ds.content_sha256
    # ...and a study runs on it: every run finishes.
    study = StudyCfg(name="png", data=DataCfg(f"folder:{tmp_path}", image_size=6), train=TrainCfg(epochs=1),
                     seeds=(0, 1), distill=DistillGrid(alphas=()), quantize=("8-bit",), prune=())
    result = run_study(study, RunContext(out=str(tmp_path / "out")), jobs=1, report=False)
    assert len(result.done) == 3 and not result.failed


# ---------------------------------------------------------------- a base you already have

def small(**kw) -> StudyCfg:
    return StudyCfg(name="s", train=TrainCfg(epochs=1, lr=0.02), seeds=(0, 1), distill=DistillGrid(alphas=()),
                    quantize=("8-bit",), prune=(), **kw)


def test_a_given_checkpoint_is_the_base_compressed_and_compared_without_training(tmp_path):
    trained = run_study(small(), RunContext(out=str(tmp_path / "a")), jobs=1, report=False)
    store_a = Store(tmp_path / "a")
    base_a = next(p.run_id for p in plan(small().replace(data=store_a.load_spec(trained.done[0]).data)))
    shutil.copy(tmp_path / "a" / "runs" / base_a / "model.pt", tmp_path / "base.pt")
    run_study(small(base=BaseCfg(checkpoint=str(tmp_path / "base.pt"))), RunContext(out=str(tmp_path / "b")),
              jobs=1, report=False)
    rec = json.loads((tmp_path / "b" / "study.json").read_text())
    runs = rec["runs"]
    assert rec["study"]["distill"]["init"] == "fresh"  # recorded as the students start
    base_b = runs[0]["run"]
    assert runs[0]["role"] == "base" and base_b.startswith("given_") and runs[0]["setting"] == "base.pt"
    store_b = Store(tmp_path / "b")
    assert store_b.pred_epochs(base_b) == [0]  # one point in the landscape: never trained
    # The checkpoint computes the trained base's function, and is compressed as that base was.
    assert np.array_equal(store_b.load_preds(base_b), store_a.load_preds(base_a))
    quant = [r["run"] for r in runs if r["role"] == "quantize"]
    assert store_b.load_spec(quant[0]).parent == base_b
    # The yardstick was trained: the same independent run as the first study's.
    assert [r["run"] for r in runs if r["role"] == "independent"] == [
        p.run_id for p in plan(small().replace(data=store_a.load_spec(trained.done[0]).data))
        if p.role == "independent"]
    # The file's sha256 names the run: other weights are another base.
    pinned = pin_checkpoints(BaseCfg(checkpoint=str(tmp_path / "base.pt")), "lenet", load_dataset("digits"))
    assert pinned.sha256 == (store_b.load_spec(base_b).given.sha256,)
    state = torch.load(tmp_path / "base.pt", weights_only=True)
    torch.save({k: v + 1 for k, v in state.items()}, tmp_path / "base.pt")
    repinned = pin_checkpoints(BaseCfg(checkpoint=str(tmp_path / "base.pt")), "lenet", load_dataset("digits"))
    assert repinned.sha256 != pinned.sha256
    with pytest.raises(ConfigError, match="changed since the study was planned"):
        pin_checkpoints(pinned, "lenet", load_dataset("digits"))


def test_given_independents_and_fresh_students(tmp_path):
    for i in range(3):
        torch.manual_seed(i)
        torch.save(create_model("lenet", in_shape=(1, 8, 8), num_classes=10).state_dict(), tmp_path / f"m{i}.pt")
    files = [str(tmp_path / f"m{i}.pt") for i in range(3)]
    base = pin_checkpoints(BaseCfg(checkpoint=files[0], independents=tuple(files[1:])), "lenet",
                           load_dataset("digits"))
    study = small(base=base).replace(distill=DistillGrid(alphas=(0.5,), seeds=(2,)))
    runs = plan(study)
    assert [(p.role, p.setting) for p in runs[:3]] == [("base", "m0.pt"), ("independent", "m1.pt"),
                                                       ("independent", "m2.pt")]
    assert all(p.spec.kind == "given" for p in runs[:3])
    students = [p for p in runs if p.role in ("student", "control")]
    # no initial weights come with a checkpoint: every student starts from its own seed
    assert students and all(p.spec.distill.init == "fresh" and p.spec.distill.init_source is None for p in students)
    assert [p.spec.distill.teacher for p in students] == [runs[0].run_id, runs[1].run_id]
    with pytest.raises(ConfigError, match="planned once"):
        plan(small(base=BaseCfg(checkpoint=files[0])))
    # two files of one name are told apart by their paths: each is its own row
    (tmp_path / "other").mkdir()
    shutil.copy(files[1], tmp_path / "other" / "m1.pt")
    two = pin_checkpoints(BaseCfg(checkpoint=files[0], independents=(files[1], str(tmp_path / "other" / "m1.pt"))),
                          "lenet", load_dataset("digits"))
    assert [p.setting for p in plan(small(base=two))[1:3]] == [files[1], str(tmp_path / "other" / "m1.pt")]


# ---------------------------------------------------------------- bad input: exit 2, one line

@pytest.mark.parametrize("arch, needles", [
    ("mynets:no_such", ("mynets", "no function no_such")),
    ("not_installed_pkg.nets:small_cnn", ("cannot import not_installed_pkg", "PYTHONPATH")),
    ("mynets:not_a_model", ("not_a_model", "returned a str, not a torch.nn.Module")),
])
def test_a_factory_that_builds_no_model_is_one_line(own, arch, needles):
    (own / "own.toml").write_text(OWN_STUDY.replace("mynets:small_cnn", arch))
    one_line_error(cli(own, "study", "own.toml", "--out", "out"), *needles)
    assert not (own / "out" / "runs").exists() or not any((own / "out" / "runs").iterdir())


def _npy_bytes(a: np.ndarray) -> bytes:
    import io

    f = io.BytesIO()
    np.save(f, a)
    return f.getvalue()


def test_a_model_that_fails_on_the_images_or_returns_no_logits_is_a_data_error(tmp_path, monkeypatch):
    from funclens.data import check_model_fits

    (tmp_path / "oddnets.py").write_text(
        "import torch\n"
        "class Dict(torch.nn.Module):\n    def forward(self, x):\n        return {'logits': x.flatten(1)}\n"
        "class Str(torch.nn.Module):\n    def forward(self, x):\n        return x + 'a'\n"
        "def as_dict(in_shape, num_classes):\n    return Dict()\n"
        "def adds_str(in_shape, num_classes):\n    return Str()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    digits = load_dataset("digits", test_subset=1)
    with pytest.raises(DataError, match="oddnets:as_dict returns a dict for digits's 1x8x8 images, not a tensor"):
        check_model_fits("oddnets:as_dict", digits)
    with pytest.raises(DataError, match="oddnets:adds_str cannot take digits's 1x8x8 images"):
        check_model_fits("oddnets:adds_str", digits)


def bad_npz(kind: str) -> dict[str, np.ndarray]:
    a = digits_arrays()
    if kind == "missing":
        del a["y_test"]
    elif kind == "dtype":
        a["x_train"] = a["x_train"].astype(np.float32)
    elif kind == "range":
        a["classes"] = np.array(["zero", "one"])
    elif kind == "pickle":
        a["y_test"] = a["y_test"].astype(object)
    return a


@pytest.mark.parametrize("kind, needles", [
    ("missing", ("digits.npz", "missing array(s) y_test")),
    ("dtype", ("x_train", "uint8", "float32")),
    ("range", ("labels out of range", "2 classes")),
    ("pickle", ("digits.npz: y_test", "allow_pickle=False")),
])
def test_a_bad_npz_is_one_line(own, kind, needles):
    np.savez(own / "digits.npz", **bad_npz(kind))
    one_line_error(cli(own, "study", "own.toml", "--out", "out"), *needles)


def test_a_folder_with_one_class_is_one_line(own):
    from PIL import Image

    for which in ("train", "test"):
        (own / "pics" / which / "cat").mkdir(parents=True)
        Image.new("L", (4, 4)).save(own / "pics" / which / "cat" / "0.png")
    (own / "own.toml").write_text(OWN_STUDY.replace('"npz:digits.npz"', '"folder:pics"\nimage_size = 8'))
    one_line_error(cli(own, "study", "own.toml", "--out", "out"), "pics/train", "1 class folder(s)")


def test_a_checkpoint_of_another_architecture_is_one_line(own):
    torch.save(create_model("lenet", in_shape=(1, 8, 8), num_classes=10).state_dict(), own / "lenet.pt")
    (own / "own.toml").write_text(OWN_STUDY + '[base]\ncheckpoint = "lenet.pt"\n')
    one_line_error(cli(own, "study", "own.toml", "--out", "out"), "lenet.pt", "not a state_dict of mynets:small_cnn",
                   "missing tensor(s)")


def test_bad_data_and_checkpoint_files_are_data_or_config_errors(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DataError, match="not a readable npz"):
        load_dataset(f"npz:{tmp_path / 'x.npz'}")
    # a member whose header declares a terabyte is refused before numpy allocates it
    import io
    import zipfile

    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "|u1", "fortran_order": False, "shape": (10**12,)})
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w") as z:
        for k, v in digits_arrays().items():
            z.writestr(f"{k}.npy", head.getvalue() + b"0" * 8 if k == "x_train" else _npy_bytes(v))
    with pytest.raises(DataError, match="x_train: its header declares 1000000000000 bytes"):
        load_dataset(f"npz:{tmp_path / 'bomb.npz'}")
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "nested.pt")
    with pytest.raises(ConfigError, match="not a state_dict"):
        load_checkpoint(tmp_path / "nested.pt", "lenet", in_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ConfigError, match="image_size"):
        DataCfg(f"folder:{tmp_path}")
    with pytest.raises(ConfigError, match="neither a model name"):
        ModelCfg("my nets")


# ---------------------------------------------------------------- timm

def test_a_timm_architecture_is_built_for_the_studys_channels_and_classes():
    check_arch("timm:resnet10t")
    model = create_model("timm:resnet10t", in_shape=(1, 32, 32), num_classes=7)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
    with pytest.raises(ConfigError, match="timm has no model"):
        check_arch("timm:no_such_net")


def test_timm_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` finds where the extra is not installed
    with pytest.raises(ConfigError, match=r'pip install "funclens\[timm\]"'):
        check_arch("timm:resnet18")


# ---------------------------------------------------------------- compare_models

def test_the_compare_models_example_prints_its_rows():
    r = subprocess.run([sys.executable, str(EXAMPLES / "compare_models.py")], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(SRC)})
    assert r.returncode == 0, r.stderr
    lines = [line.split() for line in r.stdout.splitlines()]
    assert [(w[0], w[2]) for w in lines] == [("fp16", "preserves"), ("independent_1", "yardstick"),
                                            ("independent_2", "yardstick")]



def test_compare_models_runs_each_model_in_order_and_gives_compare_predictions_rows():
    from funclens.compress import compress
    from funclens.config import QuantCfg

    ds = load_dataset("digits")
    x = ds.normalize(ds.test_x)
    models = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        m = create_model("lenet", in_shape=ds.in_shape, num_classes=10)
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        for i in range(0, len(ds.train_x), 64):  # one epoch: enough to tell the models apart
            loss = torch.nn.functional.cross_entropy(m(ds.normalize(ds.train_x[i:i + 64])), ds.train_y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
        models.append(m)
    base = models[0].train()
    q4, _ = compress(base, QuantCfg("4-bit"))
    res = funclens.compare_models(base, {"4-bit": q4, "copy": base}, x, ds.test_y, independents=models[1:])
    assert base.training  # the caller's mode is left as it was
    rows = {r["setting"]: r for r in res["rows"]}
    assert [r["method"] for r in res["rows"]] == ["model", "model", "independent", "independent"]
    assert rows["copy"]["disagreement"] == 0.0 and rows["copy"]["verdict"] == "preserves"
    assert rows["independent_1"]["disagreement"] > rows["4-bit"]["disagreement"]
    # the same numbers as compare_predictions on the models' own softmax outputs
    probs = {k: torch.softmax(m.eval()(x), 1).detach().numpy() for k, m in
             (("base", base), ("4-bit", q4), ("i1", models[1]), ("i2", models[2]))}
    ref = funclens.compare_predictions(probs["base"], {"4-bit": probs["4-bit"]}, labels=ds.test_y.numpy(),
                                       independents={"i1": probs["i1"], "i2": probs["i2"]})
    for key in ("accuracy", "disagreement", "rfd", "rfd_ci", "verdict"):
        assert rows["4-bit"][key] == pytest.approx(ref["rows"][0][key]), key


def test_compare_models_refuses_a_model_that_cannot_take_the_inputs():
    with pytest.raises(funclens.errors.FunclensError, match="'wide' failed on inputs of shape"):
        funclens.compare_models(torch.nn.Linear(4, 2), {"wide": torch.nn.Linear(5, 2)}, torch.zeros(3, 4))
