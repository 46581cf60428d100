"""Functional distances between prediction arrays: accuracy, per-input and mean distances, pairwise matrices,
RFD with a bootstrap interval, and the checks that user-supplied predictions must pass.

Pure functions of arrays: nothing here opens a file or builds a model. Predictions are softmax arrays
``[N, C]`` in test-set order, float16 as stored or float32; every computation runs in float32 or float64.

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
  gives for all pairs at once (see :func:`pairwise` and :mod:`funclens.landscape`).

Example:
    >>> import numpy as np
    >>> p = np.array([[0.9, 0.1], [0.2, 0.8]]); q = np.array([[0.6, 0.4], [0.7, 0.3]])
    >>> distance(p, q)                     # top-1 differs on the second input only
    0.5
    >>> round(distance(p, q, "tv"), 2)
    0.4
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np
import torch

from funclens.errors import MetricsError

METRICS = ("disagreement", "js", "kl", "tv", "hellinger")

# Floor for probabilities inside KL's logarithm. Stored float16 softmax cannot hold values below about 6e-8
# (its smallest subnormal), so probabilities under 1e-7 carry no information; the floor turns a class the model
# gives "zero" probability into a cost of at most -log(1e-7) = 16.1 nats instead of infinity. It is applied to
# p as well as q so that KL(p || p) is exactly 0.
KL_EPS = 1e-7

# Verdict thresholds on the RFD bootstrap interval (RFD 0: the same function; 1: as different as a model trained
# from scratch with another seed). "preserves" needs the whole interval below 0.5: the model sits at most half
# as far from the base as independent retraining does, even at the pessimistic end. "independent-like" needs the
# whole interval above 0.8: even at the optimistic end it kept little more of the base's function than a fresh
# seed would. Anything between, or an interval too wide to decide, is "partial".
PRESERVE_BELOW = 0.5
INDEPENDENT_ABOVE = 0.8

# Tolerance on row sums for an array to count as probabilities: float16 storage alone drifts by about 1e-3.
_PROB_SUM_TOL = 1e-2
# Working-set targets for the chunked pairwise kernels, in array elements (float32: x4 bytes, float64: x8).
_GRAM_ELEMS = 1 << 23       # one [M, n*C] float64 chunk for the Gram products: 64 MiB
_PAIR_ELEMS = 1 << 18       # one [bi, bj, n, C] block of pair temporaries: 1 MiB, stays in cache
_BOOT_ELEMS = 1 << 21       # one [b, N] block of bootstrap counts: 16 MiB in float64

Preds = Union[np.ndarray, Sequence[np.ndarray]]


# ---------------------------------------------------------------------------------------------------------------
# validation


def _check_metric(metric: str, allowed: Sequence[str] = METRICS) -> None:
    if metric not in allowed:
        raise MetricsError(f"unknown metric {metric!r}; known: {', '.join(allowed)}")


def _pair(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, q = np.asarray(p), np.asarray(q)
    if p.ndim != 2 or q.ndim != 2:
        raise MetricsError(f"predictions must be 2-D [N, C], got shapes {p.shape} and {q.shape}")
    if p.shape != q.shape:
        raise MetricsError(f"prediction shapes differ: {p.shape} vs {q.shape}")
    return p, q


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
        probs: ``[N, C]`` probabilities or logits (only the argmax is used).
        labels: ``[N]`` integer class labels in the same order.

    Example:
        >>> accuracy(np.array([[0.9, 0.1], [0.3, 0.7]]), np.array([0, 0]))
        0.5
    """
    probs, labels = np.asarray(probs), np.asarray(labels)
    if probs.ndim != 2 or labels.ndim != 1 or len(labels) != len(probs):
        raise MetricsError(f"accuracy needs probs [N, C] and labels [N], got {probs.shape} and {labels.shape}")
    return float(np.mean(np.argmax(probs, axis=1) == labels))


