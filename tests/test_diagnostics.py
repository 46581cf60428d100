"""Where the function moved: every diagnostic field of summary.json against plain-loop hand computations and
scipy, on synthetic arrays and on a real small digits study; and the --fail-if gate's exit codes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from handcalc import hand_per_example, random_probs
from scipy.stats import binomtest

from funclens import metrics, paths
from funclens.compare import GateError, compare_predictions, gate, parse_condition
from funclens.config import DataCfg
from funclens.data import load_from_cfg
from funclens.store import Store
from funclens.summary import diagnose

# ---------------------------------------------------------------- hand references, one input at a time


def hand_percentile(values, q: float) -> float:
    """Linear interpolation between the order statistics at rank q/100 * (n - 1)."""
    v = sorted(float(x) for x in values)
    pos = q / 100 * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def hand_flips(base, model, y) -> tuple[int, int]:
    b = c = 0
    for pb, pm, t in zip(base, model, y):
        right_b, right_m = int(np.argmax(pb)) == t, int(np.argmax(pm)) == t
        b += right_b and not right_m
        c += right_m and not right_b
    return b, c


def hand_ece(probs, y, bins: int = 15) -> float:
    total = 0.0
    for k in range(bins):
        lo, hi = k / bins, (k + 1) / bins
        members = [(float(max(p)), int(np.argmax(p)) == t) for p, t in zip(probs, y) if lo < float(max(p)) <= hi]
        if members:
            acc = sum(r for _, r in members) / len(members)
            conf = sum(c for c, _ in members) / len(members)
            total += len(members) / len(y) * abs(acc - conf)
    return total


def hand_per_class(base, model, y, c: int) -> dict:
    out = {"count": [], "base_accuracy": [], "accuracy_change": [], "disagreement": []}
    for k in range(c):
        idx = [i for i, t in enumerate(y) if t == k]
        rb = sum(int(np.argmax(base[i])) == k for i in idx) / len(idx)
        rm = sum(int(np.argmax(model[i])) == k for i in idx) / len(idx)
        dis = sum(int(np.argmax(base[i])) != int(np.argmax(model[i])) for i in idx) / len(idx)
        for key, v in zip(out, (len(idx), rb, rm - rb, dis)):
            out[key].append(v)
    return out


def hand_margin_bins(base, model, y, bins: int = 10) -> dict:
    margins = [float(sorted(p)[-1]) - float(sorted(p)[-2]) for p in base.astype(np.float64)]
    order = sorted(range(len(base)), key=lambda i: (margins[i], i))
    n = len(base)
    out = {"disagreement": [], "flips": []}
    for k in range(bins):
        idx = [order[r] for r in range(n) if r * bins // n == k]
        out["disagreement"].append(sum(int(np.argmax(base[i])) != int(np.argmax(model[i])) for i in idx) / len(idx))
        out["flips"].append(sum((int(np.argmax(base[i])) == y[i]) != (int(np.argmax(model[i])) == y[i])
                                for i in idx) / len(idx))
    return out


def assert_lists(got: dict, hand: dict) -> None:
    assert set(got) == set(hand)
    for key, values in hand.items():
        assert got[key] == pytest.approx(values, abs=1e-12), key


def assert_tails(got: dict, values) -> None:
    assert got["mean"] == pytest.approx(float(np.mean(values)), abs=1e-9)
    assert got["max"] == pytest.approx(max(values), abs=1e-12)
    for key, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)):
        assert got[key] == pytest.approx(hand_percentile(values, q), abs=1e-9), key


# ---------------------------------------------------------------- pure functions


@pytest.mark.parametrize("b,c", [(0, 1), (0, 5), (3, 3), (1, 9), (7, 2), (30, 60), (480, 530), (2, 40)])
def test_mcnemar_is_scipys_exact_binomial_test(b, c):
    assert metrics.mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9, abs=1e-300)


def test_mcnemar_of_no_discordant_pair_is_one_and_negative_counts_are_refused():
    assert metrics.mcnemar_exact(0, 0) == 1.0
    with pytest.raises(metrics.MetricsError):
        metrics.mcnemar_exact(-1, 2)


def test_diagnostics_of_one_model_match_hand_loops():
    rng = np.random.default_rng(3)
    n, c = 600, 7
    base = random_probs(rng, n, c).astype(np.float16)
    model = (0.4 * base + 0.6 * random_probs(rng, n, c)).astype(np.float16)
    y = np.where(rng.random(n) < 0.7, np.argmax(base, axis=1), rng.integers(0, c, n))
    d = diagnose(base, [model], y, [random_probs(rng, n, c), random_probs(rng, n, c)])
    b, cc = hand_flips(base, model, y)
    assert b > 10 and cc > 5   # the example exercises both directions
    assert (d["flips_correct_to_wrong"], d["flips_wrong_to_correct"]) == (b / n, cc / n)
    assert d["mcnemar_p"] == pytest.approx(binomtest(b, b + cc, 0.5).pvalue, rel=1e-9)
    assert_tails(d["kl_base_model"], hand_per_example(base, model, "kl"))
    assert_tails(d["kl_model_base"], hand_per_example(model, base, "kl"))
    change = [float(model[i, t]) - float(base[i, t]) for i, t in enumerate(y)]
    tc = d["true_class_prob_change"]
    assert tc["rms"] == pytest.approx(math.sqrt(sum(x * x for x in change) / n), abs=1e-12)
    assert (tc["min"], tc["p1"], tc["p99"]) == pytest.approx(
        (min(change), hand_percentile(change, 1), hand_percentile(change, 99)), abs=1e-12)
    assert d["top1_agreement"] == pytest.approx(1 - np.mean(hand_per_example(base, model, "disagreement")))
    assert d["ece"] == pytest.approx(hand_ece(model, y), abs=1e-9)
    assert_lists(d["per_class"], hand_per_class(base, model, y, c))
    bins = hand_margin_bins(base, model, y)
    assert d["flips_by_margin"]["disagreement"] == pytest.approx(bins["disagreement"])
    assert d["flips_by_margin"]["flips"] == pytest.approx(bins["flips"])
    assert sum(d["flips_by_margin"]["count"]) == n and max(d["flips_by_margin"]["count"]) == 60


def test_several_seeds_give_the_mean_of_each_field_and_hurt_classes_from_the_mean_change():
    rng = np.random.default_rng(5)
    n, c = 400, 5
    base = random_probs(rng, n, c)
    y = np.argmax(base + 0.5 * rng.random((n, c)), axis=1)
    students = [0.6 * base + 0.4 * random_probs(rng, n, c) for _ in range(3)]
    indeps = [random_probs(rng, n, c) for _ in range(3)]
    both = diagnose(base, students, y, indeps)
    each = [diagnose(base, [s], y, indeps) for s in students]
    assert both["members"] == 3
    for key in ("flips_correct_to_wrong", "mcnemar_p", "ece", "top1_agreement"):
        assert both[key] == pytest.approx(np.mean([e[key] for e in each])), key
    assert both["kl_base_model"]["p99"] == pytest.approx(np.mean([e["kl_base_model"]["p99"] for e in each]))
    change = np.mean([e["per_class"]["accuracy_change"] for e in each], axis=0)
    assert both["per_class"]["accuracy_change"] == pytest.approx(change.tolist())
    ref = np.array([metrics.per_class(base, i, y)["accuracy_change"] for i in indeps])
    for h in both["classes_hurt"]:
        k = h["class"]
        assert h["accuracy_change"] == pytest.approx(change[k]) and change[k] < 0
        assert h["independent_min"] == pytest.approx(ref[:, k].min())
        assert h["p_rank"] == pytest.approx((1 + sum(r <= change[k] for r in ref[:, k])) / 4)
        assert h["beyond_independents"] == bool(change[k] < ref[:, k].min())
    assert [h["accuracy_change"] for h in both["classes_hurt"]] == sorted(h["accuracy_change"]
                                                                          for h in both["classes_hurt"])


def test_without_labels_the_labelled_fields_are_null_and_the_rest_is_there():
    rng = np.random.default_rng(1)
    base, model = random_probs(rng, 50, 4), random_probs(rng, 50, 4)
    d = diagnose(base, [model])
    assert all(d[k] is None for k in ("flips_correct_to_wrong", "flips_wrong_to_correct", "mcnemar_p", "ece",
                                      "per_class", "classes_hurt", "true_class_prob_change"))
    assert d["flips_by_margin"]["flips"] is None and len(d["flips_by_margin"]["disagreement"]) == 10
    assert d["kl_base_model"]["max"] > 0


# ---------------------------------------------------------------- a real small study


@pytest.fixture
def studied(small_reported: Path) -> Path:
    return small_reported


def test_the_base_run_stores_the_test_labels_listed_in_done(studied):
    plan = json.loads(paths.study_file(studied).read_text())
    base = next(r["run"] for r in plan["runs"] if r["role"] == "base")
    assert "labels.npy" in Store(studied).done_record(base)["files"]
    y = np.load(paths.labels_file(paths.run_dir(studied, base)))
    assert np.array_equal(y, load_from_cfg(DataCfg("digits"), None, True).test_y.numpy())


def test_every_summary_row_holds_the_hand_computed_diagnostics(studied):
    s = json.loads(paths.summary_file(studied).read_text())
    plan = json.loads(paths.study_file(studied).read_text())["runs"]
    base_id = next(r["run"] for r in plan if r["role"] == "base")
    load = lambda rid: np.load(paths.run_dir(studied, rid) / "preds" / sorted(  # noqa: E731
        p.name for p in (paths.run_dir(studied, rid) / "preds").iterdir())[-1])
    base, y = load(base_id), np.load(paths.labels_file(paths.run_dir(studied, base_id)))
    n = len(y)
    assert s["base"]["ece"] == pytest.approx(hand_ece(base, y), abs=1e-9)
    assert len(s["rows"]) == 6
    for row in s["rows"]:
        (rid,) = row["runs"]
        m = load(rid)
        b, c = hand_flips(base, m, y)
        assert (row["flips_correct_to_wrong"], row["flips_wrong_to_correct"]) == (b / n, c / n), row["setting"]
        expected_p = binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
        assert row["mcnemar_p"] == pytest.approx(expected_p, rel=1e-9)
        assert_tails(row["kl_base_model"], hand_per_example(base, m, "kl"))
        assert_tails(row["kl_model_base"], hand_per_example(m, base, "kl"))
        assert row["ece"] == pytest.approx(hand_ece(m, y), abs=1e-9)
        assert_lists(row["per_class"], hand_per_class(base, m, y, s["num_classes"]))
        assert row["flips_by_margin"]["flips"] == pytest.approx(hand_margin_bins(base, m, y)["flips"])
    by = {r["setting"]: r for r in s["rows"]}
    assert by["50%"]["flips_correct_to_wrong"] > by["8-bit"]["flips_correct_to_wrong"]


def test_report_has_a_collapsible_section_per_row_and_a_markdown_table(studied):
    page = paths.report_html(studied).read_text()
    assert page.count("<details><summary>") == 6 and "Where the function moved" in page
    md = paths.report_md(studied).read_text()
    table = [line for line in md.splitlines() if line.startswith("| lenet | prune | 50% |")]
    assert len(table) == 2   # the distance table's row and the diagnostics row
    row = next(r for r in json.loads(paths.summary_file(studied).read_text())["rows"] if r["setting"] == "50%")
    assert f"| {row['flips_correct_to_wrong']:.4f} | {row['flips_wrong_to_correct']:.4f} |" in table[1]


# ---------------------------------------------------------------- the gate


@pytest.fixture
def npys(tmp_path: Path) -> Path:
    eye = np.eye(4)
    for name, arr in (("base", eye[[0, 1, 2, 3, 0, 1, 2, 3]]), ("q8", eye[[0, 1, 2, 3, 0, 1, 2, 0]]),
                      ("seed1", eye[[1, 0, 3, 2, 0, 1, 2, 3]]), ("seed2", eye[[0, 0, 3, 3, 1, 1, 2, 3]])):
        np.save(tmp_path / f"{name}.npy", arr)
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 3, 0, 1, 2, 3]))
    return tmp_path


def _compare(d: Path, *args: str):
    return run_cli("compare", str(d / "base.npy"), str(d / "q8.npy"), f"indep:{d / 'seed1.npy'}",
                   f"indep:{d / 'seed2.npy'}", "--labels", str(d / "y.npy"), *args)


def test_gate_passes_with_exit_0_when_no_condition_trips(npys):
    r = _compare(npys, "--fail-if", "flips>0.2", "--fail-if", "disagreement>=0.2", "--fail-if", "kl>20",
                 "--fail-if", "rfd>0.5", "--json")
    assert r.returncode == 0, r.stderr
    row = next(x for x in json.loads(r.stdout)["rows"] if x["model"].endswith("q8.npy"))
    assert row["flips_correct_to_wrong"] == 0.125 and row["rfd"] == pytest.approx(0.125 / ((4 / 8 + 3 / 8) / 2))


def test_gate_fails_with_exit_3_and_one_line_naming_the_condition_and_value(npys):
    r = _compare(npys, "--fail-if", "rfd<0", "--fail-if", "flips>0.1")
    assert r.returncode == 3
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "flips 0.125 > 0.1" in lines[0] and "q8.npy" in lines[0]
    assert "seed1" not in lines[0]   # independent models are the yardstick, not gated
    assert "q8.npy" in r.stdout     # the rows are printed all the same


@pytest.mark.parametrize("cond,words", [("flips>>0.1", "expected FIELD OP NUMBER"), ("accuracy<0.9", "unknown field"),
                                        ("rfd_hi>", "expected FIELD OP NUMBER")])
def test_a_malformed_condition_exits_2_with_one_line(npys, cond, words):
    r = _compare(npys, "--fail-if", cond)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr and "Traceback" not in r.stderr


def test_rfd_without_independents_and_flips_without_labels_exit_2(npys):
    r = run_cli("compare", str(npys / "base.npy"), str(npys / "q8.npy"), "--fail-if", "rfd_hi>0.5")
    assert r.returncode == 2 and "needs independent models" in r.stderr
    with pytest.raises(GateError, match="test labels"):
        gate(compare_predictions(np.eye(2), {"m": np.eye(2)}), [parse_condition("flips>0")])


def test_an_undefined_rfd_trips_the_gate():
    eye = np.eye(3)
    res = compare_predictions(eye, {"m": eye[[1, 1, 2]]}, independents={"i": eye})
    assert gate(res, [parse_condition("rfd>0.5")]).startswith("m: rfd is undefined")


def test_gate_on_run_folders_uses_the_labels_the_base_stored(studied):
    plan = json.loads(paths.study_file(studied).read_text())["runs"]
    run = {r["setting"]: str(paths.run_dir(studied, r["run"])) for r in plan}
    s = {r["setting"]: r for r in json.loads(paths.summary_file(studied).read_text())["rows"]}
    flips = s["50%"]["flips_correct_to_wrong"] + s["50%"]["flips_wrong_to_correct"]
    assert flips > 0
    ok = run_cli("compare", run["seed=0"], run["50%"], "--fail-if", f"flips>{flips + 1e-6}")
    assert ok.returncode == 0, ok.stderr
    bad = run_cli("compare", run["seed=0"], run["50%"], f"indep:{run['seed=1']}", "--fail-if", f"flips>{flips / 2}")
    assert bad.returncode == 3 and f"flips {flips:.4g} >" in bad.stderr
