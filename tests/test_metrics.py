"""funclens.metrics against hand computations (explicit loops, scipy), on small synthetic predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from handcalc import hand_distance, hand_per_example, random_probs, with_zeros
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy

from funclens.errors import FunclensError
from funclens.metrics import (
    KL_EPS, METRICS, MetricsError, accuracy, accuracy_deviation, check_metric, check_predictions, check_same_shape,
    distance, per_example, require_probabilities,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# ---------------------------------------------------------------------------------------------------------------
# per input and mean distances


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_identical_inputs_give_zero(rng, metric, dtype):
    p = with_zeros(random_probs(rng, 40, 7)).astype(dtype)
    assert np.all(per_example(p, p, metric) == 0.0)
    assert distance(p, p, metric) == 0.0


def test_disjoint_one_hot_inputs_are_maximally_apart():
    p = np.eye(4)
    q = np.eye(4)[[1, 2, 3, 0]]
    for metric in ("disagreement", "js", "tv", "hellinger"):
        assert distance(p, q, metric) == pytest.approx(1.0, abs=1e-12), metric
    # KL is finite thanks to the floor: log(1 / KL_EPS) nats per input
    assert distance(p, q, "kl") == pytest.approx(-math.log(KL_EPS))


def test_js_matches_scipy(rng):
    p, q = with_zeros(random_probs(rng, 30, 6)), random_probs(rng, 30, 6)
    q[2, :3] = 0.0
    q /= q.sum(axis=1, keepdims=True)
    expected = np.array([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q)])
    np.testing.assert_allclose(per_example(p, q, "js"), expected, rtol=1e-9, atol=1e-12)
    assert distance(p, q, "js") == pytest.approx(expected.mean(), rel=1e-9)
    assert np.all((expected >= 0) & (expected <= 1))


def test_js_by_explicit_loop():
    # m = (p+q)/2; JS = 0.5 KL(p||m) + 0.5 KL(q||m), bits, 0 log 0 = 0
    p = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    q = np.array([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]])
    expected = []
    for a, b in zip(p, q):
        js = 0.0
        for x, y in zip(a, b):
            m = (x + y) / 2
            if x > 0:
                js += 0.5 * x * math.log2(x / m)
            if y > 0:
                js += 0.5 * y * math.log2(y / m)
        expected.append(js)
    np.testing.assert_allclose(per_example(p, q, "js"), expected, atol=1e-12)
    assert expected[0] == pytest.approx(0.5)


def test_kl_matches_scipy_entropy(rng):
    p, q = random_probs(rng, 25, 5), random_probs(rng, 25, 5)   # strictly positive, well above KL_EPS
    expected = np.array([entropy(a, b) for a, b in zip(p, q)])
    np.testing.assert_allclose(per_example(p, q, "kl"), expected, rtol=1e-9)
    assert distance(p, q, "kl") == pytest.approx(expected.mean(), rel=1e-9)
    # not symmetric
    assert distance(p, q, "kl") != pytest.approx(distance(q, p, "kl"), rel=1e-6)


def test_kl_floor_keeps_zero_probabilities_finite():
    p = np.array([[0.5, 0.5]])
    q = np.array([[1.0, 0.0]])
    assert distance(p, q, "kl") == pytest.approx(0.5 * math.log(0.5 / 1.0) + 0.5 * math.log(0.5 / KL_EPS))
    assert distance(q, p, "kl") == pytest.approx(math.log(2.0))    # 0 log 0 = 0


@pytest.mark.parametrize("metric", METRICS)
def test_per_example_matches_hand_loop(rng, metric):
    p, q = with_zeros(random_probs(rng, 20, 5)), random_probs(rng, 20, 5)
    np.testing.assert_allclose(per_example(p, q, metric), hand_per_example(p, q, metric), rtol=1e-9, atol=1e-12)
    assert distance(p, q, metric) == pytest.approx(hand_distance(p, q, metric), rel=1e-9)


@pytest.mark.parametrize("metric", METRICS)
def test_float16_input_is_computed_in_higher_precision(rng, metric):
    p16 = random_probs(rng, 50, 10).astype(np.float16)
    q16 = random_probs(rng, 50, 10).astype(np.float16)
    got = distance(p16, q16, metric)
    assert got == pytest.approx(hand_distance(p16.astype(np.float64), q16.astype(np.float64), metric), rel=1e-9)


def test_bad_inputs_raise_metrics_error(rng):
    p = random_probs(rng, 5, 3)
    assert issubclass(MetricsError, FunclensError)
    with pytest.raises(MetricsError, match="unknown metric"):
        distance(p, p, "cosine")
    with pytest.raises(MetricsError, match="shapes differ"):
        distance(p, p[:4])
    with pytest.raises(MetricsError, match="2-D"):
        per_example(p[0], p[0], "tv")


# ---------------------------------------------------------------------------------------------------------------
# accuracy


def test_accuracy_and_deviation():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]], dtype=np.float16)
    assert accuracy(probs, np.array([0, 1, 1, 1])) == 0.75
    assert accuracy_deviation(0.75, 0.75) == 0.0
    assert accuracy_deviation(0.5, 0.8) == pytest.approx(-37.5)
    # the paper's LeNet CIFAR-10 90% pruning: 13.6% from a 63.2% base
    assert accuracy_deviation(0.136, 0.632) == pytest.approx(-78.48, abs=0.01)
    assert math.isnan(accuracy_deviation(0.5, 0.0))
    with pytest.raises(MetricsError):
        accuracy(probs, np.array([0, 1]))


# ---------------------------------------------------------------------------------------------------------------
# checks on user input


def test_check_predictions_accepts_probabilities(rng):
    p = random_probs(rng, 20, 4).astype(np.float16)
    out = check_predictions(p, "a.npy")
    assert out.dtype == np.float32 and out.shape == (20, 4)
    np.testing.assert_allclose(out, p.astype(np.float64), atol=2e-3)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)


def test_check_predictions_converts_logits():
    logits = np.array([[1.0, 2.0, 3.0], [-1000.0, 0.0, 1000.0]])   # the second row overflows a naive softmax
    out = check_predictions(logits, "logits.npy")
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(out[0], e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(out[1], [0.0, 0.0, 1.0])
    assert out.dtype == np.float32


@pytest.mark.parametrize("arr, problem", [
    (np.array([[0.5, np.nan], [0.5, 0.5]]), "NaN"),
    (np.array([[0.5, np.inf], [0.5, 0.5]]), "infinite"),
    (np.array([0.2, 0.8]), "2-D"),
    (np.zeros((2, 3, 4)), "2-D"),
    (np.array([["a", "b"]]), "numeric"),
    (np.zeros((0, 3)), "at least"),
    (np.ones((3, 1)), "at least"),
    (np.array([[0.5, 0.5], [0.2, 0.3], [0.1, 0.9]]), "do not sum to 1"),
])
def test_check_predictions_rejects(arr, problem):
    with pytest.raises(MetricsError, match=problem) as err:
        check_predictions(arr, "runs/x/preds/ep_003.npy")
    msg = str(err.value)
    assert msg.startswith("runs/x/preds/ep_003.npy: ") and "\n" not in msg


def test_check_same_shape_names_the_files():
    check_same_shape({"a.npy": np.zeros((5, 3)), "b.npy": np.zeros((5, 3))})
    with pytest.raises(MetricsError) as err:
        check_same_shape({"a.npy": np.zeros((5, 3)), "b.npy": np.zeros((5, 3)), "c.npy": np.zeros((4, 3))})
    msg = str(err.value)
    assert "a.npy" in msg and "c.npy" in msg and "b.npy" not in msg and "\n" not in msg


def test_check_metric_names_the_known_metrics():
    check_metric("kl")
    with pytest.raises(MetricsError, match="unknown metric 'foo'; known: disagreement, js"):
        check_metric("foo")


def test_library_refuses_logits_everywhere():
    # total variation of logits came out as 175.8, where it cannot exceed 1: every entry point must refuse
    from funclens.pairwise import pairwise, sqrt_gram
    from funclens.rfd import independent_reference, rfd

    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 50.0, (20, 10))
    probs = check_predictions(logits, "logits")
    other = check_predictions(rng.normal(0.0, 50.0, (20, 10)), "other")
    calls = [lambda: distance(probs, logits, "tv"), lambda: distance(logits, probs),
             lambda: per_example(probs, logits, "js"),
             lambda: accuracy(logits, np.zeros(20, dtype=int)), lambda: rfd(probs, logits, [other], n_boot=9),
             lambda: rfd(probs, other, [logits], n_boot=9), lambda: independent_reference(probs, [logits]),
             lambda: pairwise([probs, logits], "tv"), lambda: sqrt_gram(np.stack([probs, logits]))]
    for call in calls:
        with pytest.raises(MetricsError, match="check_predictions"):
            call()
    assert 0.0 <= distance(probs, other, "tv") <= 1.0     # after check_predictions they compare fine


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_require_probabilities(dtype):
    p = np.array([[0.25, 0.75], [1.0, 0.0]], dtype=dtype)
    assert require_probabilities(p) is p                        # unchanged, not copied
    assert require_probabilities(np.array([[-0.0, 1.0]], dtype=dtype)).shape == (1, 2)
    with pytest.raises(MetricsError, match="outside"):
        require_probabilities(np.array([[1.5, -0.5]], dtype=dtype))
    with pytest.raises(MetricsError, match="do not sum to 1"):
        require_probabilities(np.array([[0.2, 0.2]], dtype=dtype))
    with pytest.raises(MetricsError, match="NaN"):
        require_probabilities(np.array([[np.nan, 1.0]], dtype=dtype))
    with pytest.raises(MetricsError, match="2-D"):
        require_probabilities(np.ones(3, dtype=dtype))
