"""Functional distance between two prediction arrays: accuracy, per-input and mean distances, and the checks
that user-supplied predictions must pass. All pairs at once: :mod:`funclens.pairwise`; RFD, its interval and
verdicts: :mod:`funclens.rfd`.

Pure functions of arrays: nothing here opens a file or builds a model. Predictions are softmax arrays
``[N, C]`` in test-set order, float16 as stored or float32; every computation runs in float32 or float64.

Every public function here, in :mod:`funclens.rfd` and in :mod:`funclens.pairwise` checks the predictions it is
given with :func:`require_probabilities`: 2-D, finite, every value in [0, 1], every row summing to 1 within
1e-2. Logits are refused with a :class:`MetricsError`, never computed on: a distance of logits is a number
with no meaning (total variation of 175 where it cannot exceed 1). Pass them through :func:`check_predictions`
first, which turns logits into probabilities with a softmax, as ``funclens compare`` does.

Metrics (``METRICS``), each per test input, then averaged over the N inputs:

- ``disagreement``: 1 if the top-1 classes differ, else 0 (ties go to the lowest class index, as ``argmax``).
- ``js``: Jensen-Shannon divergence in bits, in [0, 1].
- ``kl``: ``KL(p || q)`` in nats; both distributions are floored at ``KL_EPS`` inside the logarithm. Rows are
  taken as given (stored float16 rows sum to 1 only within ~1e-3), so values near 0 can come out slightly
  negative.
- ``tv``: total variation, ``0.5 * sum |p - q|``, in [0, 1].
- ``hellinger``: per input ``sqrt(0.5 * ||sqrt p - sqrt q||^2)``, in [0, 1]. Its aggregate is the *root mean
  square* over inputs, not the mean: that is the Hellinger distance between the joint distributions
  ``(uniform input, predicted label)``, a true metric, and exactly what one Gram matrix of sqrt-probabilities
  gives for all pairs at once (see :func:`funclens.pairwise.pairwise` and :mod:`funclens.landscape`).

Example:
    >>> import numpy as np
    >>> p = np.array([[0.9, 0.1], [0.2, 0.8]]); q = np.array([[0.6, 0.4], [0.7, 0.3]])
    >>> distance(p, q)                     # top-1 differs on the second input only
    0.5
    >>> round(distance(p, q, "tv"), 2)
    0.4
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from funclens.errors import MetricsError

METRICS = ("disagreement", "js", "kl", "tv", "hellinger")
# What each metric's number is, for axis labels and table heads.
METRIC_UNITS = {"disagreement": "fraction of test inputs whose top-1 class differs",
                "js": "Jensen-Shannon divergence, bits, mean over inputs",
                "kl": "KL divergence, nats, mean over inputs",
                "tv": "total variation, mean over inputs", "hellinger": "Hellinger distance, RMS over inputs"}

# Floor for probabilities inside KL's logarithm. Stored float16 softmax cannot hold values below about 6e-8
# (its smallest subnormal), so probabilities under 1e-7 carry no information; the floor turns a class the model
# gives "zero" probability into a cost of at most -log(1e-7) = 16.1 nats instead of infinity. It is applied to
# p as well as q so that KL(p || p) is exactly 0.
KL_EPS = 1e-7
# Tolerance on row sums for an array to count as probabilities: float16 storage alone drifts by about 1e-3.
_PROB_SUM_TOL = 1e-2


# ---------------------------------------------------------------------------------------------------------------
# validation


def check_metric(metric: str, allowed: Sequence[str] = METRICS) -> None:
    """Raise unless ``metric`` is one of ``allowed``.

    Args:
        metric: a metric name, e.g. from the command line.
        allowed: the names accepted.

    Raises:
        MetricsError: one line naming the known metrics.

    Example:
        >>> check_metric("js")
    """
    if metric not in allowed:
        raise MetricsError(f"unknown metric {metric!r}; known: {', '.join(allowed)}")


def _pair(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, q = np.asarray(p), np.asarray(q)
    if p.ndim != 2 or q.ndim != 2:
        raise MetricsError(f"predictions must be 2-D [N, C], got shapes {p.shape} and {q.shape}")
    if p.shape != q.shape:
        raise MetricsError(f"prediction shapes differ: {p.shape} vs {q.shape}")
    return require_probabilities(p, "the first predictions"), require_probabilities(q, "the second predictions")


def _out_of_unit(a: np.ndarray) -> bool:
    """Whether any value of ``a`` is NaN, infinite, below 0 or above 1 (-0.0 counts as 0)."""
    if a.dtype == np.float16:
        # on the bits: 0x3C00 is 1.0, larger patterns are larger numbers, NaN, inf or negative (sign bit set);
        # a uint16 comparison is about 2x faster than converting to float32 first (measured, 10,000 x 100)
        u = a.view(np.uint16)
        return bool(np.any((u > 0x3C00) & (u != 0x8000)))
    with np.errstate(invalid="ignore"):
        return not bool(np.all((a >= 0) & (a <= 1)))


def require_probabilities(arr: np.ndarray, name: str = "predictions") -> np.ndarray:
    """Return ``arr`` unchanged if it holds probabilities ``[N, C]``; raise otherwise.

    Probabilities: a numeric 2-D array with at least one row and two classes, every value finite and in
    [0, 1], every row summing to 1 within 1e-2 (stored float16 rows drift by about 1e-3). Unlike
    :func:`check_predictions` nothing is converted: logits are refused.

    Args:
        arr: the predictions (float16, float32 or float64).
        name: what to call the array in the error message.

    Raises:
        MetricsError: one line saying what is wrong; for logits, that they must go through
            :func:`check_predictions` (or a softmax) first.

    Example:
        >>> require_probabilities(np.array([[0.25, 0.75]])).shape
        (1, 2)
        >>> require_probabilities(np.array([[2.0, -1.0]]), "q")
        Traceback (most recent call last):
        ...
        funclens.errors.MetricsError: q: not probabilities (values outside [0, 1]: logits?); pass logits through funclens.metrics.check_predictions or a softmax first
    """
    a = np.asarray(arr)
    if a.dtype.kind not in "fiu":
        raise MetricsError(f"{name}: expected numeric predictions, got dtype {a.dtype}")
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] < 2:
        raise MetricsError(f"{name}: expected a 2-D array [N, C] with N >= 1 and C >= 2, got shape {a.shape}")
    hint = "pass logits through funclens.metrics.check_predictions or a softmax first"
    if _out_of_unit(a):
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise MetricsError(f"{name}: NaN or infinite values")
        raise MetricsError(f"{name}: not probabilities (values outside [0, 1]: logits?); {hint}")
    sums = a.sum(axis=1, dtype=np.float64)
    off = np.abs(sums - 1.0) > _PROB_SUM_TOL
    if off.any():
        worst = int(np.argmax(np.abs(sums - 1.0)))
        raise MetricsError(f"{name}: not probabilities ({int(off.sum())} of {len(a)} rows do not sum to 1; row "
                           f"{worst} sums to {sums[worst]:.4g}); {hint}")
    return a


def check_predictions(arr: np.ndarray, name: str) -> np.ndarray:
    """Validate a user-supplied prediction array and return it as float32 probabilities ``[N, C]``.

    Rows are taken as probabilities when every value lies in [0, 1] and every row sums to 1 within 1e-2; they
    are then renormalised to sum to 1 exactly. Any other finite array is taken as logits and turned into
    probabilities with a stable softmax. An array whose values all lie in [0, 1] with most rows summing to 1 but
    some not is refused: that is damaged probabilities, not logits.

    Args:
        arr: the array as loaded (any numeric dtype).
        name: what to call it in the error message, usually its file name.

    Returns:
        float32 probabilities of the same shape.

    Raises:
        MetricsError: one line naming ``name`` and the problem (not 2-D, empty, non-numeric, NaN or inf, ...).

    Example:
        >>> check_predictions(np.array([[2.0, 0.0], [0.0, 0.0]]), "logits.npy").round(3)
        array([[0.881, 0.119],
               [0.5  , 0.5  ]], dtype=float32)
    """
    a = np.asarray(arr)
    if a.dtype.kind not in "fiu":
        raise MetricsError(f"{name}: expected numeric predictions, got dtype {a.dtype}")
    if a.ndim != 2:
        raise MetricsError(f"{name}: expected a 2-D array [N, C] of probabilities or logits, got shape {a.shape}")
    n, c = a.shape
    if n == 0 or c < 2:
        raise MetricsError(f"{name}: expected at least 1 row and 2 classes, got shape {a.shape}")
    x = a.astype(np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        n_nan = int(np.isnan(x).sum())
        raise MetricsError(f"{name}: {n_nan} NaN and {int((~finite).sum()) - n_nan} infinite values "
                           f"(first at row {int(np.argwhere(~finite)[0, 0])})")
    if x.min() >= 0.0 and x.max() <= 1.0:
        sums = x.sum(axis=1)
        off = np.abs(sums - 1.0) > _PROB_SUM_TOL
        if not off.any():
            return (x / sums[:, None]).astype(np.float32)
        if off.mean() < 0.5:
            worst = int(np.argmax(np.abs(sums - 1.0)))
            raise MetricsError(f"{name}: looks like probabilities but {int(off.sum())} of {n} rows do not sum to 1 "
                               f"(row {worst} sums to {sums[worst]:.4g})")
    x -= x.max(axis=1, keepdims=True)   # stable softmax: the largest logit becomes exp(0)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    return x.astype(np.float32)


def check_same_shape(arrays: Mapping[str, np.ndarray]) -> None:
    """Raise unless every array has the same shape as the first.

    Args:
        arrays: name (e.g. file name) -> array; only ``.shape`` is read.

    Raises:
        MetricsError: naming the first array and every one whose shape differs from it.

    Example:
        >>> check_same_shape({"a.npy": np.zeros((5, 10)), "b.npy": np.zeros((5, 10))})   # passes silently
    """
    items = list(arrays.items())
    if not items:
        return
    first, ref = items[0][0], np.shape(items[0][1])
    bad = [f"{name} has {np.shape(a)}" for name, a in items[1:] if np.shape(a) != ref]
    if bad:
        raise MetricsError(f"prediction shapes differ: {first} has {ref}, but " + ", ".join(bad))


# ---------------------------------------------------------------------------------------------------------------
# one pair of models


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of inputs whose top-1 class equals the label.

    Args:
        probs: ``[N, C]`` probabilities (checked as :func:`require_probabilities` does).
        labels: ``[N]`` integer class labels in the same order.

    Example:
        >>> accuracy(np.array([[0.9, 0.1], [0.3, 0.7]]), np.array([0, 0]))
        0.5
    """
    probs, labels = require_probabilities(probs), np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(probs):
        raise MetricsError(f"accuracy needs probs [N, C] and labels [N], got {probs.shape} and {labels.shape}")
    return float(np.mean(np.argmax(probs, axis=1) == labels))


