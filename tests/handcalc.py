"""Hand references for the distance tests: plain loops over inputs, and small synthetic predictions."""

from __future__ import annotations

import math

import numpy as np

from funclens.metrics import KL_EPS


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


def study(rng: np.random.Generator, n: int = 2000, c: int = 10, k: int = 3):
    """Synthetic study: a base, k independents that share part of its function, a slightly perturbed copy."""
    z = 3.0 * rng.standard_normal((n, c))
    base = softmax(z)
    independents = [softmax(0.6 * z + 2.5 * rng.standard_normal((n, c))) for _ in range(k)]
    noisy = base + 0.01 * rng.random((n, c))
    compressed = noisy / noisy.sum(axis=1, keepdims=True)
    return base, independents, compressed
