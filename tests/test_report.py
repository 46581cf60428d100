"""funclens.report on a small digits study: summary.json from the one RFD function, stable intervals, strict JSON,
and figures checked for their content."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_STUDY, run_cli
from matplotlib.figure import Figure

from funclens import paths
from funclens.config import preset_changes, preset_study
from funclens.plan import ROLES
from funclens.report import figures, overview_md, reduced_note, setup_md, verdict_sentences, write_tables
from funclens.summary import RunView, StudyView, analyse, load_study
from funclens.rfd import rfd
from funclens.store import Store


@pytest.fixture
def reported(small_reported: Path) -> Path:
    return small_reported


def _plan(out: Path) -> list[dict]:
    return json.loads(paths.study_file(out).read_text())["runs"]


def test_every_row_is_the_public_rfd_of_its_runs(reported):
    s = json.loads(paths.summary_file(reported).read_text())
    store = Store(reported)
    plan = _plan(reported)
    base = store.load_preds(next(r["run"] for r in plan if r["role"] == "base"))
    indeps = [store.load_preds(r["run"]) for r in plan if r["role"] == "independent"]
    assert len(s["rows"]) == 6
    for row in s["rows"]:
        expected = rfd(base, [store.load_preds(run) for run in row["runs"]], indeps, metric=s["metric"]).to_json()
        # an independent model is the yardstick itself: it gets no verdict of its own
        want = "yardstick" if row["role"] == "independent" else expected["verdict"]
        assert (row["rfd"], row["rfd_ci"], row["p_closer"], row["verdict"]) == (
            expected["rfd"], expected["rfd_ci"], expected["p_closer"], want), row["setting"]
        assert row["role"] in ROLES and row["method"] == ROLES[row["role"]].method


def test_compare_on_the_run_folders_prints_the_report_numbers(reported):
    s = json.loads(paths.summary_file(reported).read_text())
    plan = _plan(reported)
    runs = paths.runs_dir(reported)
    base = next(r["run"] for r in plan if r["role"] == "base")
    items = [str(runs / base)] + [("indep:" if r["role"] == "independent" else "") + str(runs / r["run"])
                                  for r in plan if r["role"] != "base"]
    r = run_cli("compare", *items, "--json")
    assert r.returncode == 0, r.stderr
    got = {row["runs"][0]: row for row in json.loads(r.stdout)["rows"]}
    text = run_cli("compare", *items)
    assert text.returncode == 0, text.stderr
    single = [row for row in s["rows"] if len(row["runs"]) == 1]
    assert len(single) == len(s["rows"]) == 6   # one student seed: every row is one run
    for row in single:
        c = got[row["runs"][0]]
        assert (c["rfd"], c["rfd_ci"], c["verdict"], c["role"], c["setting"]) == (
            row["rfd"], row["rfd_ci"], row["verdict"], row["role"], row["setting"])
        line = next(line for line in text.stdout.splitlines() if row["runs"][0] in line)
        assert f"{row['rfd']:.4f}" in line and f"[{row['rfd_ci'][0]:.4f}, {row['rfd_ci'][1]:.4f}]" in line


def test_adding_a_quantization_scheme_leaves_the_other_intervals_alone(small_ref, reported, tmp_path):
    """Two studies, quantize = ["8-bit"] and ["16-bit", "8-bit"]: identical prune (and 8-bit) rows."""
    out = tmp_path / "out"
    shutil.copytree(small_ref, out)   # the runs they share are reused, not retrained
    study = tmp_path / "small8.toml"
    study.write_text(SMALL_STUDY.replace('quantize = ["16-bit", "8-bit"]', 'quantize = ["8-bit"]'))
    r = run_cli("study", str(study), "--out", str(out), "--jobs", "1")
    assert r.returncode == 0, r.stderr
    one = {(x["role"], x["setting"]): x for x in json.loads(paths.summary_file(out).read_text())["rows"]}
    two = {(x["role"], x["setting"]): x for x in json.loads(paths.summary_file(reported).read_text())["rows"]}
    assert ("quantize", "16-bit") in two and ("quantize", "16-bit") not in one
    for key in (("prune", "50%"), ("quantize", "8-bit"), ("student", "alpha=0.5")):
        assert one[key]["rfd_ci"] == two[key]["rfd_ci"] and one[key]["runs"] == two[key]["runs"], key


def _blank_fraction(path: Path) -> tuple[tuple[int, int], float]:
    from matplotlib.image import imread

    img = imread(path)[..., :3]
    return img.shape[:2], float(np.mean(np.all(img > 0.97, axis=-1)))


def test_figures_show_every_role_and_are_not_blank(reported):
    sv = load_study(reported)
    summary = analyse(sv)
    figs = figures(sv, summary)
    assert set(figs) == {paths.landscape_figure(reported), paths.accuracy_figure(reported),
                         paths.distances_figure(reported)}
    assert all(isinstance(f, Figure) for f in figs.values())
    legend = [t.get_text() for t in figs[paths.landscape_figure(reported)].axes[0].get_legend().get_texts()]
    roles = [ROLES[r] for r in ("base", "independent", "student", "quantize", "prune")]
    assert legend == [f"{r.letter}  {r.legend}" for r in roles]
    acc_legend = [t.get_text() for t in figs[paths.accuracy_figure(reported)].axes[0].get_legend().get_texts()]
    assert acc_legend[:4] == ["independent", "distillation", "quantization", "pruning"]
    heat = figs[paths.distances_figure(reported)].axes[0]
    ticks = [t.get_text() for t in heat.get_yticklabels()]
    assert len(ticks) == 7 and ticks[0] == "B seed=0" and ticks[1:3] == ["I seed=1", "I seed=2"]
    assert ticks[3] == "D alpha=0.5 s2" and ticks[-1] == "P 50%"
    for path in figs:
        (h, w), blank = _blank_fraction(path)   # the files the report wrote
        assert h > 300 and w > 400, path
        assert 0.2 < blank < 0.97, (path, blank)   # drawn on, but not a solid block
    html = paths.report_html(reported).read_text()
    assert html.count("data:image/png;base64,") - html.count('class="gallery-img"') == 3  # the figures


def _synthetic_view(tmp_path: Path, n: int = 1) -> StudyView:
    """A study whose independents agree with the base on every test input: no yardstick."""
    base = np.eye(3, dtype=np.float16)[[0] * n]
    other = np.eye(3, dtype=np.float16)[[1] * n]
    runs = [RunView("train_b", "base", "seed=0", 0, 1.0, base, [1]),
            RunView("train_i", "independent", "seed=1", 1, 1.0, base.copy(), [1]),
            RunView("quant_q", "quantize", "8-bit", None, 1.0, base.copy(), [0]),
            RunView("prune_p", "prune", "90%", None, 0.0, other, [0])]
    return StudyView(tmp_path, preset_study("quick"), runs)


def test_an_undecidable_rfd_is_null_in_summary_and_explained(tmp_path):
    summary = analyse(_synthetic_view(tmp_path))
    text = json.dumps(summary, allow_nan=False)   # strict JSON: no NaN, no Infinity
    rows = {r["setting"]: r for r in json.loads(text)["rows"]}
    for setting in ("8-bit", "90%"):
        assert rows[setting]["rfd"] is None and rows[setting]["rfd_ci"] == [None, None]
        assert rows[setting]["verdict"] == "undetermined"
    assert rows["90%"]["accuracy_deviation_pct"] == -100.0
    sentence = next(s for s in verdict_sentences(summary) if s.startswith("prune 90%"))
    assert "cannot be decided" in sentence and "agree with the base on every one of the 1 test inputs" in sentence
    _, dist_md = write_tables(tmp_path, [summary])
    assert "| undefined |" in dist_md and "nan" not in dist_md.lower()
    csv_rows = paths.distance_table(tmp_path, "csv").read_text().splitlines()
    assert csv_rows[0].split(",")[11:14] == ["rfd", "rfd_lo", "rfd_hi"]
    assert all(r.split(",")[11:14] == ["", "", ""] for r in csv_rows[1:])


def _no_constants(name: str):
    raise AssertionError(f"summary.json holds {name}, which is not JSON")


def test_a_one_input_test_set_gives_null_rfd_and_says_why(tmp_path):
    study = tmp_path / "one.toml"
    study.write_text('name = "one"\nseeds = [0, 1]\nquantize = ["8-bit"]\nprune = [0.9]\n[data]\n'
                     'dataset = "digits"\ntest_subset = 1\n[train]\nepochs = 1\n[distill]\nalphas = []\n'
                     'control = false\n')
    r = run_cli("study", str(study), "--out", str(tmp_path / "out"), "--jobs", "1")
    assert r.returncode == 0, r.stderr
    s = json.loads(paths.summary_file(tmp_path / "out").read_text(), parse_constant=_no_constants)
    assert s["num_test"] == 1 and s["reference"]["independent_mean"] == 0.0
    assert {r["setting"]: (r["rfd"], r["verdict"]) for r in s["rows"]} == {
        "seed=1": (None, "yardstick"), "8-bit": (None, "undetermined"), "90%": (None, "undetermined")}
    assert "cannot be decided: the independent models agree with the base" in paths.report_md(
        tmp_path / "out").read_text()


def _row(**kw) -> dict:
    row = {"method": "prune", "role": "prune", "setting": "50%", "runs": ["prune_x"], "accuracy": 0.95,
           "accuracy_deviation_pct": -2.31, "accuracy_deviation_std": None, "disagreement": 0.0595, "js": 0.01,
           "tv": 0.03, "rfd": 0.30, "rfd_ci": [0.22, 0.41], "rfd_ci_yardstick": [0.20, 0.45],
           "p_closer": 1 / 1001, "verdict": "preserves"}
    return {**row, **kw}


def _summary(rows: list[dict], pairs: int = 2) -> dict:
    from funclens.summary import caveats

    for r in rows:
        r["caveats"] = caveats(r, pairs)
    return {"metric": "disagreement", "num_test": 500, "rows": rows,
            "reference": {"pairs": pairs, "independent_mean": 0.2, "independent_std": 0.01},
            "thresholds": {"bootstrap": 1000, "preserves_below": 0.5, "independent_above": 0.8}}


def test_a_preserving_verdict_that_flips_many_predictions_says_so():
    """50% pruning that flips 5.95% of predictions and loses 2.31% must not read as a plain 'preserves'."""
    s = _summary([_row(), _row(setting="16-bit", method="quantize", role="quantize", disagreement=0.001,
                                 accuracy_deviation_pct=0.0, rfd=0.01, rfd_ci=[0.0, 0.02],
                                 rfd_ci_yardstick=[0.0, 0.03])])
    prune, quant = verdict_sentences(s)
    assert "5.95% of the test predictions and loses 2.31% accuracy" in prune
    assert "Rests on 500 test inputs and a yardstick of 2 independent models" in prune
    assert "p < 0.001" in prune and "p = 0.001" not in prune
    assert "Weak where" not in quant and "preserves the base function" in quant
    assert "preserves *" in overview_md(s) and "| 16-bit | 🟢 preserves |" in overview_md(s)


def test_a_yardstick_that_would_change_the_verdict_and_a_wide_interval_are_named():
    s = _summary([_row(disagreement=0.001, accuracy_deviation_pct=0.0, rfd=0.3, rfd_ci=[0.2, 0.45],
                       rfd_ci_yardstick=[0.15, 0.62]),
                  _row(setting="90%", rfd=0.9, rfd_ci=[0.3, 1.9], rfd_ci_yardstick=[0.25, 2.5], verdict="partial")])
    first, wide = verdict_sentences(s)
    assert "independent model alone as the yardstick the interval is [0.15, 0.62], which reads 'partial'" in first
    assert "reaches across 0.5 and 0.8, so the test set is too small" in wide


def test_the_control_student_near_an_independent_model_reads_as_one():
    s = _summary([_row(role="control", method="distill", setting="control alpha=0.5", rfd=1.0,
                       rfd_ci=[0.7, 1.3], rfd_ci_yardstick=[0.6, 1.5], verdict="partial", disagreement=0.2,
                       accuracy_deviation_pct=0.1)])
    (sentence,) = verdict_sentences(s)
    assert "as far from the base as an independent model" in sentence and "part of the way" not in sentence


def test_the_reduced_mark_comes_from_the_study_config_alone():
    quick = preset_study("quick")
    assert preset_changes(quick) == [] and preset_changes(quick.replace(name="mine", seeds=(0, 5))) == []
    reduced = quick.replace(data=quick.data.__class__("digits", train_subset=300), seeds=(0, 1))
    assert preset_changes(reduced) == ["data.train_subset: 0 -> 300", "seeds: [0, 1, 2] -> [0, 1]"]
    note = reduced_note({"setup": {"preset": "quick", "changed_from_preset": preset_changes(reduced)}})
    assert note.startswith("REDUCED: this study changes the preset 'quick' (data.train_subset: 0 -> 300")
    assert reduced_note({"setup": {"preset": "quick", "changed_from_preset": []}}) == ""


def test_the_setup_block_holds_what_went_into_the_run_ids(reported):
    s = json.loads(paths.summary_file(reported).read_text())
    block = setup_md(s)
    for needle in ("| epochs | 3 |", "| learning rate | 0.02 |", "| optimizer | sgd |", "| momentum | 0.9 |",
                   "| seeds | 0, 1, 2 |", "| distillation T | 3.0 |", "| quantize | 16-bit, 8-bit |",
                   f"| data content (sha256) | {s['setup']['data_content_sha256']} |",
                   "| preset | none: a study of its own |"):
        assert needle in block, needle
    assert len(s["setup"]["data_content_sha256"]) == 64 and len(s["setup"]["git_commits"]) == 1
    md = paths.report_md(reported).read_text()
    assert md.index("## Summary") < md.index("## Setup") < md.index("## Yardstick") < md.index("## Verdicts")
    assert "REDUCED" not in md
    sizes = next(line for line in md.splitlines() if "| quantize | 8-bit |" in line and "lenet" in line)
    q8 = next(r for r in s["rows"] if r["setting"] == "8-bit")
    assert f"{q8['weight_bytes']:,}" in sizes and f"{q8['fp32_bytes'] // 4:,}" in sizes
