"""funclens.landscape: the embedding (determinism, geometry, small cases) and the two figures."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from funclens.landscape import (
    LABEL_GID, VERDICT_COLOURS, LandscapeError, embed, landscape_html, plot_accuracy_vs_distance,
    plot_distance_matrix, plot_landscape, text_box,
)
from funclens.pairwise import pairwise
from funclens.plan import ROLES


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


def drawn(fig: Figure, path, dpi: int = 80) -> tuple[tuple[int, int], float]:
    """Save ``fig`` and read it back: (height, width) in pixels and the fraction of pixels that are not white."""
    from matplotlib.image import imread

    fig.savefig(path, dpi=dpi)
    img = imread(path)[..., :3]
    return img.shape[:2], float(np.mean(np.any(img < 0.97, axis=-1)))


def legend_texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_plot_landscape_draws_every_role_with_its_letter(tmp_path):
    preds = checkpoints(m=12)
    fig = plot_landscape(embed(preds), points_for(12), title="digits / lenet")
    assert isinstance(fig, Figure)
    roles = {p["role"] for p in points_for(12)}
    assert legend_texts(fig) == [f"{r.letter}  {r.legend}" for r in ROLES.values() if r.name in roles]
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sorted(t for t in texts if len(t) == 1) == sorted("BIDCQPP")   # one big letter per final checkpoint
    assert {"8-bit", "30%", "alpha=0.5 s2"} <= set(texts)
    (h, w), ink = drawn(fig, tmp_path / "landscape.png")
    assert (h, w) == (520, 680) and 0.02 < ink < 0.6
    with pytest.raises(LandscapeError):
        plot_landscape(np.zeros((3, 2)), points_for(12), title="x")


def test_plot_accuracy_vs_distance_shows_each_role_and_skips_undefined_rows(tmp_path):
    rows = [
        {"method": "quantize", "role": "quantize", "setting": "8-bit", "accuracy_deviation_pct": -0.05,
         "rfd": 0.13, "rfd_ci": [0.09, 0.18], "verdict": "preserves"},
        {"method": "prune", "role": "prune", "setting": "90%", "accuracy_deviation_pct": -78.5, "rfd": 1.4,
         "rfd_ci": [1.3, 1.5], "accuracy_deviation_std": None, "verdict": "independent-like"},
        {"method": "distill", "role": "control", "setting": "control alpha=0.5", "accuracy_deviation_pct": 0.4,
         "rfd": 0.7, "rfd_ci": [0.6, 0.8], "accuracy_deviation_std": 0.2, "verdict": "partial"},
        {"method": "independent", "setting": "seed 1", "accuracy_deviation_pct": 0.1, "rfd": 1.0,
         "rfd_ci": [0.9, None]},                              # an infinite upper end, as summary.json writes it
        {"method": "prune", "setting": "broken", "accuracy_deviation_pct": 0.0, "rfd": None,
         "rfd_ci": [None, None]},
    ]
    fig = plot_accuracy_vs_distance(rows, title="mnist / lenet")
    assert legend_texts(fig)[:4] == ["quantization", "pruning", "control student", "independent"]
    # coloured by verdict, not by role: the legend names the verdicts shown
    assert legend_texts(fig)[4:] == ["preserves", "independent-like", "partial"]
    notes = [t.get_text() for t in fig.axes[0].texts]
    assert "1 row(s) without a finite RFD not shown" in notes
    assert fig.axes[0].get_yscale() == "symlog"               # -78.5% would squeeze the others
    assert "symlog" in fig.axes[0].get_ylabel() and "symlog" not in fig.axes[0].get_xlabel()
    (h, w), ink = drawn(fig, tmp_path / "acc.png")
    assert (h, w) == (440, 680) and 0.02 < ink < 0.95
    empty = plot_accuracy_vs_distance([], title="empty")
    assert "no rows with a finite RFD" in [t.get_text() for t in empty.axes[0].texts]


def test_plot_distance_matrix_orders_by_role_and_keeps_the_values(tmp_path):
    pts = [{"role": "prune", "label": "50%"}, {"role": "base", "label": "seed=0"},
           {"role": "independent", "label": "seed=1"}, {"role": "quantize", "label": "8-bit"}]
    d = pairwise([p for p in checkpoints(m=4)], "disagreement")
    fig = plot_distance_matrix(d, pts, metric="disagreement", title="digits")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["B seed=0", "I seed=1", "Q 8-bit", "P 50%"]
    order = [1, 2, 3, 0]
    np.testing.assert_array_equal(ax.images[0].get_array(), d[np.ix_(order, order)])
    assert "fraction of test inputs" in fig.axes[1].get_ylabel()     # the colour bar says the unit
    (h, w), ink = drawn(fig, tmp_path / "distances.png")
    assert h > 300 and w > 300 and ink > 0.2
    with pytest.raises(LandscapeError):
        plot_distance_matrix(d, pts[:3], metric="disagreement", title="x")


def _crowded_rows() -> list[dict]:
    """The rows that overprinted each other before: three at the origin, two alphas side by side, and
    extremes at both ends of both axes."""
    rows = [{"method": "quantize", "role": "quantize", "setting": s, "accuracy_deviation_pct": 0.0, "rfd": 0.0,
             "rfd_ci": [0.0, 0.0], "verdict": "preserves"} for s in ("16-bit", "8-bit")]
    rows += [{"method": "prune", "role": "prune", "setting": "10%", "accuracy_deviation_pct": 0.0, "rfd": 0.004,
              "rfd_ci": [0.0, 0.01], "verdict": "preserves"}]
    rows += [{"method": "distill", "role": "student", "setting": f"alpha={a}", "accuracy_deviation_pct": 0.3 + d,
              "rfd": 0.30 + d, "rfd_ci": [0.2, 0.45], "verdict": "preserves", "accuracy_deviation_std": 0.1}
             for a, d in (("0.1", 0.0), ("0.5", 0.01), ("0.9", 0.02))]
    rows += [{"method": "prune", "role": "prune", "setting": "90%", "accuracy_deviation_pct": -88.0, "rfd": 60.0,
              "rfd_ci": [40.0, 80.0], "verdict": "independent-like"},
             {"method": "quantize", "role": "quantize", "setting": "4-bit", "accuracy_deviation_pct": 14.0,
              "rfd": 0.05, "rfd_ci": [0.01, 0.1], "verdict": "preserves"}]
    return rows


def assert_labels_apart(fig: Figure, expected: set[str]) -> None:
    """Every placed label is drawn, inside the figure and inside its axes, and no two labels' boxes meet."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    labels = [t for t in fig.findobj(lambda a: a.get_gid() == LABEL_GID)]
    assert {t.get_text() for t in labels} == expected
    boxes = [text_box(t, r) for t in labels]
    page = fig.bbox
    axes = fig.axes[0].get_window_extent(r)
    for t, b in zip(labels, boxes):
        assert page.x0 <= b.x0 and b.x1 <= page.x1 and page.y0 <= b.y0 and b.y1 <= page.y1, t.get_text()
        assert axes.x0 <= b.x0 and b.x1 <= axes.x1 and axes.y0 <= b.y0 and b.y1 <= axes.y1, t.get_text()
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (labels[i].get_text(), labels[j].get_text())


