"""funclens.rfd: RFD's point value against hand ratios, its interval, p-value, verdicts, and the yardstick."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from handcalc import hand_distance, random_probs, softmax, study

from funclens.metrics import MetricsError, per_example
from funclens.rfd import (
    INDEPENDENT_ABOVE, PRESERVE_BELOW, RFD, _boot_means, independent_reference, rfd, verdict,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.mark.parametrize("metric", ["disagreement", "js", "hellinger"])
def test_rfd_point_is_the_hand_ratio_and_ci_contains_it(rng, metric):
    base, indep, _ = study(rng)
    model = softmax(np.log(base) + 0.8 * rng.standard_normal(base.shape))
    out = rfd(base, model, indep, metric=metric, n_boot=300, seed=3)
    num = hand_distance(base, model, metric)
    den = np.mean([hand_distance(base, i, metric) for i in indep])
    assert isinstance(out, RFD)
    assert out.distance == pytest.approx(num, rel=1e-9)
    assert out.reference == pytest.approx(den, rel=1e-9)
    assert out.rfd == pytest.approx(num / den, rel=1e-9)
    lo, hi = out.ci
    assert lo <= out.rfd <= hi
    assert hi - lo < 0.5 * out.rfd   # 2000 inputs pin it down
    assert rfd(base, model, indep, metric=metric, n_boot=300, seed=3) == out   # seeded


def test_several_models_enter_as_the_mean_of_their_distances(rng):
    base, indep, _ = study(rng, n=500)
    students = [softmax(np.log(base) + s * rng.standard_normal(base.shape)) for s in (0.5, 1.0, 1.5)]
    out = rfd(base, students, indep, metric="js", n_boot=200)
    assert out.distance == pytest.approx(np.mean([hand_distance(base, s, "js") for s in students]), rel=1e-9)
    # the same as one model whose per-input distances are the mean of the students' (a mean-aggregated metric)
    num = np.mean([per_example(base, s, "js") for s in students], axis=0)
    den = np.mean([per_example(base, i, "js") for i in indep], axis=0)
    assert out.rfd == pytest.approx(num.mean() / den.mean(), rel=1e-12)
    boot = _boot_means(np.stack([num, den]), 200, 0)
    ratios = boot[:, 0] / boot[:, 1]
    assert out.ci == pytest.approx((np.quantile(ratios, 0.025, method="lower"),
                                    np.quantile(ratios, 0.975, method="higher")), rel=1e-12)
    assert out.p_closer == pytest.approx((np.count_nonzero(boot[:, 0] >= boot[:, 1]) + 1) / 201)
    assert rfd(base, np.stack(students), indep, metric="js", n_boot=200) == out   # a stack [S, N, C] too


def test_interval_does_not_depend_on_other_models(rng):
    """Every model is resampled with the same inputs: a model's interval is the same alone or among others."""
    base, indep, compressed = study(rng, n=400)
    other = softmax(np.log(base) + rng.standard_normal(base.shape))
    alone = rfd(base, compressed, indep)
    rfd(base, other, indep)                       # another row first changes nothing
    assert rfd(base, compressed, indep) == alone
    assert rfd(base, compressed, indep, seed=1).ci != alone.ci   # while the seed does matter


def test_rfd_of_a_copy_is_zero_and_of_an_independent_about_one(rng):
    base, indep, _ = study(rng, k=4)
    copy = rfd(base, base, indep, n_boot=200)
    assert copy.rfd == 0.0 and copy.verdict == "preserves" and copy.p_closer == pytest.approx(1 / 201)
    out = rfd(base, indep[0], indep[1:], n_boot=200)
    assert 0.8 < out.rfd < 1.25
    assert out.ci[0] < 1.0 < out.ci[1]


def test_degenerate_reference_is_undetermined_and_valid_json(rng):
    base, _, compressed = study(rng, n=200)
    moved = rfd(base, compressed.copy(), [base.copy()], metric="js", n_boot=50)
    assert moved.reference == 0.0 and moved.rfd == math.inf and moved.ci == (math.inf, math.inf)
    same = rfd(base, base.copy(), [base.copy()], metric="js", n_boot=50)
    assert math.isnan(same.rfd) and all(math.isnan(v) for v in same.ci)
    for r in (moved, same):
        assert r.verdict == "undetermined" and "agree with the base on every one of the 200" in r.reason
        row = r.to_json()
        assert row["rfd"] is None and row["rfd_ci"] == [None, None] and row["verdict_reason"] == r.reason
        json.dumps(row, allow_nan=False)   # raises on NaN or inf
    with pytest.raises(MetricsError, match="at least one independent"):
        rfd(base, base, [])


def test_bad_arguments_raise_metrics_error(rng):
    base, indep, _ = study(rng, n=50)
    with pytest.raises(MetricsError, match="unknown metric"):
        rfd(base, base, indep, metric="cosine")
    with pytest.raises(MetricsError, match="n_boot"):
        rfd(base, base, indep, n_boot=0)
    with pytest.raises(MetricsError, match="ci"):
        rfd(base, base, indep, ci=1.0)
    with pytest.raises(MetricsError, match="shapes differ"):
        rfd(base, base[:10], indep)


def test_p_closer(rng):
    base, indep, compressed = study(rng, k=3)
    assert rfd(base, compressed, indep, n_boot=500).p_closer == pytest.approx(1 / 501)   # never at the reference
    # another model from the independents' generator: not significantly closer
    another = softmax(0.6 * np.log(base) + 2.5 * rng.standard_normal(base.shape))
    assert rfd(base, another, indep, n_boot=500).p_closer > 0.05
    # a model that shares nothing with the base is farther than the independents: p near 1
    unrelated = random_probs(rng, *base.shape, scale=3.0)
    assert rfd(base, unrelated, indep, n_boot=500, metric="js").p_closer > 0.5


def test_independent_reference_by_hand(rng):
    base, indep, _ = study(rng, n=300, k=3)
    ref = independent_reference(base, indep, "tv")
    d = [hand_distance(base, i, "tv") for i in indep]
    assert ref["pairs"] == 3
    assert ref["mean"] == pytest.approx(np.mean(d), rel=1e-9)
    assert ref["std"] == pytest.approx(np.std(d, ddof=1), rel=1e-9)
    models = [base] + indep
    between = [hand_distance(a, b, "tv") for i, a in enumerate(models) for j, b in enumerate(models) if i < j]
    assert ref["between"] == pytest.approx(np.mean(between), rel=1e-5)
    one = independent_reference(base, indep[:1], "tv")
    assert one["std"] == 0.0 and one["between"] == pytest.approx(d[0], rel=1e-5)


def test_verdict_thresholds():
    assert (PRESERVE_BELOW, INDEPENDENT_ABOVE) == (0.5, 0.8)
    assert verdict([0.0, 0.49]) == "preserves"
    assert verdict([0.1, 0.5]) == "partial"              # strict: the whole interval must lie below
    assert verdict([0.81, 1.3]) == "independent-like"
    assert verdict([0.81, math.inf]) == "independent-like"
    assert verdict([0.8, 1.3]) == "partial"
    assert verdict([0.3, 0.9]) == "partial"
    assert verdict([0.2, 0.6], preserve_below=0.7) == "preserves"
    assert verdict([float("nan"), float("nan")]) == "undetermined"
    assert verdict([None, 0.3]) == "undetermined"
