"""compress_all_seeds: every post-hoc setting applied to every independent model, RFD's spread over seeds, and the
exemplars table that uses the population."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from funclens.config import ConfigError, DistillGrid, StudyCfg, TrainCfg, preset_study
from funclens.execute import RunContext
from funclens.plan import plan
from funclens.store import Store
from funclens.study import run_study


def test_plan_compresses_every_seed_with_its_own_parent():
    study = preset_study("quick").replace(quantize=("8-bit",), prune=(0.5,), compress_all_seeds=True)
    runs = plan(study)
    trained = {r.seed: r.run_id for r in runs if r.role in ("base", "independent")}
    posthoc = [r for r in runs if r.role in ("quantize", "prune")]
    assert len(posthoc) == 2 * 3
    for r in posthoc:
        assert r.spec.parent == trained[0 if r.seed is None else r.seed]
    # without it, the plan is what it always was: the base's compressed models only
    plain = plan(study.replace(compress_all_seeds=False))
    assert [r.spec.parent for r in plain if r.role in ("quantize", "prune")] == [trained[0]] * 2
    kept = [p.run_id for p in runs if p.seed is None or p.role not in ("quantize", "prune")]
    assert [p.run_id for p in plain] == kept


def test_compress_all_seeds_counts_toward_the_run_limit():
    with pytest.raises(ConfigError, match="over the limit"):
        StudyCfg(seeds=tuple(range(40)), prune=tuple(i / 100 for i in range(1, 40)), compress_all_seeds=True)
    with pytest.raises(ConfigError, match="compress_all_seeds"):
        StudyCfg(compress_all_seeds="yes")


@pytest.fixture(scope="module")
def pop_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("pop") / "s"
    study = StudyCfg(name="pop", train=TrainCfg(epochs=1, lr=0.02), seeds=(0, 1, 2), distill=DistillGrid(alphas=()),
                     quantize=("4-bit",), prune=(0.7,), compress_all_seeds=True)
    run_study(study, RunContext(out=str(out)), jobs=1)
    return out


def _disagree(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(1) != b.argmax(1)))


def test_summary_rows_carry_the_spread_over_seeds(pop_study):
    summary = json.loads((pop_study / "summary.json").read_text())
    rec = Store(pop_study).read_study()["runs"]
    st = Store(pop_study)
    preds = {r["run"]: st.load_preds(r["run"]).astype(np.float32) for r in rec}
    trained = [r["run"] for r in rec if r["role"] in ("base", "independent")]
    rows = {r["setting"]: r for r in summary["rows"] if r["role"] in ("quantize", "prune")}
    assert set(rows) == {"4-bit", "70%"}
    for setting, row in rows.items():
        members = [r for r in rec if r["setting"] == setting]
        assert row["population"] == 3 and row["population_runs"] == [m["run"] for m in members]
        assert row["runs"] == [members[0]["run"]] and members[0]["parents"] == [trained[0]]  # the row is the base's
        assert row["rfd_seeds"][0] == pytest.approx(row["rfd"])
        # each compressed model against its own parent, the other two uncompressed models as its yardstick
        for m, value in zip(members, row["rfd_seeds"]):
            parent = m["parents"][0]
            ref = np.mean([_disagree(preds[parent], preds[o]) for o in trained if o != parent])
            assert value == pytest.approx(_disagree(preds[parent], preds[m["run"]]) / ref)
        assert row["rfd_seed_mean"] == pytest.approx(np.mean(row["rfd_seeds"]))
        assert row["rfd_seed_min"] == min(row["rfd_seeds"]) and row["rfd_seed_max"] == max(row["rfd_seeds"])
        assert row["rfd_ci"][0] <= row["rfd"] <= row["rfd_ci"][1]  # the spread over inputs stays beside it
    # 70% pruning of a one-epoch model moves every seed's function: the spread is not degenerate
    assert rows["70%"]["rfd_seed_max"] > rows["70%"]["rfd_seed_min"] > 0


def test_exemplars_table_uses_the_whole_population(pop_study):
    st = Store(pop_study)
    rec = st.read_study()["runs"]
    preds = {r["run"]: st.load_preds(r["run"]).astype(np.float32) for r in rec}
    uncompressed = [preds[r["run"]] for r in rec if r["role"] in ("base", "independent")]
    compressed = [preds[r["run"]] for r in rec if r["setting"] == "70%"]
    with open(pop_study / "tables" / "exemplars.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["setting"] == "70%"]
    # by hand: majority vote of 3 models, ties to the smallest label
    def modal(ps):
        votes = np.stack([p.argmax(1) for p in ps])
        return np.array([np.bincount(v, minlength=10).argmax() for v in votes.T])

    ref, mod = modal(uncompressed), modal(compressed)
    assert sorted(int(r["index"]) for r in rows) == np.flatnonzero(ref != mod).tolist()
    assert rows, "70% pruning of one-epoch models changes some modal labels"
    for r in rows:
        i = int(r["index"])
        share = np.mean([p[i].argmax() != ref[i] for p in compressed])
        assert (int(r["modal_uncompressed"]), int(r["modal_compressed"])) == (ref[i], mod[i])
        assert float(r["share"]) == pytest.approx(share) and r["population"] == "3" and r["true_label"] != ""
    shares = [float(r["share"]) for r in rows]
    assert shares == sorted(shares, reverse=True)
    report = (pop_study / "report.md").read_text()
    assert "compressed all 3 uncompressed models" in report
