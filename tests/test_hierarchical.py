"""The hierarchical bootstrap (models, then inputs) beside the interval over inputs alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from funclens import paths
from funclens.rfd import population_rfd_hierarchical, rfd, rfd_hierarchical


def _noisy_copy(base: np.ndarray, moved: float, rng: np.random.Generator) -> np.ndarray:
    """``base`` with a fraction ``moved`` of its inputs given another random distribution."""
    out = base.copy()
    idx = rng.random(len(base)) < moved
    out[idx] = rng.dirichlet(np.ones(base.shape[1]), int(idx.sum()))
    return out


@pytest.fixture
def arrays():
    rng = np.random.default_rng(7)
    base = rng.dirichlet(np.ones(5) * 0.3, 400)
    students = [_noisy_copy(base, m, rng) for m in (0.05, 0.15, 0.3)]      # seeds that moved unequally far
    indeps = [_noisy_copy(base, m, rng) for m in (0.5, 0.7)]
    return base, students, indeps


def test_one_model_and_one_independent_give_the_inputs_interval_exactly(arrays):
    base, students, indeps = arrays
    assert rfd_hierarchical(base, students[1], indeps[:1]) == rfd(base, students[1], indeps[:1]).ci
    # identical models: resampling them changes nothing, and the inputs are rfd's own (common random numbers)
    same = [students[1]] * 3
    assert rfd_hierarchical(base, same, [indeps[0]] * 2, metric="js") == rfd(base, same, [indeps[0]] * 2,
                                                                              metric="js").ci


@pytest.mark.parametrize("metric", ["disagreement", "js"])
def test_models_that_differ_widen_the_interval_around_the_point(arrays, metric):
    base, students, indeps = arrays
    r = rfd(base, students, indeps, metric=metric)
    lo, hi = rfd_hierarchical(base, students, indeps, metric=metric)
    assert lo <= r.rfd <= hi
    assert hi - lo > 1.5 * (r.ci[1] - r.ci[0])      # the seeds' spread is far larger than the inputs'
    assert lo <= r.ci[0] and hi >= r.ci[1]
    assert rfd_hierarchical(base, students, indeps, metric=metric) == (lo, hi)   # one seed, the same draws


def test_a_population_of_one_is_its_members_rfd_and_several_spread(arrays):
    base, students, indeps = arrays
    one = population_rfd_hierarchical([(base, students[0], indeps)])
    alone = rfd(base, students[0], indeps)
    assert one == (pytest.approx(alone.rfd), alone.ci)
    # every member against its own parent: the base's and an independent's compressed copies
    members = [(base, students[0], indeps), (indeps[0], _noisy_copy(indeps[0], 0.4, np.random.default_rng(1)),
                                             [base, indeps[1]])]
    point, (lo, hi) = population_rfd_hierarchical(members)
    assert lo <= point <= hi and hi - lo > alone.ci[1] - alone.ci[0]


HIER_STUDY = """
name = "hier"
seeds = [0, 1, 2]
quantize = ["8-bit"]
prune = [0.7]
compress_all_seeds = true
[data]
dataset = "digits"
[train]
epochs = 2
lr = 0.02
[distill]
alphas = [0.5]
seeds = [2, 24, 42]
control = false
"""


def test_a_digits_study_reports_both_intervals_and_says_the_yardstick_is_rough(tmp_path):
    (tmp_path / "hier.toml").write_text(HIER_STUDY)
    r = run_cli("study", str(tmp_path / "hier.toml"), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    s = json.loads(paths.summary_file(tmp_path / "out").read_text())
    rows = {r["setting"]: r for r in s["rows"]}
    students = rows["alpha=0.5"]
    lo, hi = students["rfd_ci_hier"]
    assert students["rfd_hier"] == students["rfd"] and lo <= students["rfd"] <= hi
    assert hi - lo >= students["rfd_ci"][1] - students["rfd_ci"][0]
    pruned = rows["70%"]          # a population of three: the base's and each independent's pruned copy
    assert pruned["population"] == 3
    plo, phi = pruned["rfd_ci_hier"]
    assert plo <= pruned["rfd_hier"] <= phi and pruned["rfd_hier"] != pruned["rfd"]
    md = paths.report_md(tmp_path / "out").read_text()
    assert "RFD, models then inputs [95% CI]" in md
    assert "with 2 independent models the yardstick's spread is rough" in md
    csv_head = paths.distance_table(tmp_path / "out", "csv").read_text().splitlines()[0].split(",")
    assert csv_head[16:19] == ["rfd_hier", "rfd_hier_lo", "rfd_hier_hi"]


def test_the_rows_models_and_the_independents_are_drawn_apart_even_when_as_many():
    rng = np.random.default_rng(3)
    base = rng.dirichlet(np.ones(5) * 0.3, 2000)
    students = [_noisy_copy(base, m, rng) for m in (0.1, 0.3)]
    indeps = [_noisy_copy(base, m, rng) for m in (0.4, 0.9)]
    # drawn together, each replicate would pair a near student with a near independent (RFD 0.25 to 0.33);
    # drawn apart, the near student over the far yardstick and the far student over the near one both occur
    lo, hi = rfd_hierarchical(base, students, indeps)
    assert lo < 0.2 and hi > 0.6