def _terms(p: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """Per-input terms whose mean, passed through :func:`_finish`, is the distance. float64 ``[N]``.

    For every metric but hellinger these are the per-input distances; for hellinger they are their squares.
    """
    _check_metric(metric)
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
    the joint distributions), so that it matches :func:`pairwise` and stays a metric.

    Args:
        p, q: ``[N, C]`` probabilities of two models on the same inputs.
        metric: one of ``METRICS``.

    Example:
        >>> distance(np.eye(3), np.eye(3)[[0, 2, 1]])
        0.6666666666666666
    """
    return float(_finish(metric, float(np.mean(_terms(p, q, metric)))))


# ---------------------------------------------------------------------------------------------------------------
# all pairs of models


@functools.cache
def _f16_sqrt_table() -> np.ndarray:
    """sqrt(max(x, 0)) in float64 for every float16 bit pattern (NaN stays NaN), indexed by the uint16 bits."""
    x = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)
    with np.errstate(invalid="ignore"):
        return np.sqrt(np.maximum(x, 0.0))


class _Stack:
    """Uniform chunked access to M prediction arrays given as one [M, N, C] array or a sequence of [N, C]."""

    def __init__(self, preds: Preds):
        if isinstance(preds, np.ndarray) or torch.is_tensor(preds):
            arr = np.asarray(preds)
            if arr.ndim != 3:
                raise MetricsError(f"expected predictions [M, N, C], got shape {arr.shape}")
            self.items: Sequence[np.ndarray] = arr
            self.shape = arr.shape
        else:
            self.items = [np.asarray(p) for p in preds]
            if not self.items:
                raise MetricsError("no predictions given")
            check_same_shape({f"predictions[{i}]": p for i, p in enumerate(self.items)})
            if self.items[0].ndim != 2:
                raise MetricsError(f"expected predictions [N, C], got shape {self.items[0].shape}")
            self.shape = (len(self.items), *self.items[0].shape)
        self.m, self.n, self.c = self.shape
        if self.m == 0 or self.n == 0:
            raise MetricsError(f"no predictions to compare (shape {self.shape})")

    def block(self, n0: int, n1: int, dtype: type = np.float32) -> np.ndarray:
        """Inputs n0:n1 of every model, converted: [M, n1 - n0, C]."""
        out = np.empty((self.m, n1 - n0, self.c), dtype=dtype)
        for i, p in enumerate(self.items):
            out[i] = p[n0:n1]
        return out

    def sqrt_block(self, n0: int, n1: int) -> np.ndarray:
        """sqrt(max(p, 0)) of inputs n0:n1 of every model, float64 [M, n1 - n0, C]."""
        out = np.empty((self.m, n1 - n0, self.c), dtype=np.float64)
        for i, p in enumerate(self.items):
            if p.dtype == np.float16:
                # float16 has 65,536 values: one table lookup converts, clips and takes the root (measured 2-5x
                # faster than numpy's float16 cast followed by sqrt)
                np.take(_f16_sqrt_table(), p[n0:n1].view(np.uint16), out=out[i])
            else:
                out[i] = p[n0:n1]
                np.maximum(out[i], 0.0, out=out[i])
                np.sqrt(out[i], out=out[i])
        return out

    def labels(self) -> np.ndarray:
        dtype = np.int16 if self.c <= np.iinfo(np.int16).max else np.int32   # halves the bytes compared
        out = np.empty((self.m, self.n), dtype=dtype)
        for i, p in enumerate(self.items):
            if p.dtype == np.float16:
                # numpy's float16 argmax is scalar code; an int16 key with the same order is 2x faster. Sign-magnitude
                # bits -> two's-complement order: flip the magnitude bits of negative values. Same result as argmax
                # on the floats for any finite row (only -0.0 and +0.0, equal as floats, get distinct keys).
                v = p.view(np.int16)
                p = v ^ ((v >> 15) & np.int16(0x7FFF))
            out[i] = np.argmax(p, axis=1)
        return out


def _matmul_t(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` as float64. Through torch: its MKL stays fast on shared, busy cores where numpy's OpenBLAS
    threads were measured 5-20x slower (they spin while waiting for each other)."""
    return (torch.from_numpy(a) @ torch.from_numpy(b).T).double().numpy()


