"""The command as a newcomer first meets it: --version, bare `funclens`, the help of every command, default
output folders, `datasets` piped, and `report` of a study whose model this process never registered."""

import json
import re
import subprocess
import sys
import textwrap


from conftest import REPO, run_cli
import funclens
from funclens.cli import BUILTIN_ARCHS, _resolve_studies
from funclens.config import DATASETS, PRESET_ARCHS, preset_study


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"funclens {funclens.__version__}" and not r.stderr


def test_bare_funclens_prints_the_help_and_exits_0():
    r = run_cli()
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and r.stdout.startswith("Usage: funclens")
    for command in ("study", "report", "compare", "datasets", "verify"):
        assert re.search(rf"^  {command} ", r.stdout, re.M), command
    commands = r.stdout.split("Commands:")[1]
    assert "..." not in commands and "report." in commands   # whole summaries, never cut


def study_help() -> str:
    r = run_cli("study", "--help")
    assert r.returncode == 0
    return " ".join(r.stdout.split())   # unwrapped: the help's line breaks depend on the terminal's width


def test_study_help_flags_and_defaults():
    h = study_help()
    assert "--report / --no-report" in h and "--no-no-" not in h
    assert "--offline" in h and "--wait" in h and "--allow-modified-data" in h
    assert "default: the number of cores" in h and "[default: 0]" not in h
    for name in (*DATASETS, *BUILTIN_ARCHS, *PRESET_ARCHS):
        assert name in h, name
    for flag in ("--train-subset", "--test-subset", "--jobs", "--epochs", "--data-dir", "--executor", "--device"):
        assert flag in h, flag


def test_builtin_archs_are_the_registry():
    from funclens.models import list_models

    assert tuple(list_models()) == BUILTIN_ARCHS


def test_compare_help_shows_no_markup_nor_python_types():
    r = run_cli("compare", "--help")
    assert r.returncode == 0
    assert "``" not in r.stdout and "<list" not in r.stdout and "Path]" not in r.stdout
    assert "indep:" in r.stdout and "Usage: funclens compare [OPTIONS] A B [C ...]" in r.stdout


def test_an_unknown_option_is_named_without_guesses():
    r = run_cli("study", "--bogus")
    assert r.returncode == 2
    assert r.stderr.strip() == "funclens: error: No such option: --bogus"


def test_datasets_piped_is_tab_separated_and_whole(tmp_path):
    deep = tmp_path / ("a-long-folder-name-" * 6)
    r = run_cli("datasets", "--data-dir", str(deep))
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert [row[0] for row in rows] == list(DATASETS) and all(len(row) == 3 for row in rows)
    mnist = dict((row[0], row) for row in rows)["mnist"]
    assert mnist[1] == str(deep / "mnist")          # the full path, however long
    assert mnist[2] == "missing (downloaded on first use)"
    offline = run_cli("datasets", "--data-dir", str(deep), "--offline")
    assert dict((l.split("\t")[0], l.split("\t")[2]) for l in offline.stdout.splitlines())["mnist"] == "missing"


def test_a_failed_offline_study_leaves_no_folder(tmp_path):
    out = tmp_path / "out"
    r = run_cli("study", "--dataset", "cifar100", "--offline", "--data-dir", str(tmp_path / "none"),
                "--out", str(out))
    assert r.returncode == 2 and "--offline" in r.stderr
    assert not out.exists()


def test_a_reduced_preset_gets_its_own_default_out():
    assert _resolve_studies(None, "paper-mnist", None, None, None, None, None)[0] == "paper-mnist"
    assert _resolve_studies(None, "paper-mnist", "mnist", "lenet", 25, None, None)[0] == "paper-mnist"  # no change
    names = set()
    for flags in [dict(epochs=1), dict(train_subset=1000), dict(test_subset=500), dict(dataset="fashion-mnist"),
                  dict(arch="resnet50"), dict(epochs=1, train_subset=1000)]:
        args = {"toml": None, "preset": "paper-mnist", "dataset": None, "arch": None, "epochs": None,
                "train_subset": None, "test_subset": None, **flags}
        name, _ = _resolve_studies(**args)
        assert re.fullmatch(r"paper-mnist-reduced-[0-9a-f]{8}", name), (flags, name)
        names.add(name)
    assert len(names) == 6                  # each reduction its own folder
    # one architecture of a multi-architecture preset is that preset's own study, not a reduction
    name, studies = _resolve_studies(None, "paper-cifar10", None, "resnet50", None, None, None)
    assert name == "paper-cifar10" and studies == [preset_study("paper-cifar10", "resnet50")]


def test_reduced_quick_study_writes_to_its_own_folder(tmp_path):
    r = run_cli("study", "--epochs", "1", "--train-subset", "200", "--test-subset", "100", "--jobs", "1",
                "--no-report", cwd=tmp_path, env={"PYTHONPATH": str(REPO / "src")})   # run here: results/ is relative
    assert r.returncode == 0, r.stderr
    made = [p.name for p in (tmp_path / "results").iterdir()]
    assert len(made) == 1 and re.fullmatch(r"quick-reduced-[0-9a-f]{8}", made[0]), made
    assert not (tmp_path / "results" / "quick").exists()


REGISTER_AND_RUN = textwrap.dedent("""
    import sys
    import torch.nn as nn
    from funclens.config import DataCfg, DistillGrid, ModelCfg, StudyCfg, TrainCfg
    from funclens.execute import RunContext
    from funclens.models import register_model
    from funclens.study import run_study

    @register_model
    def tiny_mlp(in_shape, num_classes):
        c, h, w = in_shape
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 16), nn.ReLU(), nn.Linear(16, num_classes))

    study = StudyCfg(name="own", data=DataCfg("digits"), model=ModelCfg("tiny_mlp"), train=TrainCfg(epochs=1),
                     seeds=(0, 1), distill=DistillGrid(alphas=()), quantize=("8-bit",), prune=())
    run_study(study, RunContext(out=sys.argv[1], device="cpu"), jobs=1, report=False)
""")


def test_report_of_a_study_whose_model_was_registered_in_python(tmp_path):
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-c", REGISTER_AND_RUN, str(out)], check=True, capture_output=True,
                   cwd=REPO, timeout=600)
    r = run_cli("report", str(out))        # a fresh process: tiny_mlp is not registered here
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["arch"] == "tiny_mlp" and [row["setting"] for row in summary["rows"] if row["method"] == "quantize"]
    v = run_cli("verify", str(out))
    assert v.returncode == 0, v.stderr
    plan = {r["role"]: r["run"] for r in json.loads((out / "study.json").read_text())["runs"]}
    c = run_cli("compare", str(out / "runs" / plan["base"]), str(out / "runs" / plan["quantize"]), "--json")
    assert c.returncode == 0 and json.loads(c.stdout)["rows"][0]["setting"] == "8-bit", c.stderr
    # a study still refuses an architecture nobody registered
    again = run_cli("study", "--arch", "tiny_mlp", "--out", str(tmp_path / "again"))
    assert again.returncode == 2 and "unknown arch 'tiny_mlp'" in again.stderr