def _terms(p: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """Per-input terms whose mean, passed through :func:`_finish`, is the distance. float64 ``[N]``.

    For every metric but hellinger these are the per-input distances; for hellinger they are their squares.
    """
    check_metric(metric)
    p, q = _pair(p, q)
    if metric == "disagreement":
        return (np.argmax(p, axis=1) != np.argmax(q, axis=1)).astype(np.float64)
    a, b = p.astype(np.float64), q.astype(np.float64)
    if metric == "tv":
        return 0.5 * np.abs(a - b).sum(axis=1)
    if metric == "hellinger":
        d = np.sqrt(np.maximum(a, 0.0)) - np.sqrt(np.maximum(b, 0.0))
        return np.clip(0.5 * (d * d).sum(axis=1), 0.0, 1.0)
    if metric == "kl":
        return (a * (np.log(np.maximum(a, KL_EPS)) - np.log(np.maximum(b, KL_EPS)))).sum(axis=1)
    # js: a log(a/m) + b log(b/m) with m = (a+b)/2; a zero probability contributes 0 (0 log 0 = 0): the floor
    # only keeps log finite where it is then multiplied by 0, since a > 0 implies m >= a/2 > 0.
    tiny = np.finfo(np.float64).tiny
    log_m = np.log(np.maximum(0.5 * (a + b), tiny))
    js = 0.5 * (a * (np.log(np.maximum(a, tiny)) - log_m) + b * (np.log(np.maximum(b, tiny)) - log_m)).sum(axis=1)
    return np.clip(js / math.log(2.0), 0.0, 1.0)


def _finish(metric: str, mean_terms: np.ndarray | float) -> np.ndarray | float:
    """Mean of the per-input terms -> the distance (root mean square for hellinger)."""
    return np.sqrt(np.maximum(mean_terms, 0.0)) if metric == "hellinger" else mean_terms


def per_example(p: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """Distance between two models on every test input, float64 ``[N]``.

    Args:
        p, q: ``[N, C]`` probabilities of two models on the same inputs (float16 or float32).
        metric: one of ``METRICS``; see the module docstring for definitions and units.

    Example:
        >>> per_example(np.array([[1.0, 0.0], [0.5, 0.5]]), np.array([[0.0, 1.0], [0.5, 0.5]]), "js")
        array([1., 0.])
    """
    t = _terms(p, q, metric)
    return np.sqrt(t) if metric == "hellinger" else t


def distance(p: np.ndarray, q: np.ndarray, metric: str = "disagreement") -> float:
    """Functional distance between two models: the mean of :func:`per_example` over inputs.

    For ``hellinger`` the aggregate is the root mean square of the per-input distances (the Hellinger distance of
    the joint distributions), so that it matches :func:`funclens.pairwise.pairwise` and stays a metric.

    Args:
        p, q: ``[N, C]`` probabilities of two models on the same inputs.
        metric: one of ``METRICS``.

    Example:
        >>> distance(np.eye(3), np.eye(3)[[0, 2, 1]])
        0.6666666666666666
    """
    return float(_finish(metric, float(np.mean(_terms(p, q, metric)))))


def accuracy_deviation(acc_m: float, acc_base: float) -> float:
    """Relative accuracy change in percent, as in the paper's Tables 1-3: ``100 * (acc_m - acc_base) / acc_base``.

    A base accuracy of 0 gives nan (the relative change is undefined).

    Args:
        acc_m: accuracy of the compressed (or other) model, a fraction in [0, 1].
        acc_base: accuracy of the base model.

    Example:
        >>> round(accuracy_deviation(0.136, 0.632), 1)
        -78.5
    """
    if acc_base == 0:
        return float("nan")
    return 100.0 * (acc_m - acc_base) / acc_base


# ---------------------------------------------------------------------------------------------------------------
# where the function moved: flips, tails, confidence, classes

# the percentiles of a per-input distribution that a tail summary reports, by key
TAIL_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
# signed changes (of the true class's probability) go both ways: both tails are reported
CHANGE_PERCENTILES = {"p1": 1.0, "p10": 10.0, "p50": 50.0, "p90": 90.0, "p99": 99.0}
ECE_BINS = 15      # equal-width confidence bins, as in Guo et al. 2017
MARGIN_BINS = 10   # deciles of the base's top-1 margin


def check_labels(labels: np.ndarray, n: int, c: int, where: str = "") -> np.ndarray:
    """``labels`` as an array, if they are integer class labels ``[n]`` in ``0..c-1``; else one MetricsError line.

    Args:
        labels: the labels, any array-like.
        n, c: the number of test inputs and of classes of the predictions they go with.
        where: what to name in the message (e.g. the labels' file name).

    Example:
        >>> check_labels([0, 2], 2, 3).tolist()
        [0, 2]
    """
    y, at = np.asarray(labels), f"{where}: " if where else ""
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise MetricsError(f"{at}labels must be integers [N] with N = {n}, got {y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= c):
        raise MetricsError(f"{at}labels outside 0..{c - 1}")
    return y


def _labels_for(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return check_labels(labels, len(probs), probs.shape[1])


def flips(base: np.ndarray, model: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """Counts of test inputs whose correctness changed: (right under the base and wrong under the model, the
    reverse). Their sum is at most the disagreement count: a change between two wrong classes is no flip.

    Args:
        base, model: ``[N, C]`` probabilities (only the argmax is used).
        labels: ``[N]`` integer labels.

    Example:
        >>> b = np.eye(3)[[0, 1, 2, 0, 0]]; m = np.eye(3)[[0, 2, 2, 1, 1]]
        >>> flips(b, m, np.array([0, 1, 2, 1, 2]))   # input 1 breaks, input 3 is mended, input 4 stays wrong
        (1, 1)
    """
    base, model = _pair(base, model)
    y = _labels_for(base, labels)
    right_b, right_m = np.argmax(base, axis=1) == y, np.argmax(model, axis=1) == y
    return int(np.count_nonzero(right_b & ~right_m)), int(np.count_nonzero(~right_b & right_m))


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value of the discordant counts ``b`` and ``c``: the binomial test of ``b`` out of
    ``b + c`` at probability 1/2, ``min(1, 2 P(X <= min(b, c)))``; 1 when there is no discordant pair.

    The paired test for "did accuracy change": two accuracies measured on the same inputs are not independent
    samples. Summed in exact integers, so it holds for any test-set size (the result may underflow to 0.0).

    Args:
        b, c: the two discordant counts, e.g. from :func:`flips`.

    Example:
        >>> mcnemar_exact(0, 5), mcnemar_exact(3, 3), mcnemar_exact(0, 0)
        (0.0625, 1.0, 1.0)
    """
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise MetricsError(f"McNemar counts must be >= 0, got {b} and {c}")
    n, k = b + c, min(b, c)
    if n == 0 or 2 * k >= n:
        return 1.0
    term = total = 1   # C(n, 0), then C(n, i) summed for i = 0..k
    for i in range(k):
        term = term * (n - i) // (i + 1)
        total += term
    return min(1.0, total / (1 << (n - 1)))   # Python's int division rounds big integers correctly


def tail_summary(values: np.ndarray, percentiles: Mapping[str, float] = TAIL_PERCENTILES,
                 rms: bool = False) -> dict:
    """``mean``, the given percentiles (linear interpolation), ``max`` (``min`` too for signed percentiles
    below 50) and, with ``rms``, the root mean square of per-input values.

    Args:
        values: ``[N]`` per-input values, e.g. :func:`per_example` with ``"kl"``.
        percentiles: key -> percentile in [0, 100].
        rms: add ``rms``.

    Example:
        >>> {k: round(v, 9) for k, v in tail_summary(np.arange(1001.0)).items()}
        {'mean': 500.0, 'p50': 500.0, 'p90': 900.0, 'p99': 990.0, 'p999': 999.0, 'max': 1000.0}
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or not len(v):
        raise MetricsError(f"a tail summary needs a non-empty [N] array, got shape {v.shape}")
    out = {"mean": float(v.mean())}
    if rms:
        out["rms"] = float(np.sqrt(np.mean(v * v)))
    qs = np.percentile(v, list(percentiles.values()))
    if min(percentiles.values()) < 50.0:
        out["min"] = float(v.min())
    out.update({k: float(q) for k, q in zip(percentiles, qs)})
    out["max"] = float(v.max())
    return out


def true_class_change(base: np.ndarray, model: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per input, the model's probability of the true class minus the base's, float64 ``[N]`` (negative: the
    model is less sure of the right answer).

    Args:
        base, model: ``[N, C]`` probabilities.
        labels: ``[N]`` integer labels.

    Example:
        >>> true_class_change(np.array([[0.9, 0.1]]), np.array([[0.6, 0.4]]), np.array([0])).round(3)
        array([-0.3])
    """
    base, model = _pair(base, model)
    y = _labels_for(base, labels)
    idx = np.arange(len(y))
    return model[idx, y].astype(np.float64) - base[idx, y].astype(np.float64)


def top1_margin(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability of every input, float64 ``[N]``: how sure the model is of its answer.

    Args:
        probs: ``[N, C]`` probabilities, C >= 2.

    Example:
        >>> top1_margin(np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1]])).round(2)
        array([0.5, 0.1])
    """
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape[1] < 2:
        raise MetricsError(f"a top-1 margin needs [N, C >= 2] probabilities, got shape {p.shape}")
    top2 = np.partition(p.astype(np.float64), p.shape[1] - 2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def by_margin(base: np.ndarray, model: np.ndarray, labels: np.ndarray | None = None,
              bins: int = MARGIN_BINS) -> dict:
    """Disagreement and flips within equal-count bins (deciles by default) of the base's top-1 margin.

    Inputs are ranked by margin (ties in test-set order) and cut into ``bins`` groups whose sizes differ by at
    most one, so every bin holds its share of inputs even when many margins are equal.

    Args:
        base, model: ``[N, C]`` probabilities.
        labels: ``[N]`` integer labels; without them ``flips`` is None.
        bins: how many bins (at most N).

    Returns:
        ``{"margin_lo", "margin_hi", "count", "disagreement", "flips"}``, lists over bins from the least sure
        inputs to the surest: the margin range, the number of inputs, the fraction of them whose top-1 class
        differs, and the fraction whose correctness changed (either way).

    Example:
        >>> b = np.array([[0.5, 0.5], [0.6, 0.4], [0.9, 0.1], [1.0, 0.0]]); m = np.eye(2)[[1, 1, 0, 0]]
        >>> by_margin(b, m, bins=2)["disagreement"]     # the base's two least sure inputs changed
        [1.0, 0.0]
    """
    base, model = _pair(base, model)
    n = len(base)
    if not 1 <= bins <= n:
        raise MetricsError(f"need 1 <= bins <= N = {n}, got {bins}")
    margin = top1_margin(base)
    order = np.argsort(margin, kind="stable")
    which = np.empty(n, dtype=np.int64)
    which[order] = np.arange(n) * bins // n
    differ = np.argmax(base, axis=1) != np.argmax(model, axis=1)
    count = np.bincount(which, minlength=bins)
    out = {"margin_lo": [float(margin[which == k].min()) for k in range(bins)],
           "margin_hi": [float(margin[which == k].max()) for k in range(bins)],
           "count": [int(c) for c in count],
           "disagreement": (np.bincount(which, differ, minlength=bins) / count).tolist(), "flips": None}
    if labels is not None:
        y = _labels_for(base, labels)
        flipped = (np.argmax(base, axis=1) == y) != (np.argmax(model, axis=1) == y)
        out["flips"] = (np.bincount(which, flipped, minlength=bins) / count).tolist()
    return out


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: over equal-width bins of top-1 confidence, ``(i/bins, (i+1)/bins]``, the
    mean of ``|accuracy - mean confidence|`` weighted by each bin's share of inputs. A fraction in [0, 1].

    Args:
        probs: ``[N, C]`` probabilities.
        labels: ``[N]`` integer labels.
        bins: number of bins (15 is the usual choice).

    Example:
        >>> round(ece(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1])), 6)   # (|1 - 0.9| + |0 - 0.6|) / 2
        0.35
    """
    p = np.asarray(probs)
    y = _labels_for(p, labels)
    conf = p.max(axis=1).astype(np.float64)
    right = (np.argmax(p, axis=1) == y).astype(np.float64)
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    # (n_b / N) |acc_b - conf_b| = |sum of right_b - sum of conf_b| / N: no division by empty bins
    gap = np.abs(np.bincount(which, right, minlength=bins) - np.bincount(which, conf, minlength=bins))
    return float(gap.sum() / len(y))


def per_class(base: np.ndarray, model: np.ndarray, labels: np.ndarray) -> dict:
    """Per true class: its inputs, the base's accuracy, the model's accuracy minus the base's (a fraction, not a
    percent), and the fraction of its inputs whose top-1 class differs. Lists of length C; a class without
    inputs has ``nan`` rates.

    Args:
        base, model: ``[N, C]`` probabilities.
        labels: ``[N]`` integer labels.

    Example:
        >>> b = np.eye(2)[[0, 0, 1, 1]]; m = np.eye(2)[[0, 1, 1, 1]]
        >>> per_class(b, m, np.array([0, 0, 1, 1]))
        {'count': [2, 2], 'base_accuracy': [1.0, 1.0], 'accuracy_change': [-0.5, 0.0], 'disagreement': [0.5, 0.0]}
    """
    base, model = _pair(base, model)
    y = _labels_for(base, labels)
    c = base.shape[1]
    pb, pm = np.argmax(base, axis=1), np.argmax(model, axis=1)
    count = np.bincount(y, minlength=c)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = {name: np.bincount(y, v.astype(np.float64), minlength=c) / count
                for name, v in (("b", pb == y), ("m", pm == y), ("d", pb != pm))}
    return {"count": count.tolist(), "base_accuracy": rate["b"].tolist(),
            "accuracy_change": (rate["m"] - rate["b"]).tolist(), "disagreement": rate["d"].tolist()}


def classes_beyond(change: Sequence[float], reference: Sequence[Sequence[float]], top: int = 5) -> list[dict]:
    """The classes a model hurts most, each tested against the same class's change under independent models.

    The test is a rank test per class: with K independent models, ``p_rank = (1 + #{j: ref_j <= change}) /
    (K + 1)``, the chance that the model's change would rank this low (or lower) among K + 1 exchangeable
    models; ``beyond_independents`` is true when the change is below every independent's (``p_rank`` at its
    floor ``1 / (K + 1)``, so at least 3 independents are needed for p < 0.3). Without independents both are
    None.

    Args:
        change: ``[C]`` per-class accuracy change of the model (``nan`` for a class without inputs).
        reference: ``[K, C]`` the same for K independent models (``[]`` for none).
        top: at most this many classes, those whose accuracy fell, the largest fall first.

    Example:
        >>> classes_beyond([-0.2, 0.0, -0.05], [[0.0, 0.1, -0.1], [-0.05, 0.0, 0.0]], top=2)
        [{'class': 0, 'accuracy_change': -0.2, 'independent_min': -0.05, 'p_rank': 0.3333333333333333, 'beyond_independents': True}, {'class': 2, 'accuracy_change': -0.05, 'independent_min': -0.1, 'p_rank': 0.6666666666666666, 'beyond_independents': False}]
    """
    d = np.asarray(change, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64).reshape(-1, len(d))
    # a fall smaller than 1e-9 is the rounding of a mean over seeds, not one input in a class
    fell = [k for k in np.argsort(d, kind="stable") if d[k] < -1e-9][:top]
    out = []
    for k in fell:
        row = {"class": int(k), "accuracy_change": float(d[k]), "independent_min": None, "p_rank": None,
               "beyond_independents": None}
        if len(ref):
            row.update(independent_min=float(ref[:, k].min()),
                       p_rank=float((1 + np.count_nonzero(ref[:, k] <= d[k])) / (len(ref) + 1)),
                       beyond_independents=bool(d[k] < ref[:, k].min()))
        out.append(row)
    return out
