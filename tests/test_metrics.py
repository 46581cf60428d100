"""funclens.metrics against hand computations (explicit loops, scipy), on small synthetic predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy

from funclens.config import FunclensError
from funclens.metrics import (
    INDEPENDENT_ABOVE, KL_EPS, METRICS, PRESERVE_BELOW, MetricsError, accuracy, accuracy_deviation,
    check_predictions, check_same_shape, closer_than_independent, distance, independent_reference, pairwise,
    per_example, ratio_bootstrap, rfd, verdict,
)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def random_probs(rng: np.random.Generator, *shape: int, scale: float = 2.0) -> np.ndarray:
    return softmax(scale * rng.standard_normal(shape))


def with_zeros(p: np.ndarray) -> np.ndarray:
    """Some exact zeros, as float16 storage produces, rows renormalised."""
    p = p.copy()
    p[: len(p) // 3, 0] = 0.0
    p[1, :] = 0.0
    p[1, 2] = 1.0
    return p / p.sum(axis=1, keepdims=True)


# hand references: one input at a time, plain Python where possible

def hand_per_example(p: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    out = []
    for a, b in zip(p.astype(np.float64), q.astype(np.float64)):
        if metric == "disagreement":
            out.append(float(int(np.argmax(a)) != int(np.argmax(b))))
        elif metric == "js":   # 0.5 KL(a||m) + 0.5 KL(b||m) in bits, 0 log 0 = 0, rows taken as given
            out.append(sum(0.5 * x * math.log2(2 * x / (x + y)) for x, y in zip(a, b) if x > 0)
                       + sum(0.5 * y * math.log2(2 * y / (x + y)) for x, y in zip(a, b) if y > 0))
        elif metric == "kl":
            out.append(sum(x * (math.log(max(x, KL_EPS)) - math.log(max(y, KL_EPS))) for x, y in zip(a, b) if x > 0))
        elif metric == "tv":
            out.append(0.5 * sum(abs(x - y) for x, y in zip(a, b)))
        elif metric == "hellinger":
            out.append(math.sqrt(0.5 * sum((math.sqrt(x) - math.sqrt(y)) ** 2 for x, y in zip(a, b))))
    return np.array(out)


def hand_distance(p: np.ndarray, q: np.ndarray, metric: str) -> float:
    v = hand_per_example(p, q, metric)
    return float(np.sqrt(np.mean(v ** 2))) if metric == "hellinger" else float(np.mean(v))


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
    assert np.all(pairwise([p, p, p], metric) == 0.0)


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
# pairwise


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
        preds[i] = rng.random((2000, 100), dtype=np.float32)
    d = pairwise(preds, "disagreement")
    assert d.shape == (300, 300)
    assert np.all(np.diag(d) == 0.0)
    assert 0.95 < d[0, 1] <= 1.0   # random top-1 labels agree 1 time in 100


# ---------------------------------------------------------------------------------------------------------------
# RFD, p-values, the reference


def study(rng: np.random.Generator, n: int = 2000, c: int = 10, k: int = 3):
    """Synthetic study: a base, k independents that share part of its function, a slightly perturbed copy."""
    z = 3.0 * rng.standard_normal((n, c))
    base = softmax(z)
    independents = [softmax(0.6 * z + 2.5 * rng.standard_normal((n, c))) for _ in range(k)]
    noisy = base + 0.01 * rng.random((n, c))
    compressed = noisy / noisy.sum(axis=1, keepdims=True)
    return base, independents, compressed


@pytest.mark.parametrize("metric", ["disagreement", "js", "hellinger"])
def test_rfd_point_is_the_hand_ratio_and_ci_contains_it(rng, metric):
    base, indep, compressed = study(rng)
    model = softmax(np.log(base) + 0.8 * rng.standard_normal(base.shape))
    out = rfd(base, model, indep, metric=metric, n_boot=300, seed=3)
    num = hand_distance(base, model, metric)
    den = np.mean([hand_distance(base, i, metric) for i in indep])
    assert out["distance"] == pytest.approx(num, rel=1e-9)
    assert out["reference"] == pytest.approx(den, rel=1e-9)
    assert out["rfd"] == pytest.approx(num / den, rel=1e-9)
    lo, hi = out["ci"]
    assert lo <= out["rfd"] <= hi
    assert hi - lo < 0.5 * out["rfd"]   # 2000 inputs pin it down
    assert rfd(base, model, indep, metric=metric, n_boot=300, seed=3) == out   # seeded


def test_rfd_of_a_copy_is_zero_and_of_an_independent_about_one(rng):
    base, indep, _ = study(rng, k=4)
    assert rfd(base, base, indep, n_boot=200)["rfd"] == 0.0
    out = rfd(base, indep[0], indep[1:], n_boot=200)
    assert 0.8 < out["rfd"] < 1.25
    assert out["ci"][0] < 1.0 < out["ci"][1]


def test_rfd_with_degenerate_reference_does_not_crash(rng):
    base, _, compressed = study(rng, n=200)
    out = rfd(base, compressed.copy(), [base.copy()], metric="js", n_boot=50)
    assert out["reference"] == 0.0 and out["rfd"] == math.inf
    assert out["ci"] == [math.inf, math.inf]
    out = rfd(base, base.copy(), [base.copy()], metric="js", n_boot=50)
    assert math.isnan(out["rfd"]) and all(math.isnan(v) for v in out["ci"])
    assert verdict(out["ci"]) == "partial"
    with pytest.raises(MetricsError, match="at least one independent"):
        rfd(base, base, [])


def test_closer_than_independent(rng):
    base, indep, compressed = study(rng, k=3)
    p_close = closer_than_independent(base, compressed, indep, n_boot=500)
    assert p_close == pytest.approx(1 / 501)            # never a replicate at or beyond the reference
    # another model from the independents' generator: not significantly closer
    z = np.log(base)
    another = softmax(0.6 * z + 2.5 * rng.standard_normal(base.shape))
    assert closer_than_independent(base, another, indep, n_boot=500) > 0.05
    # a model that shares nothing with the base is farther than the independents: p near 1
    unrelated = random_probs(rng, *base.shape, scale=3.0)
    assert closer_than_independent(base, unrelated, indep, n_boot=500, metric="js") > 0.5


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


# ---------------------------------------------------------------------------------------------------------------
# accuracy, verdict


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


def test_verdict_thresholds():
    assert (PRESERVE_BELOW, INDEPENDENT_ABOVE) == (0.5, 0.8)
    assert verdict([0.0, 0.49]) == "preserves"
    assert verdict([0.1, 0.5]) == "partial"              # strict: the whole interval must lie below
    assert verdict([0.81, 1.3]) == "independent-like"
    assert verdict([0.8, 1.3]) == "partial"
    assert verdict([0.3, 0.9]) == "partial"
    assert verdict([0.2, 0.6], preserve_below=0.7) == "preserves"
    assert verdict([float("nan"), float("nan")]) == "partial"


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


def test_ratio_bootstrap_agrees_with_rfd(rng):
    base, indep, compressed = study(rng, n=500, k=2)
    num = per_example(base, compressed, "js")
    den = np.mean([per_example(base, i, "js") for i in indep], axis=0)
    r = ratio_bootstrap(num, den, n_boot=200, seed=5)
    full = rfd(base, compressed, indep, metric="js", n_boot=200, seed=5)
    assert r["ratio"] == pytest.approx(num.mean() / den.mean(), rel=1e-12)
    assert r["ratio"] == pytest.approx(full["rfd"], rel=1e-12)
    np.testing.assert_allclose(r["ci"], full["ci"], rtol=1e-9)
    assert r["p_less_than_one"] == pytest.approx(
        closer_than_independent(base, compressed, indep, metric="js", n_boot=200, seed=5))
    with pytest.raises(MetricsError):
        ratio_bootstrap(num, den[:10])
