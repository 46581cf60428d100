"""funclens.landscape: the embedding (determinism, geometry, small cases) and the two figures."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from funclens.landscape import LandscapeError, embed, plot_accuracy_vs_distance, plot_landscape
from funclens.pairwise import pairwise


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def checkpoints(seed: int = 0, m: int = 12, n: int = 150, c: int = 8) -> np.ndarray:
    """m unrelated models, except that the last one is a near-copy of model 0."""
    rng = np.random.default_rng(seed)
    z = 2.0 * rng.standard_normal((m, n, c))
    z[-1] = z[0] + 0.05 * rng.standard_normal((n, c))
    return softmax(z).astype(np.float16)


def test_embed_is_deterministic_and_finite():
    preds = checkpoints()
    a = embed(preds, seed=7)
    b = embed(list(preds), seed=7)      # a list of arrays is the same input
    assert a.shape == (len(preds), 2) and a.dtype == np.float64
    assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, embed(preds, seed=8))


def test_embed_places_a_near_copy_next_to_its_original():
    preds = checkpoints(seed=1)
    xy = embed(preds, seed=0)
    d = np.linalg.norm(xy - xy[-1], axis=1)
    order = np.argsort(d)
    assert order[0] == len(preds) - 1 and order[1] == 0    # itself, then the original
    assert d[0] < 0.5 * np.median(d[1:-1])


def test_embed_small_cases_are_exact():
    preds = checkpoints(m=3)
    assert np.array_equal(embed(preds[:1]), np.zeros((1, 2)))
    for m in (2, 3):
        xy = embed(preds[:m])
        assert xy.shape == (m, 2)
        # classical MDS in 2-D keeps the true distances: sqrt(2 N) * hellinger
        n = preds.shape[1]
        expected = np.sqrt(2 * n) * pairwise(preds[:m], "hellinger")
        got = np.linalg.norm(xy[:, None] - xy[None, :], axis=-1)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_embed_identical_checkpoints_and_bad_perplexity():
    p = checkpoints(m=1)[0]
    np.testing.assert_array_equal(embed([p] * 5), np.zeros((5, 2)))
    with pytest.raises(LandscapeError, match="perplexity"):
        embed(checkpoints(m=6), perplexity=6)


def points_for(m: int) -> list[dict]:
    pts = []
    for e in range(4):
        pts.append({"role": "base", "letter": "B", "label": "", "trajectory": "base", "epoch": e})
    for e in range(3):
        pts.append({"role": "independent", "letter": "I", "label": "s1", "trajectory": "ind1", "epoch": e})
    pts.append({"role": "student", "letter": "D", "label": "alpha=0.5 s2", "trajectory": "stu", "epoch": 0})
    pts.append({"role": "control", "letter": "C", "label": "control", "trajectory": "ctl", "epoch": 0})
    pts.append({"role": "quantize", "letter": "Q", "label": "8-bit", "trajectory": "q8", "epoch": 0})
    pts.append({"role": "prune", "letter": "P", "label": "30%", "trajectory": None, "epoch": 0})
    pts.append({"role": "prune", "label": "90%"})      # letter, trajectory and epoch left to defaults
    assert len(pts) == m
    return pts


def test_plot_landscape_saves_png(tmp_path):
    preds = checkpoints(m=12)
    fig = plot_landscape(embed(preds), points_for(12), title="digits / lenet")
    assert isinstance(fig, Figure)
    out = tmp_path / "landscape.png"
    fig.savefig(out, dpi=80)
    assert out.stat().st_size > 1024
    with pytest.raises(LandscapeError):
        plot_landscape(np.zeros((3, 2)), points_for(12), title="x")


def test_plot_accuracy_vs_distance_saves_png(tmp_path):
    rows = [
        {"method": "quantize", "setting": "8-bit", "accuracy_deviation_pct": -0.05, "rfd": 0.13,
         "rfd_ci": [0.09, 0.18]},
        {"method": "prune", "setting": "90%", "accuracy_deviation_pct": -78.5, "rfd": 1.4, "rfd_ci": [1.3, 1.5],
         "accuracy_deviation_std": None},
        {"method": "distill", "setting": "alpha=0.5", "accuracy_deviation_pct": 0.4, "rfd": 0.7,
         "rfd_ci": [0.6, 0.8], "accuracy_deviation_std": 0.2},
        {"method": "independent", "setting": "seed 1", "accuracy_deviation_pct": 0.1, "rfd": 1.0,
         "rfd_ci": [0.9, float("inf")]},
        {"method": "prune", "setting": "broken", "accuracy_deviation_pct": 0.0, "rfd": float("nan"),
         "rfd_ci": [float("nan"), float("nan")]},
    ]
    fig = plot_accuracy_vs_distance(rows, title="mnist / lenet")
    assert isinstance(fig, Figure)
    out = tmp_path / "acc.png"
    fig.savefig(out, dpi=80)
    assert out.stat().st_size > 1024
    empty = plot_accuracy_vs_distance([], title="empty")
    empty.savefig(tmp_path / "empty.png", dpi=60)
    assert (tmp_path / "empty.png").stat().st_size > 1024