def sqrt_gram(preds: Preds, *, center: bool = True) -> np.ndarray:
    """Gram matrix ``[M, M]`` (float64) of the models' flattened sqrt-probability vectors (length N*C).

    ``||sqrt p_i - sqrt p_j||^2 = G_ii + G_jj - 2 G_ij = 2 N hellinger(p_i, p_j)^2``. Computed over chunks of test
    inputs, never materialising the ``[M, N*C]`` matrix (about 64 MiB at a time). In float64, because distances
    come out as a small difference of large numbers: in float32 a Hellinger distance of 3e-4 (a typical
    compressed copy) came out 40% off; float64 costs about 1.5x the time. With ``center`` (the default) the mean
    vector over models is subtracted first: distances are unchanged, the numbers involved shrink from N to the
    spread between models, and the result is what classical MDS / PCA needs.

    Args:
        preds: M arrays ``[N, C]`` or one array ``[M, N, C]``.
        center: subtract the mean over models before the products.

    Example:
        >>> G = sqrt_gram([np.eye(2), np.eye(2)[::-1]])
        >>> float(G[0, 0] + G[1, 1] - 2 * G[0, 1])          # = 2 * N * hellinger^2 = 2 * 2 * 1
        4.0
    """
    return _sqrt_gram(_Stack(preds), center)


def _sqrt_gram(st: _Stack, center: bool) -> np.ndarray:
    gram = np.zeros((st.m, st.m), dtype=np.float64)
    step = max(1, _GRAM_ELEMS // (st.m * st.c))
    for n0 in range(0, st.n, step):
        s = st.sqrt_block(n0, min(st.n, n0 + step)).reshape(st.m, -1)
        if center:
            s -= s.mean(axis=0)
        gram += _matmul_t(s, s)
    return 0.5 * (gram + gram.T)   # BLAS may round the two triangles differently


def _pairwise_disagreement(st: _Stack, chunk: int) -> np.ndarray:
    labels = st.labels()
    counts = np.zeros((st.m, st.m), dtype=np.float64)
    for i0 in range(0, st.m, chunk):
        i1 = min(st.m, i0 + chunk)
        diff = labels[i0:i1, None, :] != labels[None, i0:, :]      # [rows, M - i0, N], upper triangle only
        counts[i0:i1, i0:] = diff.view(np.uint8).sum(axis=-1, dtype=np.int64)   # uint8 sum beats count_nonzero
    counts = np.triu(counts, 1)
    return (counts + counts.T) / st.n


def _pairwise_hellinger(st: _Stack) -> np.ndarray:
    gram = _sqrt_gram(st, center=True)
    sq = np.diag(gram)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)   # float rounding can go slightly negative
    return np.clip(np.sqrt(0.5 * d2 / st.n), 0.0, 1.0)


