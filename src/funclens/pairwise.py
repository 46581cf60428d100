"""All-pairs distance matrices ``[M, M]`` between M prediction arrays, chunked so memory stays bounded, and
the Gram matrix of sqrt-probabilities that :mod:`funclens.landscape` embeds.

Pure functions of arrays, as :mod:`funclens.metrics` (whose definitions, units and checks they follow: logits
are refused, see :func:`funclens.metrics.require_probabilities`): nothing here opens a file.

Example:
    >>> import numpy as np
    >>> pairwise([np.eye(2), np.eye(2)[::-1]], "tv")
    array([[0., 1.],
           [1., 0.]])
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch

from funclens.errors import MetricsError
from funclens.metrics import KL_EPS, check_metric, check_same_shape, require_probabilities

# Working-set targets for the chunked kernels, in array elements (float32: x4 bytes, float64: x8).
_GRAM_ELEMS = 1 << 23       # one [M, n*C] float64 chunk for the Gram products: 64 MiB
_PAIR_ELEMS = 1 << 18       # one [bi, bj, n, C] block of pair temporaries: 1 MiB, stays in cache

Preds = Union[np.ndarray, Sequence[np.ndarray]]


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
        for i, p in enumerate(self.items):
            require_probabilities(p, f"predictions[{i}]")

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
    check_metric(metric)
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
