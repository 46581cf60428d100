"""Presets resolve to the paper's studies, and several studies combine into one report."""

import csv
import json

from conftest import run_cli
from funclens.cli import _resolve_studies
from funclens.plan import plan


def test_paper_presets_run_one_study_per_architecture():
    name, studies = _resolve_studies(None, "paper-cifar100", None, None, None, None, None)
    assert name == "paper-cifar100"
    assert [s.model.arch for s in studies] == ["lenet", "resnet50", "mobilenet_v1"]
    assert {s.data.dataset for s in studies} == {"cifar100"}
    # 3 independent seeds, 9 students, the random control, 3 no-teacher controls, 2 quantized, 5 pruned and
    # 4 noisy models each
    assert [len(plan(s)) for s in studies] == [27, 27, 27]
    _, [mnist] = _resolve_studies(None, "paper-mnist", None, None, None, None, None)
    assert (mnist.data.dataset, mnist.model.arch, mnist.train.epochs) == ("mnist", "lenet", 25)


def test_the_paper_presets_follow_the_fit_and_the_earlier_recipe_stays_a_study_file():
    from pathlib import Path

    from funclens.config import PAPER_FIT, describe_recipe, load_study_toml, preset_study

    studies = Path(__file__).resolve().parents[1] / "docs" / "studies"
    for preset, arch, stem in (("paper-mnist", "lenet", "paper-mnist"), ("paper-cifar10", "lenet", "paper-cifar10-lenet"),
                               ("paper-cifar100", "resnet50", None)):
        fit = preset_study(preset, arch)
        # the fitted recipe and scope: the paper's five amounts under one threshold, the classifier included
        assert describe_recipe(fit.train) == PAPER_FIT["recipe"] == "adam"
        assert (fit.prune, fit.prune_global, fit.prune_last) == ((), (0.1, 0.3, 0.5, 0.7, 0.9), True)
        assert (fit.seeds, fit.train.epochs, fit.train.batch_size, fit.noise) == ((0, 1, 2), 25, 64, (1.0, 2.0, 4.0, 8.0))
        if stem:  # the recipe and scope before the fit, by name: the same study but for those fields
            old = load_study_toml(studies / f"{stem}-sgd-momentum.toml")
            assert describe_recipe(old.train) == "sgd-momentum" and old.name == fit.name
            assert old == fit.replace(train=old.train, prune=(0.1, 0.3, 0.5, 0.7, 0.9), prune_global=())
    quick = preset_study("quick")   # the other presets keep the default recipe and per-layer pruning
    assert describe_recipe(quick.train) == "sgd-momentum with lr 0.02" and quick.prune_global == ()


def test_the_control_student_learns_from_an_independent_model_from_the_base_init():
    _, [s] = _resolve_studies(None, "quick", None, None, None, None, None)
    runs = plan(s)
    base = next(r for r in runs if r.role == "base")
    indep = next(r for r in runs if r.role == "independent")
    [control] = [r for r in runs if r.role == "control"]
    assert control.spec.distill.teacher == indep.run_id
    assert control.spec.distill.init_source == base.run_id
    assert set(control.spec.parents) == {indep.run_id, base.run_id}


def test_report_over_a_folder_of_studies_writes_a_combined_report(tmp_path):
    parent = tmp_path / "grid"
    for arch in ("lenet", "mobilenet_v1"):
        toml = tmp_path / f"{arch}.toml"
        toml.write_text(f'name = "grid-{arch}"\nseeds = [0, 1, 2]\nquantize = ["8-bit"]\nprune = [0.5]\n'
                        f'[data]\ntrain_subset = 400\n[model]\narch = "{arch}"\n[train]\nepochs = 2\n[distill]\nalphas = []\ncontrol = false\n')
        r = run_cli("study", str(toml), "--out", str(parent / arch))
        assert r.returncode == 0, r.stderr
    r = run_cli("report", str(parent))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(parent / "tables" / "accuracy_deviation.csv")))
    assert [x["architecture"] for x in rows] == ["lenet", "mobilenet_v1"]
    assert all(x["8-bit"] != "" and x["50%"] != "" for x in rows)
    combined = json.loads((parent / "summary.json").read_text())
    assert [s["arch"] for s in combined["studies"]] == ["lenet", "mobilenet_v1"]
    assert (parent / "report.html").read_text().count("data:image/png;base64,") == 6   # 3 figures per study


def test_the_reproduction_study_files_are_the_paper_grid_reduced_and_say_so():
    from pathlib import Path

    from funclens.config import describe_recipe, load_study_toml, preset_study

    # the reduced reproductions; the sweeps of several recipes there are other studies (test_teacher_or_start),
    # and the full studies grown with more settings or trained in bf16 are checked below
    files = sorted(f for f in (Path(__file__).resolve().parents[1] / "docs" / "studies").glob("*.toml")
                   if "[[sweep]]" not in f.read_text() and not f.stem.endswith(("-field", "-bf16", "-sgd-momentum")))
    assert files
    for f in files:
        s = load_study_toml(f)
        full = preset_study("paper-cifar10", s.model.arch)
        # Only epochs and the data subset differ from the paper's study; the grid is the paper's, pruned per
        # layer under SGD with momentum as when they ran (the preset's pruning amounts, its other scope)
        assert (s.seeds, s.distill, s.quantize, s.prune) == (full.seeds, full.distill, full.quantize, full.prune_global)
        assert describe_recipe(s.train) == "sgd-momentum" and s.prune_global == ()
        assert s.train.epochs < full.train.epochs
        assert "reduc" in f.read_text().lower()  # labelled as a reduction in the file itself


def test_the_bf16_study_files_are_the_timed_fp32_study_files_trained_in_bf16_and_nothing_else():
    import dataclasses
    from pathlib import Path

    from funclens.config import load_study_toml

    studies = Path(__file__).resolve().parents[1] / "docs" / "studies"
    for stem in ("paper-mnist", "paper-cifar10-lenet"):
        # the timed fp32 study's file, trained in bf16
        s, full = (load_study_toml(studies / f"{stem}-{k}.toml") for k in ("bf16", "sgd-momentum"))
        assert s.train.precision == "bf16" and full.train.precision == "fp32"
        assert s == full.replace(train=dataclasses.replace(full.train, precision="bf16"))


def test_a_grown_full_study_keeps_its_presets_name_runs_and_recipe():
    from pathlib import Path

    from funclens.config import load_study_toml
    from funclens.plan import plan

    f = Path(__file__).resolve().parents[1] / "docs" / "studies" / "paper-mnist-field.toml"
    grown, preset = load_study_toml(f), load_study_toml(f.with_name("paper-mnist-sgd-momentum.toml"))
    # the same name (so it grows the preset's folder), the same recipe, and every run of the preset among its own
    assert (grown.name, grown.train, grown.data) == (preset.name, preset.train, preset.data)
    assert {p.run_id for p in plan(preset)} <= {p.run_id for p in plan(grown)}