def test_accuracy_figure_labels_never_overlap_and_markers_stay_inside():
    rows = _crowded_rows()
    fig = plot_accuracy_vs_distance(rows, title="crowded")
    assert_labels_apart(fig, {r["setting"] for r in rows})
    ax = fig.axes[0]
    box = ax.get_window_extent(fig.canvas.get_renderer())
    for r in rows:   # every marker's centre, the extremes included, lies strictly inside the axes
        x, y = ax.transData.transform((r["rfd"], r["accuracy_deviation_pct"]))
        assert box.x0 + 3 < x < box.x1 - 3 and box.y0 + 3 < y < box.y1 - 3, r["setting"]
    assert "symlog" in ax.get_xlabel() and "symlog" in ax.get_ylabel()
    # each point takes its verdict's colour
    colours = {to_hex(line.get_color()) for line in ax.lines if line.get_marker() not in (None, "None", "")}
    assert {to_hex(VERDICT_COLOURS[v]) for v in ("preserves", "independent-like")} <= colours


def test_landscape_labels_around_the_base_never_overlap_and_the_base_is_on_top():
    # the base, both quantized models and light pruning at one spot, as post-hoc models sit in a real study
    coords = np.array([[0.0, 0.0], [0.01, 0.0], [0.0, 0.01], [0.02, 0.01], [0.01, 0.02], [3.0, 2.0], [-2.0, 1.5]])
    pts = [{"role": "base", "label": "seed=0", "trajectory": "b", "epoch": 3}]
    pts += [{"role": "quantize", "label": s, "trajectory": s, "epoch": 0} for s in ("16-bit", "8-bit")]
    pts += [{"role": "prune", "label": s, "trajectory": s, "epoch": 0} for s in ("10%", "30%")]
    pts += [{"role": "independent", "label": "seed=1", "trajectory": "i1", "epoch": 3},
            {"role": "student", "label": "alpha=0.5 s2", "trajectory": "d", "epoch": 3}]
    fig = plot_landscape(coords, pts, title="crowded base")
    assert_labels_apart(fig, {p["label"] for p in pts})
    letters = {t.get_text(): t.get_zorder() for t in fig.axes[0].texts if len(t.get_text()) == 1}
    assert letters["B"] > max(z for k, z in letters.items() if k != "B")


def test_interactive_landscape_is_one_offline_page_that_names_run_epoch_and_accuracy():
    coords = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5]])
    pts = [{"role": "base", "label": "seed=0", "trajectory": "train_base", "epoch": 1, "accuracy": 0.5,
            "final": False},
           {"role": "base", "label": "seed=0", "trajectory": "train_base", "epoch": 2, "accuracy": 0.9125},
           {"role": "quantize", "label": "8-bit", "trajectory": "quant_q8", "epoch": 0, "accuracy": 0.91}]
    page = landscape_html(coords, pts, title="demo")
    assert "<html>" in page[:100] and "<script src=" not in page and len(page) > 1_000_000  # plotly inline
    for needle in ("train_base", "quant_q8", "91.25%", "epoch %{customdata[1]}", "test accuracy"):
        assert needle in page, needle
    with pytest.raises(LandscapeError):
        landscape_html(np.zeros((2, 2)), pts, title="x")


def test_every_role_of_the_accuracy_figure_has_a_marker_of_its_own():
    # colour is the verdict, so the marker alone tells a no-teacher control from a student, noise from pruning
    from funclens.landscape import _MARKERS

    roles = [r for r in ROLES if r != "base"]
    assert set(roles) <= set(_MARKERS) and len({_MARKERS[r] for r in roles}) == len(roles)
