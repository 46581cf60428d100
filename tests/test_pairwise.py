"""funclens.pairwise: every all-pairs kernel against a loop over pairs of the one-pair distance."""

from __future__ import annotations

import numpy as np
import pytest
from handcalc import hand_distance, random_probs, with_zeros

from funclens.metrics import METRICS, MetricsError
from funclens.pairwise import pairwise, sqrt_gram


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_pairwise_equals_loop_over_pairs(rng, metric, chunk):
    m = 7   # no chunk size above divides it
    preds = [with_zeros(random_probs(rng, 60, 6)).astype(np.float16) for _ in range(m)]
    preds[4] = preds[2].copy()   # an exact duplicate pair
    got = pairwise(preds, metric, chunk=chunk)
    expected = np.array([[hand_distance(preds[i], preds[j], metric) if i != j else 0.0 for j in range(m)]
                         for i in range(m)])
    assert got.shape == (m, m) and got.dtype == np.float64
    # float32 kernels (js, tv, hellinger) against float64 loops
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-6)
    # and the same through the stacked-array input
    np.testing.assert_array_equal(pairwise(np.stack(preds), metric, chunk=chunk), got)


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_symmetric_with_zero_diagonal(rng, metric):
    preds = random_probs(rng, 9, 40, 5).astype(np.float32)
    d = pairwise(preds, metric, chunk=4)
    assert np.all(np.diag(d) == 0.0)
    assert np.all(d >= 0.0)
    if metric != "kl":
        assert np.array_equal(d, d.T)


def test_pairwise_rejects_mismatched_shapes(rng):
    with pytest.raises(MetricsError, match=r"predictions\[1\]"):
        pairwise([random_probs(rng, 10, 3), random_probs(rng, 9, 3)])
    with pytest.raises(MetricsError, match="chunk"):
        pairwise([random_probs(rng, 10, 3)] * 2, chunk=0)


def test_pairwise_disagreement_300_models_completes():
    # the study's scale in models (300 checkpoints), a fifth of CIFAR-100's test set; argmax is all that matters
    rng = np.random.default_rng(0)
    preds = np.empty((300, 2000, 100), dtype=np.float16)
    for i in range(len(preds)):
        r = rng.random((2000, 100), dtype=np.float32)
        preds[i] = r / r.sum(axis=1, keepdims=True)   # probabilities: pairwise refuses anything else
    d = pairwise(preds, "disagreement")
    assert d.shape == (300, 300)
    assert np.all(np.diag(d) == 0.0)
    assert 0.95 < d[0, 1] <= 1.0   # random top-1 labels agree 1 time in 100


@pytest.mark.parametrize("metric", ["js", "tv", "kl", "hellinger"])
def test_pairwise_stays_accurate_for_near_identical_models(rng, metric):
    # a compressed copy sits ~1e-4..1e-3 from its base; the fast kernels must not drown that in rounding
    base = random_probs(rng, 300, 10)
    others = [random_probs(rng, 300, 10) for _ in range(4)]
    near = base * (1 + 1e-3 * rng.standard_normal(base.shape))
    near /= near.sum(axis=1, keepdims=True)
    preds = [p.astype(np.float16) for p in [base, near, *others]]
    exact = hand_distance(preds[0], preds[1], metric)
    assert 0 < exact < 1e-3
    assert pairwise(preds, metric)[0, 1] == pytest.approx(exact, rel=1e-3)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_identical_models_are_exactly_zero_apart(rng, dtype):
    p = with_zeros(random_probs(rng, 40, 7)).astype(dtype)
    for metric in METRICS:
        assert np.all(pairwise([p, p, p], metric) == 0.0), metric


def test_sqrt_gram_gives_hellinger_distances(rng):
    preds = [random_probs(rng, 50, 4) for _ in range(3)]
    g = sqrt_gram(preds)
    d2 = g[0, 0] + g[1, 1] - 2 * g[0, 1]
    assert d2 == pytest.approx(2 * 50 * hand_distance(preds[0], preds[1], "hellinger") ** 2, rel=1e-9)
