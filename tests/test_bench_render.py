"""benchmarks/render.py: RESULTS.md is rendered from RESULTS.json alone, every section and every figure."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import render  # noqa: E402
import run  # noqa: E402
from common import GIB, MIB  # noqa: E402

# The RESULTS.json that `benchmarks/run.py --quick` wrote on this project's machine (tiny sizes).
QUICK = REPO / "tests" / "data" / "bench-results-quick.json"


@pytest.fixture()
def quick() -> dict:
    return json.loads(QUICK.read_text())


def test_every_section_in_order(quick):
    md = render.render(quick)
    at = [md.index(f"\n## {s}\n") for s in render.SECTIONS]
    assert at == sorted(at)
    assert md.startswith("# funclens benchmarks (--quick smoke run")
    assert f"`{quick['command']}`" in md and quick["machine"]["commit"][:12] in md


def test_header_and_targets_hold_the_measured_figures(quick):
    md = render.render(quick)
    load = quick["load"]
    assert f"at the start {load['start']:.2f}, at the end {load['end']:.2f}" in md
    lines = {t["key"]: next(x for x in md.splitlines() if x.startswith("| ") and x.endswith(
        {True: "| yes |", False: "| **no** |", None: "| - |"}[t["met"]]) and _target_figure(t) in x)
        for t in quick["targets"]}
    assert len(set(lines.values())) == len(quick["targets"])  # one row per target, each with its figure


def _target_figure(t: dict) -> str:
    v = t["value"]
    return {"train_pct_of_ceiling": f"{v:.1f}%", "speedup": f"{v:.2f}x", "analysis_seconds": f"{v:.2f} s",
            "analysis_peak_gib": f"{v:.2f} GiB", "full_study_wall_s": render.fmt_s(v),
            "full_mnist_fp32_s": render.fmt_s(v), "full_mnist_bf16_s": render.fmt_s(v)}[t["key"]]


def test_tables_hold_every_figure(quick):
    md = render.render(quick)
    c = quick["ceiling"]
    for when in ("start", "end"):
        assert all(f"{c[when][k]:.1f}" in md for k in ("fp32_all", "fp32_1", "bf16_all"))
    e2e = quick["end_to_end"]
    for r in e2e["runs"]["baseline"] + e2e["runs"]["funclens"]:
        for key in ("total", "train_phase", "before_analysis", "analysis"):
            assert render.fmt_s(r[key]) in md
        assert f"{100 * r['base_accuracy']:.2f}%" in md
    assert f"**Speedup, end to end: {e2e['speedup']:.2f}x**" in md
    for t in quick["throughput"].values():
        if isinstance(t, dict):
            assert f"| {t['images_per_s']:,.0f} | {t['gflops']:.1f} |" in md
    for a in (quick["analysis"][k] for k in ("full", "small", "plain", "plain_tsne")):
        assert f"{a['peak'] / MIB:,.0f} MiB" in md and all(f"{s:.2f} s" in md for s in a["times"].values())
    assert f"{quick['flops']['train']:,} FLOPs per image" in md


def test_full_studies_rows_and_their_source(quick):
    md = render.render(quick)
    for s in quick["full_studies"]:
        row = next(x for x in md.splitlines() if x.startswith(f"| `{s['flags']}` |"))
        assert f"{s['total']:.3e}" in row and render.fmt_s(s["measured"]["wall_s"]) in row
        assert s["measured"]["commit"][:7] in row and f"{s['pct_of_ceiling']:.1f}%" in row
        assert f"- `{s['flags']}`: {s['measured']['wall_s']:,.0f} s, kept in" in md


def test_a_study_not_run_anywhere_says_so(quick):
    res = copy.deepcopy(quick)
    for key in ("measured", "parts", "total", "limit_s", "pct_of_ceiling"):
        res["full_studies"][0].pop(key)
    res["targets"] = run.targets(res)
    md = render.render(res)
    assert f"not run here (no `{res['full_studies'][0]['folder']}`)" in md
    assert f"not run here (no {res['full_studies'][0]['folder']}.time) | - |" in md


def test_markdown_follows_the_data(quick):
    res = copy.deepcopy(quick)
    res["end_to_end"]["speedup"] = 9.87
    res["end_to_end"]["runs"]["funclens"][0]["total"] = 1234.5
    res["analysis"]["full"]["peak"] = 5 * GIB
    res["targets"] = run.targets(res)
    md = render.render(res)
    assert "**Speedup, end to end: 9.87x**" in md and "| end to end |" in md and "20.6 min" in md
    assert "| ... with peak memory < 4 GiB | 5.00 GiB total peak RSS" in md and "| **no** |" in md


def test_targets_are_decided_from_the_data(quick):
    assert run.targets(quick) == quick["targets"]
    res = copy.deepcopy(quick)
    res["end_to_end"]["speedup"] = run.TARGET_SPEEDUP
    assert next(t for t in run.targets(res) if t["key"] == "speedup")["met"] is True


def test_committed_markdown_is_the_rendering_of_the_committed_json():
    bench = REPO / "benchmarks"
    assert render.render(render.load_results(bench / "RESULTS.json")) == (bench / "RESULTS.md").read_text()


def test_bad_results_files_are_one_line_errors(tmp_path, quick, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert render.main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert render.main([str(tmp_path / "absent.json")]) == 2
    with pytest.raises(render.ResultsError, match="format"):
        render.render({**quick, "format": 99})
    del quick["throughput"]
    with pytest.raises(render.ResultsError, match="throughput"):
        render.render(quick)


def test_cli_writes_the_markdown_beside_the_json(tmp_path):
    src = tmp_path / "RESULTS.json"
    src.write_text(QUICK.read_text())
    assert render.main([str(src)]) == 0
    assert (tmp_path / "RESULTS.md").read_text() == render.render(json.loads(QUICK.read_text()))


def test_full_studies_flops_from_the_plan_and_wall_times_from_the_records(tmp_path):
    from ceiling import lenet_flops
    from fullstudy import FULL_STUDIES, RECORDS, _counts, full_studies, read_records, study_of

    records = tmp_path / "full_studies.json"
    records.write_text(RECORDS.read_text())
    rows = full_studies({"fp32_all": 100.0, "bf16_all": 400.0}, "2026-01-01 00:00 UTC", records_path=records)
    kept = read_records(records)
    assert [(r["preset"], r["precision"]) for r in rows] == [(fs.preset, fs.precision) for fs in FULL_STUDIES]
    assert {r["precision"] for r in rows} == {"fp32", "bf16"}
    for r, fs in zip(rows, FULL_STUDIES):
        same = [k for k in kept if (k["preset"], k["arch"], k.get("precision", "fp32")) == (fs.preset, fs.arch,
                                                                                          fs.precision)]
        assert r["ceiling_gflops"] == {"fp32": 100.0, "bf16": 400.0}[fs.precision]
        if not same:  # never timed: today's plan, no figures
            assert "measured" not in r and r["trainings"] == _counts(study_of(fs))["trainings"]
            continue
        # the newest record of the same study and precision, with the counts of the plan it timed (the
        # presets before the controls joined them had 13 trainings and 7 post-hoc runs), not today's plan
        rec = same[-1]
        assert r["measured"] == rec and (r["trainings"], r["posthoc"]) == (rec["plan"]["trainings"],
                                                                           rec["plan"]["posthoc"])
        assert r["total"] == sum(r["parts"].values())
        assert r["limit_s"] == pytest.approx(r["total"] / (r["ceiling_gflops"] * 1e9))
        assert r["pct_of_ceiling"] == pytest.approx(100 * r["limit_s"] / rec["wall_s"])
        # trainings x 25 epochs x every training image x LeNet's training FLOPs per image at the input's shape
        assert r["parts"]["training"] == r["trainings"] * 25 * rec["n_train"] * lenet_flops(fs.in_shape, 10)["train"]
    assert rows[0]["measured"]["n_train"] == 60000 and lenet_flops((1, 28, 28), 10)["train"] == 15786240
    # a study file's study is what it says: the preset with bf16 training
    bf16 = next(fs for fs in FULL_STUDIES if fs.precision == "bf16")
    assert study_of(bf16).train.precision == "bf16" and study_of(bf16).name == bf16.preset


def test_full_mnist_targets_follow_the_measured_wall_times(quick):
    res = copy.deepcopy(quick)
    timed = {**res["full_studies"][0], "precision": "fp32", "ceiling_gflops": 100.0, "folder": "results/x"}
    timed["measured"] = {**timed["measured"], "wall_s": 2000.0, "commit": "abcdef0"}
    untimed = {k: v for k, v in timed.items() if k not in ("measured", "parts", "total", "limit_s", "pct_of_ceiling")}
    res["full_studies"] = [timed, {**untimed, "precision": "bf16", "flags": "docs/studies/x.toml"}]
    t = {x["key"]: x for x in run.targets(res)}
    assert (t["full_mnist_fp32_s"]["met"], t["full_mnist_fp32_s"]["value"]) == (True, 2000.0)
    assert (t["full_mnist_bf16_s"]["met"], t["full_mnist_bf16_s"]["value"]) == (None, None)
    res["full_studies"][0]["measured"]["wall_s"] = 45 * 60.0   # not under the target
    res["targets"] = run.targets(res)
    md = render.render(res)
    fp32 = next(x for x in md.splitlines() if x.startswith("| full LeNet MNIST study (--preset paper-mnist) in fp32"))
    assert "45.0 min (commit abcdef0)" in fp32 and fp32.endswith("| **no** |")
    bf16 = next(x for x in md.splitlines() if x.startswith("| full LeNet MNIST study (docs/studies/x.toml) in bf16"))
    assert "not run here (no results/x.time)" in bf16 and bf16.endswith("| - |")


def test_a_bf16_measurement_renders_as_a_target_and_section_6(quick):
    from bf16 import bf16_bench

    res = copy.deepcopy(quick)
    res["bf16"] = b = bf16_bench(64, 2, 64, 1)  # a real measurement, at tiny sizes
    assert all(x > 0 for p in ("fp32", "bf16") for x in b[p]["runs"]) and len(b["pair_ratios"]) == 2
    res["targets"] = run.targets(res)
    t = next(t for t in res["targets"] if t["key"] == "bf16_speedup")
    assert t["value"] == b["bf16"]["images_per_s"] / b["fp32"]["images_per_s"] and t["met"] == (t["value"] >= 1.5)
    md = render.render(res)
    assert md.index(f"\n## {render.SECTIONS[-1]}\n") < md.index(f"\n## {render.BF16_SECTION}\n")
    target_row = next(x for x in md.splitlines() if x.startswith("| LeNet training in bf16 >= 1.5x"))
    assert f"{t['value']:.2f}x" in target_row and target_row.endswith("| yes |" if t["met"] else "| **no** |")
    section = md[md.index(f"\n## {render.BF16_SECTION}\n"):]
    assert f"**bf16 / fp32: {b['ratio']:.2f}x**" in section
    for p in ("fp32", "bf16"):
        row = next(x for x in section.splitlines() if x.startswith(f"| {p} |"))
        assert all(f"{x:,.0f}" in row for x in b[p]["runs"]) and f"{b[p]['pct']:.1f}% of" in row
    assert f"{b['ceiling']['used']['bf16_1']:.1f} in bf16" in section
    # results measured before bf16.py existed render as they always did
    assert render.BF16_SECTION not in render.render(quick) and "bf16_speedup" not in str(run.targets(quick))


def test_the_functional_cost_of_bf16_training_is_kept_once_and_rendered(tmp_path, quick):
    from fullstudy import bf16_cost

    row = {"method": "precision", "setting": "bf16 base", "rfd": 0.42, "rfd_ci": [0.3, 0.55], "verdict": "partial",
           "disagreement": 0.0021, "accuracy_deviation_pct": -0.03, "role": "precision"}
    row["runs"] = ["train_0123456789ab"]
    summary = {"rows": [row, {**row, "method": "quantize", "setting": "8-bit"}], "num_test": 10000,
               "reference": {"independent_mean": 0.005}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "runs" / "train_0123456789ab").mkdir(parents=True)
    (tmp_path / "runs" / "train_0123456789ab" / "metrics.json").write_text('{"git_commit": "abcdef0123"}')
    cost = bf16_cost(tmp_path)
    assert [r["setting"] for r in cost["rows"]] == ["bf16 base"] and cost["commit"] == "abcdef0"
    assert bf16_cost(tmp_path / "nowhere") is None
    res = copy.deepcopy(quick)
    res["full_studies"][0]["bf16_cost"] = {**cost, "reported": "2026-01-01 00:00 UTC"}
    md = render.render(res)
    assert "| bf16 base | 0.42 [0.30, 0.55] | partial | 0.21% | -0.03 |" in md
    assert "The functional cost of bf16 training" not in render.render(quick)
