"""Is it the teacher or the start? The fresh-start student, study files that sweep recipes ([[sweep]]: one study
per entry, run by one command), the paired difference of two RFDs, and docs/teacher_or_start.py's figure and
tables."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli
from funclens import paths
from funclens.config import (ConfigError, DistillGrid, StudyCfg, TrainCfg, load_studies_toml, load_study_toml,
                             preset_study)
from funclens.data import load_dataset
from funclens.models import create_model
from funclens.plan import FRESH_START, ROLES, plan
from funclens.rfd import rfd_difference
from funclens.store import Store, load_torch

# Two recipes on digits, the smallest study with every kind of model: base and one independent, one student
# seed, the no-teacher control, the fresh-start student and the independent-teacher control (6 runs each).
TINY_SWEEP = """
name = "tiny-tos"
seeds = [0, 1]
quantize = []
prune = []
[data]
dataset = "digits"
[train]
epochs = 2
lr = 0.02
[distill]
alphas = [0.5]
seeds = [2]
no_teacher = true
fresh_student = true
[[sweep]]
label = "sgd-lr0.02"
[[sweep]]
label = "adam"
train = { recipe = "adam" }
"""
KIND_NAMES = ("students, base's initial weights", "no-teacher control", "fresh-start student",
              "independent-teacher control")


@pytest.fixture(scope="module")
def sweep_out(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sweep")
    (d / "tiny.toml").write_text(TINY_SWEEP)
    r = run_cli("study", str(d / "tiny.toml"), "--out", str(d / "out"), "--jobs", "1")
    assert r.returncode == 0, r.stderr
    return d / "out"


def test_one_command_runs_every_entry_of_a_sweep_into_its_own_folder(sweep_out):
    for label, optimizer in (("sgd-lr0.02", "sgd"), ("adam", "adam")):
        s = json.loads(paths.summary_file(sweep_out / label).read_text())
        assert s["study"] == f"tiny-tos-{label}" and s["setup"]["optimizer"] == optimizer
        roles = {r["role"]: r for r in s["rows"]}
        assert set(roles) == {"independent", "student", "control", "fresh", "start"}
        assert roles["fresh"]["setting"] == "alpha=0.5 (fresh start)" and roles["fresh"]["method"] == "distill"
    combined = json.loads(paths.summary_file(sweep_out).read_text())
    assert [s["study"] for s in combined["studies"]] == ["tiny-tos-sgd-lr0.02", "tiny-tos-adam"]
    # the combined report tells studies of one architecture apart by name
    assert "[tiny-tos-adam]" in paths.report_md(sweep_out).read_text()


def test_verify_of_a_sweeps_folder_checks_every_entrys_runs(sweep_out, tmp_path):
    r = run_cli("verify", str(sweep_out))
    assert r.returncode == 0 and "ok: 12 finished runs verified" in r.stdout, r.stdout + r.stderr
    hurt = tmp_path / "out"
    shutil.copytree(sweep_out, hurt)
    preds = sorted((hurt / "adam" / "runs").glob("train_*/preds/ep_002.npy"))[0]
    preds.write_bytes(preds.read_bytes()[:-8])
    r = run_cli("verify", str(hurt))
    assert r.returncode == 2 and f"run {preds.parent.parent.name}: preds/ep_002.npy does not match" in r.stderr


def test_the_fresh_student_starts_from_its_own_seeds_weights_not_the_bases(sweep_out):
    out = sweep_out / "sgd-lr0.02"
    store = Store(out)
    runs = store.read_study()["runs"]
    fresh, = [r for r in runs if r["role"] == "fresh"]
    base, = [r for r in runs if r["role"] == "base"]
    assert fresh["seed"] == 2 and fresh["parents"] == [base["run"]]   # the teacher alone: no initial weights read
    init = load_torch(paths.init_file(store.run_dir(fresh["run"])))
    base_init = load_torch(paths.init_file(store.run_dir(base["run"])))
    torch.manual_seed(2)  # as training builds a model from its seed
    own = create_model("lenet", in_shape=load_dataset("digits").in_shape, num_classes=10).state_dict()
    assert all(torch.equal(init[k], own[k]) for k in own)
    assert not all(torch.equal(init[k], base_init[k]) for k in own)


def test_the_fresh_student_is_planned_once_and_only_beside_base_init_students():
    quick = preset_study("quick")
    runs = plan(quick.replace(distill=DistillGrid(alphas=(0.1, 0.9), fresh_student=True)))
    fresh, = [r for r in runs if r.role == "fresh"]
    assert fresh.setting == f"alpha=0.9 {FRESH_START}" and fresh.spec.distill.init == "fresh"  # the middle alpha
    assert ROLES["fresh"].method == "distill" and ROLES["fresh"].letter not in {
        r.letter for r in ROLES.values() if r.name != "fresh"}
    # every student starts fresh already: the same run would be planned twice
    assert not [r for r in plan(quick.replace(distill=DistillGrid(init="fresh", fresh_student=True)))
                if r.role == "fresh"]
    # off by default: the runs of existing studies are unchanged
    assert [r.run_id for r in plan(quick)] == [r.run_id for r in plan(quick.replace(
        distill=DistillGrid(fresh_student=False)))]


def test_the_figure_and_tables_show_every_kind_and_the_section_is_replaced_in_place(sweep_out, tmp_path):
    doc = tmp_path / "REPRODUCTION.md"
    doc.write_text("# Reproduction\n\nbefore\n")
    cmd = [sys.executable, str(REPO / "docs" / "teacher_or_start.py"), str(sweep_out), "--doc", str(doc),
           "--figures", str(tmp_path / "figures")]
    for _ in range(2):   # the second run replaces the section
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    text = doc.read_text()
    assert text.startswith("# Reproduction\n\nbefore\n") and text.count("<!-- teacher-or-start:start -->") == 1
    from matplotlib.image import imread

    png = tmp_path / "figures" / "teacher-or-start-digits.png"
    img = imread(png)
    ink = (img[..., :3].mean(axis=2) < 0.9).mean()
    assert img.shape[0] > 400 and ink > 0.03, ink   # axes, lines, intervals: not a blank page
    assert "](figures/teacher-or-start-digits.png)" in text
    for name in KIND_NAMES:
        row = next(line for line in text.splitlines() if line.startswith(f"| {name}"))
        assert row.count("[") == 2, row   # an RFD [lo, hi] under each recipe
    split_rows = [line for line in text.splitlines() if line.startswith(("| SGD lr 0.02 |", "| Adam lr 0.001 |"))]
    assert len(split_rows) == 2 and all("alpha=0.5" in line for line in split_rows)
    # the findings under each recipe: one verdict cell per recipe for every finding (4: per pruning scope)
    findings = [line for line in text.splitlines() if line.startswith(("| digits: finding", "| 1. ", "| 2. ",
                                                                        "| 3. ", "| 4. ", "| 5. "))]
    assert len(findings) == 7 and all(line.count(" | ") == 2 for line in findings), findings
    # one alpha per recipe: the split's finding-1 cell and the findings table's say the same word
    split_words = [line.rstrip(" |").split(" | ")[-1].split(":")[0].split(" (")[0] for line in split_rows]
    f1 = next(line for line in findings if line.startswith("| 1. ")).strip("| ").split(" | ")[1:]
    assert split_words == [c.split(" (")[0] for c in f1], (split_words, f1)
    # the conditions: every recipe's students named under exactly one verdict and one reading of the teacher
    bullets = text.split("### When finding 1 holds")[1].split("\n- ")[1:]
    for line in split_rows:
        recipe, alpha = line.strip("| ").split(" | ")[:2]
        case = f"digits {recipe} {alpha} ("
        assert sum(case in b for b in bullets[:3]) == 1 and sum(case in b for b in bullets[3:5]) == 1, bullets
        verdict = next(b for b in bullets[:3] if case in b)
        assert ("`preserves`" in verdict) == line.endswith("the students keep the base's function |")


def _script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("teacher_or_start", REPO / "docs" / "teacher_or_start.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_figures_students_are_at_the_controls_alpha_whatever_the_grids_order():
    rows = [{"role": "student", "setting": f"alpha={a}"} for a in ("0.5", "0.9", "0.1")]
    rows += [{"role": "control", "setting": "control alpha=0.5"},
             {"role": "fresh", "setting": "alpha=0.5 (fresh start)"}]
    entry = _script().Entry({"rows": rows}, view=None)
    assert entry.kind_row("student")["setting"] == "alpha=0.5"
    assert entry.kind_row("fresh")["setting"] == "alpha=0.5 (fresh start)" and entry.kind_row("start") is None


def _row(method, role, setting, rfd, ci, verdict, dev=0.0):
    return {"method": method, "role": role, "setting": setting, "rfd": rfd, "rfd_ci": ci, "verdict": verdict,
            "accuracy_deviation_pct": dev}


def test_the_five_findings_are_read_by_their_stated_rules():
    script = _script()
    rows = [_row("distill", "student", "alpha=0.1", 0.80, [0.78, 0.82], "partial", 0.5),
            _row("distill", "student", "alpha=0.9", 0.95, [0.93, 0.97], "independent-like", -0.2),
            _row("quantize", "quantize", "16-bit", 0.0, [0.0, 0.0], "preserves"),
            _row("quantize", "quantize", "8-bit", 0.01, [0.01, 0.02], "preserves"),
            *(_row("prune", "prune", f"{a}%", r, [r - 0.02, r + 0.02], v, d) for a, r, v, d in
              ((10, 0.0, "preserves", 0.0), (30, 0.28, "preserves", -0.3), (50, 0.65, "partial", -0.9),
               (70, 1.6, "independent-like", -39.5))),
            *(_row("prune", "prune", f"global {a}%", r, [r - 0.02, r + 0.02], v) for a, r, v in
              ((10, 0.0, "preserves"), (50, 0.2, "preserves"), (70, 0.55, "partial")))]
    f1, f2, f3, f4_layer, f4_global, f5 = script.findings(script.Entry({"rows": rows}, view=None))
    assert f1 == "partly (RFD 0.80 [0.78, 0.82] to 0.95 [0.93, 0.97])"            # one alpha partial, none preserves
    assert f2.startswith("no (0.1: 0.80 [0.78, 0.82], 0.9: 0.95")   # disjoint intervals
    assert f3 == "partly: nearer 10%, global 10% (8-bit 0.01 [0.01, 0.02])"   # 10% pruning changed nothing
    assert f4_layer == "partly: preserves to 30%; 70%: 1.60 [1.58, 1.62]"
    assert f4_global == "holds: preserves to 50%; 70%: 0.55 [0.53, 0.57]"
    assert f5 == "holds (alpha=0.9: -0.20% accuracy, RFD 0.95 [0.93, 0.97])"   # the farthest model within 1% of the accuracy
    rows[0]["verdict"], rows[0]["rfd_ci"] = "independent-like", [0.9, 0.96]
    rows[3]["verdict"] = "partial"
    f1, f2, f3, *_ = script.findings(script.Entry({"rows": rows}, view=None))
    assert f1.startswith("holds") and f2.startswith("holds") and f3.startswith("no (8-bit")
    # a study without students, quantization or global pruning: those findings are not read
    bare = script.findings(script.Entry({"rows": rows[4:8]}, view=None))
    assert bare[:3] == ["–", "–", "–"] and bare[4] == "–" and bare[3].startswith("partly")


def test_the_script_refuses_a_folder_without_studies(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "docs" / "teacher_or_start.py"), str(tmp_path), "--doc",
                        str(tmp_path / "d.md")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "holds no study" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("damage", [b'{"dataset": "mnist", "setup"', b"{}", b"\xff\xfe", b"[1, 2]"])
def test_a_damaged_summary_is_refused_in_one_line_and_the_document_is_untouched(tmp_path, damage):
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.json").write_text("{}")
    (study / "summary.json").write_bytes(damage)
    doc = tmp_path / "R.md"
    doc.write_text("before\n")
    r = subprocess.run([sys.executable, str(REPO / "docs" / "teacher_or_start.py"), str(study), "--doc", str(doc),
                        "--figures", str(tmp_path / "f")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "is not a study's summary" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert doc.read_text() == "before\n" and not (tmp_path / "f").exists()


def test_a_summary_swapped_in_from_another_study_is_refused_not_paired_with_the_wrong_runs(sweep_out, tmp_path):
    hurt = tmp_path / "out"
    shutil.copytree(sweep_out, hurt)
    shutil.copyfile(paths.summary_file(hurt / "adam"), paths.summary_file(hurt / "sgd-lr0.02"))
    doc = tmp_path / "R.md"
    doc.write_text("before\n")
    r = subprocess.run([sys.executable, str(REPO / "docs" / "teacher_or_start.py"), str(hurt / "sgd-lr0.02"),
                        "--doc", str(doc), "--figures", str(tmp_path / "f")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "is not this study's summary" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert doc.read_text() == "before\n"


def test_a_summary_edited_by_hand_is_refused_though_it_names_the_right_runs(sweep_out, tmp_path):
    hurt = tmp_path / "out"
    shutil.copytree(sweep_out, hurt)
    summary = json.loads(paths.summary_file(hurt / "adam").read_text())
    row = next(r for r in summary["rows"] if r.get("role") == "student")
    row["rfd"], row["verdict"] = 0.01, "preserves"   # same study, same runs: only the numbers lie
    paths.summary_file(hurt / "adam").write_text(json.dumps(summary))
    doc = tmp_path / "R.md"
    doc.write_text("before\n")
    r = subprocess.run([sys.executable, str(REPO / "docs" / "teacher_or_start.py"), str(hurt / "adam"),
                        "--doc", str(doc), "--figures", str(tmp_path / "f")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "summary.json does not match its checksum" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and doc.read_text() == "before\n"


def test_the_paired_difference_is_narrower_than_the_unpaired_on_correlated_models():
    rng = np.random.default_rng(0)
    n, c = 2000, 10
    eye = np.eye(c)
    labels = rng.integers(0, c, n)
    base = eye[labels]
    # hard inputs: where the control moves, the students mostly move too (correlated), plus a few of their own
    hard = rng.random(n) < 0.3
    control = eye[np.where(hard, (labels + 1) % c, labels)]
    students = eye[np.where(hard & (rng.random(n) < 0.8), (labels + 2) % c, labels)]
    indep = eye[np.where(rng.random(n) < 0.5, (labels + 3) % c, labels)]
    paired = rfd_difference(base, control, students, [indep])
    unpaired = rfd_difference(base, control, students, [indep], paired=False)
    assert paired.ci[0] <= paired.difference <= paired.ci[1]
    assert paired.difference == unpaired.difference and paired.difference > 0
    assert paired.ci[1] - paired.ci[0] < 0.6 * (unpaired.ci[1] - unpaired.ci[0])


def test_the_study_files_plan_the_issues_grid_112_trainings():
    # Adam first: its runs are the fitted paper preset's, which --reuse copies in
    # (on CIFAR-10 SGD lr 0.01 next, also the paper study's runs: two recipes are read while the rest train)
    want = {"cifar10": {"adam-lr0.001": (0.001, "adam", 1), "sgd-lr0.01": (0.01, "sgd", 3),
                        "sgd-lr0.001": (0.001, "sgd", 3), "sgd-lr0.003": (0.003, "sgd", 1),
                        "sgd-lr0.03": (0.03, "sgd", 1)},
            "mnist": {"adam-lr0.001": (0.001, "adam", 1), "sgd-lr0.001": (0.001, "sgd", 3),
                      "sgd-lr0.01": (0.01, "sgd", 3)}}
    total = 0
    for dataset, entries in want.items():
        f = REPO / "docs" / "studies" / f"teacher-or-start-{dataset}.toml"
        found = load_studies_toml(f)
        assert found.labels == tuple(entries)
        for label, study in zip(found.labels, found.studies):
            lr, optimizer, alphas = entries[label]
            assert study.name == f"teacher-or-start-{dataset}-{label}" and study.data.dataset == dataset
            assert (study.train.lr, study.train.optimizer, study.train.epochs, study.model.arch) == (
                lr, optimizer, 25, "lenet")
            assert study.train.momentum == 0.9 or optimizer == "adam"
            runs = plan(study)
            roles = [r.role for r in runs]
            assert roles.count("independent") == 2 and roles.count("start") == 3 and roles.count("fresh") == 1
            assert roles.count("control") == 1 and roles.count("student") == 3 * alphas
            # the paper's post-hoc grid under both pruning scopes and the noise floor: the findings per recipe
            assert study.quantize == ("16-bit", "8-bit") and study.noise == (1.0, 2.0, 4.0, 8.0)
            assert study.prune == study.prune_global == (0.1, 0.3, 0.5, 0.7, 0.9)
            total += sum(r.spec.kind == "train" for r in runs)
        with pytest.raises(ConfigError, match="is a sweep of several studies"):
            load_study_toml(f)
    assert total == 112   # 5 x 11 + 2 x 6 on CIFAR-10, 3 x 11 + 2 x 6 on MNIST


@pytest.mark.parametrize("dataset, sgd_study, preset, arch", [
    ("mnist", "paper-mnist-sgd-momentum.toml", "paper-mnist", None),
    ("cifar10", "paper-cifar10-lenet-sgd-momentum.toml", "paper-cifar10", "lenet")])
def test_the_sweeps_paper_recipes_are_the_paper_studies_runs_so_reuse_trains_them_once(dataset, sgd_study,
                                                                                       preset, arch):
    # what the study files' headers promise: --reuse of the paper studies leaves one training to each entry
    found = load_studies_toml(REPO / "docs" / "studies" / f"teacher-or-start-{dataset}.toml")
    entries = dict(zip(found.labels, found.studies))
    def trainings(study: StudyCfg) -> dict[str, str]:
        return {r.run_id: r.role for r in plan(study) if r.spec.kind == "train"}
    for label, paper in (("sgd-lr0.01", load_study_toml(REPO / "docs" / "studies" / sgd_study)),
                         ("adam-lr0.001", preset_study(preset, arch))):
        own, theirs = trainings(entries[label]), trainings(paper)
        assert sorted(own[i] for i in set(own) - set(theirs)) == ["fresh"], label
    assert not set(trainings(entries["sgd-lr0.001"])) & set(trainings(entries["sgd-lr0.01"]))


def test_a_sweep_entry_changes_only_what_it_names_and_keeps_run_ids(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('name = "plain"\nseeds = [0, 1]\n[train]\nepochs = 2\nlr = 0.02\n')
    plain = load_studies_toml(p)
    assert plain.labels == () and plain.studies == (load_study_toml(p),)
    p.write_text(p.read_text() + '[[sweep]]\nlabel = "same"\n[[sweep]]\nlabel = "few"\n'
                 '[sweep.distill]\nalphas = [0.5]\n[sweep.train]\nmomentum = 0.0\n')
    same, few = load_studies_toml(p).studies
    assert [r.run_id for r in plan(same)] == [r.run_id for r in plan(plain.studies[0])]  # the name is no run's
    assert few.distill.alphas == (0.5,) and few.train == TrainCfg(epochs=2, lr=0.02, momentum=0.0)
    assert few.distill.seeds == StudyCfg().distill.seeds


@pytest.mark.parametrize("sweep, message", [
    ('[[sweep]]\ntrain = { lr = 0.1 }\n', "needs a label"),
    ('[[sweep]]\nlabel = "a/b"\n', "needs a label"),
    ('[[sweep]]\nlabel = "a"\n[[sweep]]\nlabel = "a"\n', "label a twice"),
    ('[[sweep]]\nlabel = "a"\nname = "b"\n', "apply to the whole file"),
    ('[[sweep]]\nlabel = "a"\ntrain = { lr = -1 }\n', "sweep entry a: train: lr must be"),
    ('[[sweep]]\nlabel = "a"\ntrain = { recipe = "rmsprop" }\n', "unknown recipe"),
    ('sweep = 3\n', "expected 1 to"),
    # the combined report of a sweep writes these names in the output folder, beside the entries' folders
    ('[[sweep]]\nlabel = "summary.json"\n', "the label summary.json names a file of the sweep's combined report"),
    ('[[sweep]]\nlabel = "tables"\n', "the label tables names a file"),
])
def test_bad_sweeps_are_one_line_errors(tmp_path, sweep, message):
    p = tmp_path / "s.toml"
    p.write_text('name = "x"\nseeds = [0, 1]\n' + sweep)
    with pytest.raises(ConfigError, match=message):
        load_studies_toml(p)


def test_the_command_refuses_a_bad_sweep_in_one_line_before_any_run(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('name = "x"\nseeds = [0, 1]\n[[sweep]]\nlabel = "a"\n[[sweep]]\nlabel = "b"\ntrain = { lr = 0 }\n')
    r = run_cli("study", str(p), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "sweep entry b" in r.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("entry, needle", [
    ('[[sweep.custom]]\nname = "mine"\nfn = "nosuchmod:squeeze"\n', "cannot import nosuchmod"),
    ('[sweep.model]\narch = "nosuchmod:net"\n', "cannot import nosuchmod"),
])
def test_a_sweep_entry_that_cannot_run_is_refused_before_the_first_entry_trains(tmp_path, entry, needle):
    p = tmp_path / "s.toml"
    p.write_text('name = "x"\nseeds = [0, 1]\nquantize = []\nprune = []\n[train]\nepochs = 1\n[distill]\n'
                 'alphas = []\n[[sweep]]\nlabel = "a"\n[[sweep]]\nlabel = "b"\n' + entry)
    r = run_cli("study", str(p), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert needle in r.stderr and not (tmp_path / "out").exists()


def test_a_study_whose_rfd_is_undefined_reads_no_finding_instead_of_failing():
    script = _script()
    rows = [_row("distill", "student", "alpha=0.5", None, [None, None], "undetermined", 0.1),
            _row("prune", "prune", "50%", None, [None, None], "undetermined", -0.2)]
    f1, f2, f3, f4_layer, f4_global, f5 = script.findings(script.Entry({"rows": rows}, view=None))
    assert (f1, f2, f3, f4_global, f5) == ("–", "–", "–", "–", "no") and f4_layer.startswith("no: not at 50%")


def test_an_undetermined_student_is_named_in_the_conditions_not_dropped():
    script = _script()
    rows = [_row("distill", "student", "alpha=0.5", None, [None, None], "undetermined"),
            _row("distill", "start", "control alpha=0.5", None, [None, None], "undetermined")]
    e = script.Entry({"rows": rows, "setup": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9}}, view=None)
    # the split's paired bootstrap has nothing to draw on: an undefined RFD leaves every interval open
    e.splits["alpha=0.5"] = {"start": float("nan"), "start_ci": (None, None), "teacher": float("nan"),
                             "teacher_ci": (None, None), "student_rfd": float("nan"), "verdict": "undetermined"}
    text = script.conditions_md({"digits": [e]})
    named = [line for line in text.splitlines() if "digits SGD lr 0.01 alpha=0.5" in line]
    assert len(named) == 1 and named[0].startswith("- No verdict (`undetermined`)"), text


def test_the_false_proxy_finding_reads_models_inside_the_papers_2_percent_bound_only():
    script = _script()
    rows = [_row("prune", "prune", "50%", 1.2, [1.1, 1.3], "independent-like", -1.8),
            _row("prune", "prune", "70%", 1.5, [1.4, 1.6], "independent-like", -2.5),
            _row("quantize", "quantize", "8-bit", 0.01, [0.0, 0.02], "preserves", 0.0)]
    assert script.findings(script.Entry({"rows": rows}, view=None))[-1] == "holds (50%: -1.80% accuracy, RFD 1.20 [1.10, 1.30])"
    rows[0]["accuracy_deviation_pct"] = -2.1
    assert script.findings(script.Entry({"rows": rows}, view=None))[-1] == "no"