def _pairwise_kl(st: _Stack) -> np.ndarray:
    # KL(p_i || p_j) = sum p_i log p_i - sum p_i log p_j: the cross term for all pairs is one matrix product.
    # float64 because KL of near-identical models is a small difference of two large sums.
    self_term = np.zeros(st.m, dtype=np.float64)
    cross = np.zeros((st.m, st.m), dtype=np.float64)
    step = max(1, _GRAM_ELEMS // (st.m * st.c))
    for n0 in range(0, st.n, step):
        p = st.block(n0, min(st.n, n0 + step), np.float64).reshape(st.m, -1)
        logp = np.log(np.maximum(p, KL_EPS))
        self_term += np.einsum("ij,ij->i", p, logp)
        cross += _matmul_t(p, logp)
    return (self_term[:, None] - cross) / st.n


def _pairwise_elementwise(st: _Stack, metric: str, chunk: int) -> np.ndarray:
    # Blocks of `chunk` x `chunk` models broadcast against each other over a slice of inputs; only blocks on or
    # above the diagonal are computed. Work is M^2/2 * N * C elementwise operations (a log per element for js).
    # Single-threaded numpy on purpose: on 2 shared cores it measured faster than torch (1.2 vs 2 ns per element
    # for js) and torch's OpenMP threads, synchronising on every small op, slowed down 10-20x whenever another
    # process took a core. Temporaries are sized to stay in cache.
    sums = np.zeros((st.m, st.m), dtype=np.float64)
    step = max(1, _PAIR_ELEMS // (chunk * chunk * st.c))
    tiny, eps = np.finfo(np.float32).tiny, np.finfo(np.float32).eps
    for n0 in range(0, st.n, step):
        x = st.block(n0, min(st.n, n0 + step))                                 # [M, n, C] float32
        for i0 in range(0, st.m, chunk):
            i1 = min(st.m, i0 + chunk)
            a = x[i0:i1, None]
            for j0 in range(i0, st.m, chunk):
                j1 = min(st.m, j0 + chunk)
                b = x[None, j0:j1]
                d = a - b                                                       # [bi, bj, n, C]
                if metric == "tv":
                    np.abs(d, out=d)
                    per_input = 0.5 * d.sum(-1)
                else:
                    # JS = 0.5 sum [a log1p(r) + b log1p(-r)] with r = (a - b) / (a + b): each term is ~0 when
                    # a ~ b, so float32 keeps ~1e-4 relative accuracy even at JS ~ 1e-9, where the shorter
                    # H(m) - (H(a) + H(b)) / 2 loses everything to cancellation (measured: 25x off).
                    s_ab = a + b
                    np.maximum(s_ab, tiny, out=s_ab)
                    np.divide(d, s_ab, out=d)
                    np.clip(d, -1.0 + eps, 1.0 - eps, out=d)   # r = -1 where a = 0: 0 * log1p(-1) would be nan
                    u = np.log1p(d)
                    u *= a
                    np.negative(d, out=d)
                    np.log1p(d, out=d)
                    d *= b
                    u += d
                    per_input = np.clip(u.sum(-1) * (0.5 / math.log(2.0)), 0.0, 1.0)   # bits, clipped per input
                sums[i0:i1, j0:j1] += per_input.sum(-1, dtype=np.float64)
    out = np.triu(sums, 1)
    return (out + out.T) / st.n


def _zero_exact_duplicates(st: _Stack, out: np.ndarray, tol: float = 1e-3) -> None:
    """Set exactly 0 the distance between byte-identical prediction arrays.

    The Gram and float32 kernels leave rounding noise (~1e-8) where the answer is exactly 0, and identical
    predictions are common in practice (a 16-bit copy whose float16 predictions did not change).
    Only pairs already below ``tol`` are checked, each model involved hashed once.
    """
    digests: dict[int, tuple[str, bytes]] = {}

    def digest(i: int) -> tuple[str, bytes]:
        if i not in digests:
            a = np.ascontiguousarray(st.items[i])
            digests[i] = (a.dtype.str, hashlib.blake2b(a.reshape(-1).view(np.uint8), digest_size=16).digest())
        return digests[i]

    for i, j in np.argwhere(np.triu(np.abs(out) < tol, 1)):
        if digest(int(i)) == digest(int(j)):
            out[i, j] = out[j, i] = 0.0


def pairwise(preds: Preds, metric: str = "disagreement", chunk: int = 8) -> np.ndarray:
    """Distance matrix ``[M, M]`` (float64) between every pair of M models, memory-bounded.

    Measured for M = 300 float16 models of CIFAR-100 size (10,000 x 100) on 2 busy shared CPU cores, memory beyond
    the 572 MiB input:

    - ``disagreement``: top-1 labels ``[M, N]`` (int16) compared ``chunk`` rows at a time: ~0.7 s, +55 MiB.
    - ``hellinger``: one float64 Gram matrix of sqrt-probabilities (:func:`sqrt_gram`), chunked over inputs:
      ~6 s, +140 MiB. Relative error ~1e-6 even for distances of 1e-5.
    - ``kl``: ``sum p_i log p_i - sum p_i log p_j``, the cross term one float64 matrix product: ~7 s, +265 MiB.
      Not symmetric: entry [i, j] is ``KL(p_i || p_j)``.
    - ``js``, ``tv``: numpy over blocks of ``chunk`` x ``chunk`` pairs and a few inputs, float32 with float64
      sums, M^2/2 * N * C elementwise work on one core: 3-6 ns (js) and 1-1.5 ns (tv) per element, i.e. about
      3-5 min (js) and 1 min (tv) for M = 300, seconds for tens of models; a few MiB.

    float32 kernels (js, tv) agree with :func:`distance` to ~1e-6 relative (measured down to JS ~ 1e-9).

    Args:
        preds: M arrays ``[N, C]`` (float16 or float32) or one array ``[M, N, C]``.
        metric: one of ``METRICS``.
        chunk: models per block for disagreement, js and tv (a memory/speed knob; results do not depend on it;
            8 measured fastest).

    Returns:
        ``D`` with ``D[i, j] = distance(preds[i], preds[j], metric)`` up to float rounding; exact zero diagonal
        and exact zeros between byte-identical arrays; exactly symmetric for every metric but kl.

    Example:
        >>> pairwise([np.eye(2), np.eye(2)[::-1], np.eye(2)])
        array([[0., 1., 0.],
               [1., 0., 1.],
               [0., 1., 0.]])
    """
    _check_metric(metric)
    if int(chunk) < 1:
        raise MetricsError(f"chunk must be >= 1, got {chunk}")
    chunk = int(chunk)
    st = _Stack(preds)
    if metric == "disagreement":
        out = _pairwise_disagreement(st, chunk)
    elif metric == "hellinger":
        out = _pairwise_hellinger(st)
    elif metric == "kl":
        out = _pairwise_kl(st)
    else:
        out = _pairwise_elementwise(st, metric, chunk)
    if metric != "disagreement":
        _zero_exact_duplicates(st, out)
    np.fill_diagonal(out, 0.0)
    return out


# ---------------------------------------------------------------------------------------------------------------
# relative functional distance


def _boot_means(terms: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap means ``[n_boot, k]`` of the k rows of ``terms`` [k, N], all rows resampled with the same inputs.

    Each replicate is a multinomial count vector over inputs (bincount of N uniform draws); a block of counts
    [b, N] times terms.T [N, k] gives b replicates of every row at once.
    """
    k, n = terms.shape
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, k), dtype=np.float64)
    block = max(1, _BOOT_ELEMS // n)
    for b0 in range(0, n_boot, block):
        b = min(block, n_boot - b0)
        draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]   # offset: one bincount for all
        counts = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        out[b0:b0 + b] = counts @ terms.T / n
    return out


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den where 0/0 -> nan and x/0 -> inf, without warnings."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(num, den)


def _rfd_replicates(base: np.ndarray, model: np.ndarray, independents: Sequence[np.ndarray], metric: str,
                    n_boot: int, seed: int) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Point distance, point reference, and their bootstrap replicates (same resampled inputs for both)."""
    _check_metric(metric)
    if len(independents) == 0:
        raise MetricsError("RFD needs at least one independent model")
    if n_boot < 1:
        raise MetricsError(f"n_boot must be >= 1, got {n_boot}")
    terms = np.stack([_terms(base, model, metric)] + [_terms(base, ind, metric) for ind in independents])
    point = _finish(metric, terms.mean(axis=1))
    boot = _finish(metric, _boot_means(terms, n_boot, seed))
    # The reference is the mean over independents of each one's (finished) distance, per replicate.
    return float(point[0]), float(point[1:].mean()), boot[:, 0], boot[:, 1:].mean(axis=1)


def rfd(base: np.ndarray, model: np.ndarray, independents: Sequence[np.ndarray], metric: str = "disagreement",
        n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """Relative functional distance ``d(base, model) / mean_i d(base, independent_i)`` with a bootstrap interval.

    The interval is a percentile bootstrap over test inputs: each replicate resamples the N inputs once and
    recomputes numerator and denominator on the *same* inputs, so input difficulty cancels in the ratio. Its ends
    are order statistics of the replicate ratios (the lower one rounded down, the upper one up), which is never
    narrower than interpolating and stays defined when replicates are infinite.

    Degenerate reference (all independents identical to the base on the test set): ``rfd`` is ``inf`` when the
    model differs from the base and ``nan`` when it does not (0/0); replicates follow the same rule, nan replicates
    are dropped, and if none remain ``ci`` is ``[nan, nan]``. Nothing raises.

    Args:
        base, model: ``[N, C]`` probabilities.
        independents: independently trained models ``[N, C]`` (other seeds), at least one.
        metric: one of ``METRICS``.
        n_boot: bootstrap replicates.
        seed: seeds the resampling; the same seed gives the same interval.
        ci: coverage of the two-sided interval.

    Returns:
        ``{"rfd": float, "ci": [lo, hi], "distance": d(base, model), "reference": mean_i d(base, indep_i)}``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> base, other = rng.dirichlet(np.ones(5), 200), rng.dirichlet(np.ones(5), 200)
        >>> out = rfd(base, base, [other])
        >>> out["rfd"], out["ci"]
        (0.0, [0.0, 0.0])
    """
    dist, ref, boot_d, boot_r = _rfd_replicates(base, model, independents, metric, n_boot, seed)
    return {"rfd": float(_ratio(dist, ref)), "ci": _percentile_ci(_ratio(boot_d, boot_r), ci), "distance": dist,
            "reference": ref}


def _percentile_ci(ratios: np.ndarray, ci: float) -> list[float]:
    """Percentile interval of replicate ratios: nan replicates dropped, ends as order statistics (see rfd)."""
    if not 0.0 < ci < 1.0:
        raise MetricsError(f"ci must be in (0, 1), got {ci}")
    ratios = ratios[~np.isnan(ratios)]
    if not len(ratios):
        return [float("nan"), float("nan")]
    return [float(np.quantile(ratios, (1.0 - ci) / 2, method="lower")),
            float(np.quantile(ratios, 1.0 - (1.0 - ci) / 2, method="higher"))]


def ratio_bootstrap(num: np.ndarray, den: np.ndarray, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """Bootstrap the ratio of means of two per-input vectors, resampling both with the same inputs.

    The building block of :func:`rfd` for callers that already hold per-input vectors, e.g. ``num`` =
    :func:`per_example` of the base against a model (or the mean of several seeds' vectors) and ``den`` = the mean
    of the independents' vectors. For mean-aggregated metrics (all but hellinger) ``ratio`` is then the RFD and
    the replicates are exactly those of :func:`rfd` and :func:`closer_than_independent` with the same seed.
    Same interval rule and degenerate-denominator handling as :func:`rfd`.

    Args:
        num, den: float ``[N]`` per-input values on the same inputs.
        n_boot: bootstrap replicates.
        seed: seeds the resampling.
        ci: coverage of the two-sided interval.

    Returns:
        ``{"ratio": mean(num) / mean(den), "ci": [lo, hi], "p_less_than_one": p}`` where ``p = (1 + #{replicates
        with mean(num) >= mean(den)}) / (n_boot + 1)``, the one-sided p-value for H0 "ratio >= 1".

    Example:
        >>> out = ratio_bootstrap(np.zeros(100), np.ones(100), n_boot=99)
        >>> out["ratio"], out["ci"], out["p_less_than_one"]
        (0.0, [0.0, 0.0], 0.01)
    """
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if num.ndim != 1 or num.shape != den.shape or len(num) == 0:
        raise MetricsError(f"ratio_bootstrap needs two non-empty vectors [N] of equal length, got {num.shape} "
                           f"and {den.shape}")
    if n_boot < 1:
        raise MetricsError(f"n_boot must be >= 1, got {n_boot}")
    boot = _boot_means(np.stack([num, den]), n_boot, seed)
    return {"ratio": float(_ratio(num.mean(), den.mean())), "ci": _percentile_ci(_ratio(boot[:, 0], boot[:, 1]), ci),
            "p_less_than_one": float((np.count_nonzero(boot[:, 0] >= boot[:, 1]) + 1) / (n_boot + 1))}


def closer_than_independent(base: np.ndarray, model: np.ndarray, independents: Sequence[np.ndarray],
                            metric: str = "disagreement", n_boot: int = 1000, seed: int = 0) -> float:
    """One-sided bootstrap p-value for H0 "the model is not closer to the base than independent models are".

    ``p = (1 + #{replicates with d(base, model) >= mean_i d(base, indep_i)}) / (n_boot + 1)``, replicates drawn
    exactly as in :func:`rfd` (same seed, same resampled inputs). A small p says the model is significantly closer
    to the base than independent retraining; p never goes below ``1 / (n_boot + 1)``.

    Args:
        base, model: ``[N, C]`` probabilities.
        independents: independently trained models ``[N, C]``, at least one.
        metric: one of ``METRICS``.
        n_boot: bootstrap replicates.
        seed: seeds the resampling.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> base, other = rng.dirichlet(np.ones(5), 500), rng.dirichlet(np.ones(5), 500)
        >>> closer_than_independent(base, base, [other], n_boot=99)
        0.01
    """
    _, _, boot_d, boot_r = _rfd_replicates(base, model, independents, metric, n_boot, seed)
    return float((np.count_nonzero(boot_d >= boot_r) + 1) / (n_boot + 1))


def independent_reference(base: np.ndarray, independents: Sequence[np.ndarray],
                          metric: str = "disagreement") -> dict:
    """The yardstick: how far independently trained models are from the base, and from each other.

    Args:
        base: ``[N, C]`` probabilities of the base model.
        independents: other seeds' ``[N, C]`` probabilities, at least one.
        metric: one of ``METRICS``.

    Returns:
        ``{"mean", "std", "pairs", "between"}``: mean and standard deviation (ddof=1; 0 with one independent) of
        ``d(base, indep_i)``, the number of such pairs, and the mean distance over all ordered pairs of distinct
        models among base and independents.

    Example:
        >>> independent_reference(np.eye(2), [np.eye(2)[::-1]])
        {'mean': 1.0, 'std': 0.0, 'pairs': 1, 'between': 1.0}
    """
    _check_metric(metric)
    if len(independents) == 0:
        raise MetricsError("the independent reference needs at least one independent model")
    d = np.array([distance(base, ind, metric) for ind in independents])
    mat = pairwise([np.asarray(base)] + [np.asarray(i) for i in independents], metric)
    off = ~np.eye(len(mat), dtype=bool)
    return {"mean": float(d.mean()), "std": float(d.std(ddof=1 if len(d) > 1 else 0)), "pairs": len(d),
            "between": float(mat[off].mean())}


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


def verdict(rfd_ci: Sequence[float], preserve_below: float = PRESERVE_BELOW,
            independent_above: float = INDEPENDENT_ABOVE) -> str:
    """Classify a model from its RFD interval: "preserves", "independent-like" or "partial".

    "preserves" when the upper end is below ``preserve_below``; "independent-like" when the lower end is above
    ``independent_above``; otherwise (including a nan interval) "partial". See ``PRESERVE_BELOW`` and
    ``INDEPENDENT_ABOVE`` for why these thresholds.

    Args:
        rfd_ci: ``[lo, hi]`` from :func:`rfd`.
        preserve_below: threshold on the upper end.
        independent_above: threshold on the lower end.

    Example:
        >>> verdict([0.1, 0.3]), verdict([0.85, 1.1]), verdict([0.4, 0.9])
        ('preserves', 'independent-like', 'partial')
    """
    lo, hi = (float(v) for v in rfd_ci)
    if hi < preserve_below:
        return "preserves"
    if lo > independent_above:
        return "independent-like"
    return "partial"
