"""Functional landscape: every checkpoint's test-set predictions as one point in the plane (after Fort et al. 2019,
"Deep Ensembles: A Loss Landscape Perspective"), and the report's figures: the landscape, accuracy against RFD,
and the matrix of distances among the final models. Roles' letters and colours come from
:data:`funclens.plan.ROLES`.

Pure functions of arrays: nothing here opens or writes a file. Figures are built on ``matplotlib.figure.Figure``
directly, without pyplot, so no global backend or figure registry is touched; ``fig.savefig(path)`` renders
with Agg.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> preds = rng.dirichlet(np.ones(10), size=(8, 100))          # 8 "checkpoints", 100 inputs, 10 classes
    >>> embed(preds, seed=0).shape
    (8, 2)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from funclens.config import FunclensError
from funclens.metrics import METRIC_UNITS
from funclens.plan import ROLES
from funclens.pairwise import Preds, sqrt_gram
from funclens.rfd import INDEPENDENT_ABOVE, PRESERVE_BELOW

# rows without a role (the Python API's) take the colour of the first role with their method
_ROLE_OF_METHOD = {r.method: r for r in reversed(ROLES.values())}
_ROLE_ORDER = {name: k for k, name in enumerate(ROLES)}


class LandscapeError(FunclensError):
    """Inputs to the landscape that do not fit together (coordinates vs point descriptions, perplexity)."""


def _classical_mds(gram: np.ndarray, k: int, n_inputs: int) -> np.ndarray:
    """Top-k principal coordinates ``[M, k]`` from a centred Gram matrix (= PCA scores of the flattened data).

    Directions at the float32 noise level of the Gram matrix are dropped: variance below 1e-6 of the largest, or
    below ``1e-9 * n_inputs`` (Hellinger ~2e-5: identical checkpoints, after centring's rounding). Eigenvector
    signs are fixed (largest-magnitude entry positive) so the result does not depend on LAPACK's arbitrary choice.
    """
    w, v = np.linalg.eigh(gram)
    order = np.argsort(w)[::-1]
    w, v = np.maximum(w[order], 0.0), v[:, order]
    keep = w > max(1e-6 * w[0], 1e-9 * n_inputs)
    k = min(k, int(keep.sum()))
    w, v = w[:k], v[:, :k]
    flip = np.sign(v[np.argmax(np.abs(v), axis=0), np.arange(k)])
    return v * flip * np.sqrt(w)


def embed(preds: Preds, *, seed: int = 0, n_components_pca: int = 50, perplexity: float | None = None) -> np.ndarray:
    """Embed M checkpoints in the plane: one point per prediction array, nearby points compute similar functions.

    Each ``[N, C]`` array is read as its flattened sqrt-probability vector, so Euclidean distance between two
    checkpoints is ``sqrt(2 N)`` times their Hellinger distance (:func:`funclens.pairwise.pairwise`). PCA to
    ``n_components_pca`` dimensions is done exactly and cheaply through the ``[M, M]`` Gram matrix (classical MDS:
    eigenvectors of the centred Gram matrix scaled by sqrt of the eigenvalues are the PCA scores), computed in
    chunks of inputs, so the ``[M, N*C]`` matrix is never materialised (300 CIFAR-100 checkpoints: ~150 MiB
    working memory instead of 1.2 GB). No randomized solver is needed. t-SNE (scikit-learn, exact gradient for
    determinism on small M, ``init="random"``, ``random_state=seed``) then runs on the Euclidean distances of the
    PCA scores; the same inputs and seed give the same coordinates.

    Small cases: M = 1 gives ``[[0, 0]]``; M = 2 or 3 gives the exact 2-D classical MDS (any 3 points lie in a
    plane, so the picture shows true distances; t-SNE needs more points); checkpoints that all compute the same
    function (Hellinger below about 1e-5 apart, the float32 resolution) give zeros.

    Args:
        preds: M arrays ``[N, C]`` of probabilities (float16 or float32), or one array ``[M, N, C]``.
        seed: t-SNE's random state.
        n_components_pca: PCA dimensions kept before t-SNE (at most M - 1 are meaningful).
        perplexity: t-SNE perplexity; default ``min(30, (M - 1) / 3)``. Must be below M.

    Returns:
        float64 ``[M, 2]`` coordinates, finite.

    Example:
        >>> p = np.full((50, 4), 0.25); q = np.eye(4)[np.arange(50) % 4]
        >>> embed([p, q]).round(2)       # Hellinger 0.707, so sqrt(2 * 50) * 0.707 = 7.07 apart, exactly
        array([[ 3.54,  0.  ],
               [-3.54,  0.  ]])
    """
    gram = sqrt_gram(preds)
    m, n_inputs = len(gram), np.shape(preds[0])[0]
    if m == 1:
        return np.zeros((1, 2))
    if m <= 3:
        coords = _classical_mds(gram, 2, n_inputs)
        return np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    feats = _classical_mds(gram, max(1, int(n_components_pca)), n_inputs)
    if feats.shape[1] == 0:   # all checkpoints compute the same function
        return np.zeros((m, 2))
    sq = (feats ** 2).sum(axis=1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * feats @ feats.T, 0.0))
    np.fill_diagonal(dist, 0.0)
    perp = min(30.0, (m - 1) / 3.0) if perplexity is None else float(perplexity)
    if not 0.0 < perp < m:
        raise LandscapeError(f"perplexity must be in (0, {m}) for {m} checkpoints, got {perp}")

    from sklearn.manifold import TSNE   # late: sklearn's import is slow and only this function needs it

    tsne = TSNE(n_components=2, metric="precomputed", init="random", random_state=seed, perplexity=perp,
                method="exact" if m <= 1000 else "barnes_hut")
    return np.asarray(tsne.fit_transform(dist), dtype=np.float64)


def _role(point: Mapping[str, Any]) -> tuple[str, str, str]:
    """(letter, colour, legend text) of a point or row: from its role, else its method, else grey."""
    role = ROLES.get(point.get("role", "")) or _ROLE_OF_METHOD.get(point.get("method", ""))
    if role is None:
        return point.get("letter") or "?", "tab:gray", str(point.get("role") or point.get("method") or "other")
    return point.get("letter") or role.letter, role.colour, role.legend


def plot_landscape(coords: np.ndarray, points: Sequence[Mapping[str, Any]], *, title: str) -> Figure:
    """The functional landscape figure: trajectories as thin lines with dots, final checkpoints as big letters.

    Args:
        coords: ``[M, 2]`` from :func:`embed`.
        points: M dicts, one per row of ``coords``: ``role`` (base, independent, student, control, quantize,
            prune), ``letter`` (B, I, D, C, Q, P; defaults from the role), ``label`` (short text beside the final
            letter, e.g. "8-bit"), ``trajectory`` (points with the same id are joined in ``epoch`` order; None: a
            point of its own), ``epoch`` (int; the trajectory's last epoch gets the big letter).
        title: the axes title.

    Returns:
        a ``matplotlib.figure.Figure``; save it with ``fig.savefig(path, dpi=150)``.

    Example:
        >>> fig = plot_landscape(np.array([[0.0, 0.0], [1.0, 1.0]]),
        ...                      [{"role": "base", "trajectory": "b", "epoch": 1},
        ...                       {"role": "quantize", "label": "8-bit", "trajectory": "q", "epoch": 0}],
        ...                      title="demo")
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(points):
        raise LandscapeError(f"need coords [M, 2] and M point descriptions, got {coords.shape} and {len(points)}")
    fig = Figure(figsize=(7.5, 6.5), layout="constrained")
    ax = fig.add_subplot()
    groups: dict[Any, list[int]] = {}
    for i, pt in enumerate(points):
        key = pt.get("trajectory")
        groups.setdefault(("traj", key) if key is not None else ("single", i), []).append(i)
    seen: dict[str, tuple[str, str, str]] = {}
    for idx in groups.values():
        idx = sorted(idx, key=lambda i: (points[i].get("epoch") or 0, i))
        letter, colour, text = _role(points[idx[-1]])
        seen.setdefault(points[idx[-1]].get("role", "other"), (letter, colour, text))
        xy = coords[idx]
        if len(idx) > 1:
            ax.plot(xy[:, 0], xy[:, 1], "-", color=colour, lw=0.7, alpha=0.55, zorder=1)
            ax.scatter(xy[:-1, 0], xy[:-1, 1], s=5, color=colour, alpha=0.6, zorder=2, linewidths=0)
        x, y = xy[-1]
        ax.text(x, y, letter, color=colour, fontsize=15, fontweight="bold", ha="center", va="center", zorder=4)
        label = points[idx[-1]].get("label")
        if label:
            ax.annotate(str(label), (x, y), xytext=(7, 6), textcoords="offset points", fontsize=7, color=colour,
                        zorder=5)
    # text does not enter the data limits; register every point so letters are never cut off
    ax.update_datalim(coords)
    ax.margins(0.08)
    ax.autoscale_view()
    handles = [Line2D([], [], color=c, lw=0.7, marker=f"${ltr}$", markersize=9, label=f"{ltr}  {txt}")
               for ltr, c, txt in seen.values()]
    if handles:
        ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.85)
    ax.set_title(title)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def _plottable(row: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """(rfd, accuracy deviation, interval's lower end, upper end as drawn), or None when not finite.

    An upper end that is infinite or missing (``summary.json`` writes inf as null) is drawn to
    ``max(3, 2 * rfd)``, so it stays on the page while still reading as "very wide".
    """
    r, acc = row.get("rfd"), row.get("accuracy_deviation_pct")
    if r is None or acc is None or not (np.isfinite(r) and np.isfinite(acc)):
        return None
    lo, hi = (list(row.get("rfd_ci") or [r, r]) + [None, None])[:2]
    lo = r if lo is None or not np.isfinite(lo) else lo
    hi = r if hi is not None and np.isnan(hi) else min(np.inf if hi is None else hi, max(3.0, 2 * r))
    return float(r), float(acc), float(lo), float(hi)


def _draw_rows(ax, rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, str], int, float]:
    """One point with its interval per plottable row; returns legend text -> colour, rows skipped, x extent."""
    styles: dict[str, str] = {}
    skipped, xmax = 0, 1.15
    for row in rows:
        pt = _plottable(row)
        if pt is None:
            skipped += 1
            continue
        r, acc, lo, hi = pt
        _, colour, text = _role(row)
        styles.setdefault(text, colour)
        std = row.get("accuracy_deviation_std")
        ax.errorbar([r], [acc], xerr=[[max(r - lo, 0.0)], [max(hi - r, 0.0)]],
                    yerr=None if std is None else [[std], [std]], fmt="o", color=colour, ms=5, capsize=3,
                    elinewidth=1, zorder=3)
        ax.annotate(str(row.get("setting", "")), (r, acc), xytext=(5, 5), textcoords="offset points", fontsize=7,
                    color=colour)
        xmax = max(xmax, hi * 1.05, r * 1.05)
    return styles, skipped, xmax


def _draw_regions(ax, xmax: float) -> None:
    """The verdict regions, and the line where independently trained models sit."""
    ax.axvspan(0.0, PRESERVE_BELOW, color="tab:green", alpha=0.08, zorder=0)
    ax.axvspan(INDEPENDENT_ABOVE, xmax, color="tab:red", alpha=0.08, zorder=0)
    ax.axvline(1.0, color="0.35", ls="--", lw=1, zorder=1)
    ax.text(1.0, 0.98, " independent models", transform=ax.get_xaxis_transform(), rotation=90, ha="right",
            va="top", fontsize=8, color="0.35")
    ax.axhline(0.0, color="0.6", lw=0.7, zorder=1)


def _set_scales(ax, rows: Sequence[Mapping[str, Any]], xmax: float) -> None:
    # Heavily pruned models can sit at RFD 100 and -80% accuracy, squeezing every other model into a corner:
    # past these bounds the axes turn logarithmic, keeping the region that decides verdicts linear.
    ax.set_xlim(0.0, xmax)
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    if xmax > 4.0:
        ax.set_xscale("symlog", linthresh=2.0, linscale=2.0)
        ax.xaxis.set_major_formatter(plain)
    devs = [row.get("accuracy_deviation_pct") for row in rows]
    if any(d is not None and np.isfinite(d) and abs(d) > 10 for d in devs):
        ax.set_yscale("symlog", linthresh=1.0)
        ax.yaxis.set_major_formatter(plain)


def plot_accuracy_vs_distance(rows: Sequence[Mapping[str, Any]], *, title: str) -> Figure:
    """Accuracy deviation (%) against RFD with its bootstrap interval, one point per summary row.

    The verdict regions are shaded: left of ``PRESERVE_BELOW`` a model "preserves" the function if its whole
    interval lies there, right of ``INDEPENDENT_ABOVE`` it is "independent-like" if its whole interval lies there;
    the dashed line at RFD = 1 is where independently trained models sit. Points are coloured by role
    (:data:`funclens.plan.ROLES`; rows without one by their method). Rows without a finite RFD and accuracy
    deviation are left out, and the figure says how many.

    Args:
        rows: dicts with ``method``, ``setting``, ``accuracy_deviation_pct``, ``rfd``, ``rfd_ci`` (``[lo, hi]``),
            optionally ``role`` and ``accuracy_deviation_std`` (drawn as a vertical error bar), as in
            ``summary.json``.
        title: the axes title.

    Returns:
        a ``matplotlib.figure.Figure``.

    Example:
        >>> fig = plot_accuracy_vs_distance([{"method": "quantize", "setting": "8-bit", "rfd": 0.1,
        ...                                   "rfd_ci": [0.05, 0.2], "accuracy_deviation_pct": -0.1}], title="demo")
        >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()][0]
        'quantization'
    """
    fig = Figure(figsize=(7.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    styles, skipped, xmax = _draw_rows(ax, rows)
    _draw_regions(ax, xmax)
    _set_scales(ax, rows, xmax)
    handles = [Line2D([], [], color=c, marker="o", ls="", label=text) for text, c in styles.items()]
    handles += [Patch(color="tab:green", alpha=0.25, label=f"preserves: CI upper end < {PRESERVE_BELOW}"),
                Patch(color="tab:red", alpha=0.25, label=f"independent-like: CI lower end > {INDEPENDENT_ABOVE}")]
    ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.85)
    if not styles:
        ax.text(0.5, 0.5, "no rows with a finite RFD", transform=ax.transAxes, ha="center", va="center")
    if skipped:
        ax.text(0.99, 0.01, f"{skipped} row(s) without a finite RFD not shown", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=7, color="0.4")
    ax.set_xlabel("relative functional distance to the base (RFD, 95% bootstrap CI)")
    ax.set_ylabel("accuracy deviation from the base (%)")
    ax.set_title(title)
    return fig


def plot_distance_matrix(dist: np.ndarray, points: Sequence[Mapping[str, Any]], *, metric: str,
                         title: str) -> Figure:
    """Heatmap of the distances among final models, ordered by role, so clusters of similar functions show.

    Args:
        dist: ``[M, M]`` distances, e.g. :func:`funclens.pairwise.pairwise` of the final predictions.
        points: M dicts, one per row of ``dist``: ``role`` (a key of :data:`funclens.plan.ROLES`) and ``label``
            (e.g. the setting); rows and columns are shown in the roles' order, labelled letter + label.
        metric: the distance's name, for the colour bar (with its unit).
        title: the axes title.

    Returns:
        a ``matplotlib.figure.Figure``.

    Example:
        >>> fig = plot_distance_matrix(np.array([[0.0, 0.2], [0.2, 0.0]]),
        ...     [{"role": "quantize", "label": "8-bit"}, {"role": "base", "label": "seed=0"}],
        ...     metric="disagreement", title="demo")
        >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
        ['B seed=0', 'Q 8-bit']
    """
    dist = np.asarray(dist, dtype=np.float64)
    m = len(points)
    if dist.shape != (m, m):
        raise LandscapeError(f"need distances [M, M] and M point descriptions, got {dist.shape} and {m}")
    order = sorted(range(m), key=lambda i: (_ROLE_ORDER.get(points[i].get("role", ""), len(ROLES)), i))
    styles = [_role(points[i]) for i in order]
    labels = [f"{letter} {points[i].get('label', '')}".strip() for i, (letter, _, _) in zip(order, styles)]
    side = min(16.0, max(4.5, 0.25 * m + 2.5))   # inches: room for one label line per model
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(dist[np.ix_(order, order)], cmap="viridis", vmin=0.0, interpolation="nearest")
    ax.set_xticks(range(m), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(m), labels, fontsize=7)
    for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
        for t, (_, colour, _) in zip(ticks, styles):
            t.set_color(colour)
    fig.colorbar(im, ax=ax, shrink=0.8, label=f"{metric} ({METRIC_UNITS.get(metric, '')})")
    ax.set_title(title)
    return fig
