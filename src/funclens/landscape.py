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
import matplotlib.patheffects as pe
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter
from matplotlib.transforms import Bbox

from funclens.config import FunclensError
from funclens.metrics import METRIC_UNITS
from funclens.plan import ROLES
from funclens.pairwise import Preds, sqrt_gram
from funclens.rfd import CI, INDEPENDENT_ABOVE, PRESERVE_BELOW

# rows without a role (the Python API's) take the colour of the first role with their method
_ROLE_OF_METHOD = {r.method: r for r in reversed(ROLES.values())}
_ROLE_ORDER = {name: k for k, name in enumerate(ROLES)}


# gid of every text label placed by _place_labels: tests find them by it
LABEL_GID = "funclens-label"
# Where a label may go around its point: rings of offsets (points) tried nearest first, 16 directions each.
_RINGS = (7, 12, 18, 26, 36, 50, 68, 90, 120)
_ANGLES = np.deg2rad(np.arange(16) * 22.5 + 45.0)
# verdict -> colour of a point in the accuracy figure
VERDICT_COLOURS = {"preserves": "tab:green", "partial": "tab:orange", "independent-like": "tab:red",
                   "undetermined": "0.5", "yardstick": "tab:blue"}
_MARKERS = {"independent": "*", "student": "o", "control": "D", "quantize": "s", "prune": "^", "finetune": "v",
            "custom": "X", "fresh": "P", "start": "h", "noise": "d", "precision": "p"}


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


def _renderer(fig: Figure):
    """Draw ``fig`` once with Agg, settling its layout, then freeze the layout so that what is placed after
    stays where it was measured."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    fig.set_layout_engine("none")
    return fig.canvas.get_renderer()


def text_box(t: Text, renderer) -> Bbox:
    """The display-space box of a text or an annotation's text alone (an annotation's own extent includes its
    arrow), with the annotation's position brought up to date first.

    Args:
        t: a ``matplotlib.text.Text`` or ``Annotation`` on a drawn figure.
        renderer: the figure canvas's renderer.

    Example:
        >>> fig = Figure(); ax = fig.add_subplot(); r = _renderer(fig)
        >>> bool(text_box(ax.annotate("x", (0.5, 0.5)), r).width > 0)
        True
    """
    if hasattr(t, "update_positions"):
        t.update_positions(renderer)
    return Text.get_window_extent(t, renderer)


def _place_labels(fig: Figure, ax, items: Sequence[tuple[float, float, str, str]],
                  obstacles: Sequence[Any] = ()) -> None:
    """Put each ``(x, y, text, colour)`` label near its point where it overlaps no other label or obstacle and
    stays inside the axes (``obstacles``: other artists to keep clear of): rings of candidate offsets, nearest first (a greedy repel). A label placed far from
    its point gets a thin leader line. A label that finds no free place anywhere is drawn at its nearest place
    inside the axes, so no text is lost; with ``_RINGS`` up to 120 points this needs dozens of labels crowded
    into one spot.
    """
    r = _renderer(fig)
    ax.set_autoscale_on(False)   # leader lines must not move the limits the labels were measured in
    inner = ax.get_window_extent(r).padded(-2)
    anchors = ax.transData.transform([(x, y) for x, y, _, _ in items]) if items else np.zeros((0, 2))
    taken = [*(o.get_window_extent(r) for o in obstacles), *(Bbox.from_bounds(ax_ - 3, ay - 3, 6, 6) for ax_, ay in anchors)]
    scale = fig.dpi / 72.0
    for (x, y, text, colour), (px, py) in zip(items, anchors):
        t = ax.annotate(text, (x, y), xytext=(0, 0), textcoords="offset points", fontsize=7, color=colour,
                        va="center", ha="left", zorder=5, gid=LABEL_GID)
        first_inside = None
        for ring in _RINGS:
            for a in _ANGLES:
                dx, dy = ring * np.cos(a), ring * np.sin(a)
                t.set_ha("left" if dx > 1 else "right" if dx < -1 else "center")
                t.xyann = (dx, dy)
                bb = text_box(t, r)
                if not inner.contains(bb.x0, bb.y0) or not inner.contains(bb.x1, bb.y1):
                    continue
                first_inside = first_inside or (dx, dy, t.get_ha())
                if not any(bb.overlaps(o) for o in taken):
                    break
            else:
                continue
            break
        else:
            if first_inside:
                dx, dy, ha = first_inside
                t.set_ha(ha)
                t.xyann = (dx, dy)
        bb = text_box(t, r)
        taken.append(bb.padded(1))
        if np.hypot(*t.xyann) * scale > 14:
            cx, cy = np.clip(px, bb.x0, bb.x1), np.clip(py, bb.y0, bb.y1)
            (cx, cy), = ax.transData.inverted().transform([(cx, cy)])
            ax.plot([x, cx], [y, cy], color=colour, lw=0.5, alpha=0.6, zorder=4)


def _trajectories(points: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """Indices of the points of each trajectory (a point without one is its own), in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for i, pt in enumerate(points):
        key = pt.get("trajectory")
        groups.setdefault(("traj", key) if key is not None else ("single", i), []).append(i)
    return list(groups.values())


def plot_landscape(coords: np.ndarray, points: Sequence[Mapping[str, Any]], *, title: str) -> Figure:
    """The functional landscape figure: trajectories as thin lines with dots, final checkpoints as big letters.

    Args:
        coords: ``[M, 2]`` from :func:`embed`.
        points: M dicts, one per row of ``coords``: ``role`` (a key of :data:`funclens.plan.ROLES`: base,
            independent, student, control, quantize, prune, finetune, custom...), ``letter`` (B, I, D, C, Q, P,
            R, X...; defaults from the role), ``label`` (short text beside the final
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
    fig = Figure(figsize=(8.5, 6.5), layout="constrained")
    ax = fig.add_subplot()
    seen, labels, letters = _draw_trajectories(ax, coords, points)
    # text does not enter the data limits; register every point so letters are never cut off
    ax.update_datalim(coords)
    ax.margins(0.08)
    ax.autoscale_view()
    handles = [Line2D([], [], color=c, lw=0.7, marker=f"${ltr}$", markersize=9, label=f"{ltr}  {txt}")
               for ltr, c, txt in seen.values()]
    if handles:
        # outside the axes, so that no label has to avoid it
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, framealpha=0.85)
    ax.set_title(title)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_xticks([])
    ax.set_yticks([])
    _place_labels(fig, ax, labels, letters)
    return fig


def _draw_trajectories(ax: Any, coords: np.ndarray, points: Sequence[Mapping[str, Any]]
                       ) -> tuple[dict[str, tuple[str, str, str]], list[tuple[float, float, str, str]], list[Any]]:
    """Each trajectory as a thin line with dots and its final checkpoint as a big letter; returns the roles
    drawn (role -> letter, colour, legend text), the labels still to place beside letters, and the letters."""
    seen: dict[str, tuple[str, str, str]] = {}
    labels, letters = [], []
    for idx in _trajectories(points):
        idx = sorted(idx, key=lambda i: (points[i].get("epoch") or 0, i))
        letter, colour, text = _role(points[idx[-1]])
        role = points[idx[-1]].get("role", "other")
        seen.setdefault(role, (letter, colour, text))
        xy = coords[idx]
        if len(idx) > 1:
            ax.plot(xy[:, 0], xy[:, 1], "-", color=colour, lw=0.7, alpha=0.55, zorder=1)
            ax.scatter(xy[:-1, 0], xy[:-1, 1], s=5, color=colour, alpha=0.6, zorder=2, linewidths=0)
        x, y = xy[-1]
        # the base is what every other model is measured against: drawn last, on top, with a white halo
        on_top = role == "base"
        letters.append(ax.text(x, y, letter, color=colour, fontsize=17 if on_top else 15, fontweight="bold",
                               ha="center", va="center", zorder=7 if on_top else 4,
                               path_effects=[pe.withStroke(linewidth=3, foreground="white")] if on_top else None))
        if points[idx[-1]].get("label"):
            labels.append((x, y, str(points[idx[-1]]["label"]), colour))
    return seen, labels, letters


def landscape_html(coords: np.ndarray, points: Sequence[Mapping[str, Any]], *, title: str) -> str:
    """The functional landscape as one self-contained interactive HTML page (plotly, its script inlined, so it
    works offline): hovering a point names its run, epoch, label and test accuracy.

    Args:
        coords: ``[M, 2]`` from :func:`embed`.
        points: M dicts as for :func:`plot_landscape`, optionally with ``accuracy`` (a fraction) for the hover.
        title: the page's title.

    Returns:
        the HTML text.

    Example:
        >>> page = landscape_html(np.zeros((1, 2)), [{"role": "base", "trajectory": "train_ab", "epoch": 3,
        ...                                           "accuracy": 0.97}], title="demo")
        >>> "train_ab" in page, "<script src=" in page     # the script is inline: no network needed
        (True, False)
    """
    import plotly.graph_objects as go   # late: only the interactive page needs it

    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(points):
        raise LandscapeError(f"need coords [M, 2] and M point descriptions, got {coords.shape} and {len(points)}")
    fig = go.Figure()
    by_role: dict[str, list[int]] = {}
    for i, pt in enumerate(points):
        by_role.setdefault(str(pt.get("role", "other")), []).append(i)
    for role in sorted(by_role, key=lambda r: (r == "base", _ROLE_ORDER.get(r, len(ROLES)))):  # base on top
        idx = by_role[role]
        letter, colour, text = _role(points[idx[0]])
        final = [bool(points[i].get("final", True)) for i in idx]
        acc = [points[i].get("accuracy") for i in idx]
        fig.add_trace(go.Scatter(
            x=coords[idx, 0], y=coords[idx, 1], mode="markers", name=f"{letter} {text}",
            marker={"color": _css_colour(colour), "size": [13 if f else 5 for f in final],
                    "symbol": "diamond" if role == "base" else "circle", "line": {"width": 1, "color": "white"}},
            customdata=[[points[i].get("trajectory") or "", points[i].get("epoch", ""), points[i].get("label") or "",
                         "" if a is None else f"{100 * float(a):.2f}%"] for i, a in zip(idx, acc)],
            hovertemplate="run %{customdata[0]}<br>epoch %{customdata[1]}<br>%{customdata[2]}<br>"
                          "test accuracy %{customdata[3]}<extra></extra>"))
    fig.update_layout(title=title, xaxis={"title": "t-SNE 1", "showticklabels": False},
                      yaxis={"title": "t-SNE 2", "showticklabels": False}, template="plotly_white")
    return fig.to_html(include_plotlyjs=True, full_html=True)


def _css_colour(colour: str) -> str:
    """A matplotlib colour name as CSS hex."""
    from matplotlib.colors import to_hex

    return to_hex(colour)


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


def _draw_rows(ax, rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, str], list, int, float]:
    """One point with its interval per plottable row, coloured by its verdict, shaped by its role; returns the
    roles drawn (legend text -> marker), the labels to place, rows skipped, and the x extent."""
    shapes: dict[str, str] = {}
    labels: list[tuple[float, float, str, str]] = []
    skipped, xmax = 0, 1.15
    for row in rows:
        pt = _plottable(row)
        if pt is None:
            skipped += 1
            continue
        r, acc, lo, hi = pt
        _, _, text = _role(row)
        marker = _MARKERS.get(str(row.get("role")), "o")
        shapes.setdefault(text, marker)
        colour = VERDICT_COLOURS.get(str(row.get("verdict")), "0.5")
        std = row.get("accuracy_deviation_std")
        ax.errorbar([r], [acc], xerr=[[max(r - lo, 0.0)], [max(hi - r, 0.0)]],
                    yerr=None if std is None else [[std], [std]], fmt=marker, color=colour, ms=6, capsize=3,
                    elinewidth=1.2, mec="black", mew=0.4, zorder=3)
        labels.append((r, acc, str(row.get("setting", "")), "0.15"))
        xmax = max(xmax, hi * 1.05, r * 1.05)
    return shapes, labels, skipped, xmax


def _draw_regions(ax) -> list:
    """The verdict thresholds (applied to each interval, not to the point), and where independents sit; returns
    their texts."""
    texts = []
    for x, text in ((PRESERVE_BELOW, f" preserves if CI < {PRESERVE_BELOW}"),
                    (INDEPENDENT_ABOVE, f" independent-like if CI > {INDEPENDENT_ABOVE}"),
                    (1.0, " independent models")):
        ax.axvline(x, color="0.35" if x == 1.0 else "0.6", ls="--" if x == 1.0 else ":", lw=1, zorder=1)
        texts.append(ax.text(x, 0.99, text, transform=ax.get_xaxis_transform(), rotation=90, ha="right",
                             va="top", fontsize=7, color="0.35"))
    ax.axhline(0.0, color="0.6", lw=0.7, zorder=1)
    return texts


def _set_scales(ax, rows: Sequence[Mapping[str, Any]], xmax: float) -> tuple[str, str]:
    """Axis scales and the words each axis label needs to say which scale it is."""
    # Heavily pruned models can sit at RFD 100 and -80% accuracy, squeezing every other model into a corner:
    # past these bounds the axes turn logarithmic, keeping the region that decides verdicts linear.
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    xnote = ynote = ""
    # a margin left of 0 and around the extremes keeps markers at the ends whole
    if xmax > 4.0:
        ax.set_xscale("symlog", linthresh=2.0, linscale=2.0)
        ax.xaxis.set_major_formatter(plain)
        ax.set_xlim(-0.1, xmax * 1.3)
        xnote = "\nsymlog scale: linear below 2, logarithmic above"
    else:
        ax.set_xlim(-0.04 * xmax, xmax * 1.03)
    devs = [float(d) for d in (row.get("accuracy_deviation_pct") for row in rows) if d is not None
            and np.isfinite(d)]
    if any(abs(d) > 10 for d in devs):
        ax.set_yscale("symlog", linthresh=1.0)
        ax.yaxis.set_major_formatter(plain)
        ynote = "\nsymlog scale: linear within ±1, logarithmic beyond"
    ax.margins(y=0.15)
    return xnote, ynote


def plot_accuracy_vs_distance(rows: Sequence[Mapping[str, Any]], *, title: str) -> Figure:
    """Accuracy deviation (%) against RFD with its bootstrap interval, one point per summary row.

    Each point is coloured by its verdict (:data:`VERDICT_COLOURS`), which is decided by its whole interval:
    dotted lines mark the thresholds the interval is held against, the dashed line at RFD = 1 is where
    independently trained models sit. The marker's shape is the row's role. Labels are placed so that none
    overprints another. Rows without a finite RFD and accuracy deviation are left out, and the figure says how
    many.

    Args:
        rows: dicts with ``method``, ``setting``, ``accuracy_deviation_pct``, ``rfd``, ``rfd_ci`` (``[lo, hi]``),
            optionally ``role``, ``verdict`` and ``accuracy_deviation_std`` (drawn as a vertical error bar), as
            in ``summary.json``.
        title: the axes title.

    Returns:
        a ``matplotlib.figure.Figure``.

    Example:
        >>> fig = plot_accuracy_vs_distance([{"method": "quantize", "setting": "8-bit", "rfd": 0.1,
        ...                                   "rfd_ci": [0.05, 0.2], "accuracy_deviation_pct": -0.1,
        ...                                   "verdict": "preserves"}], title="demo")
        >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()][:2]
        ['quantization', 'preserves']
    """
    fig = Figure(figsize=(8.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    shapes, labels, skipped, xmax = _draw_rows(ax, rows)
    notes = _draw_regions(ax)
    xnote, ynote = _set_scales(ax, rows, xmax)
    verdicts = list(dict.fromkeys(str(r.get("verdict")) for r in rows if r.get("verdict") in VERDICT_COLOURS))
    handles = [Line2D([], [], color="0.5", marker=m, ls="", mec="black", mew=0.4, label=text)
               for text, m in shapes.items()]
    handles += [Line2D([], [], color=VERDICT_COLOURS[v], marker="o", ls="", label=v) for v in verdicts]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, framealpha=0.85,
              title="shape: role; colour: verdict", title_fontsize=7)
    if not shapes:
        ax.text(0.5, 0.5, "no rows with a finite RFD", transform=ax.transAxes, ha="center", va="center")
    if skipped:
        notes.append(ax.text(0.99, 0.01, f"{skipped} row(s) without a finite RFD not shown",
                             transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="0.4"))
    ax.set_xlabel(f"relative functional distance to the base (RFD, {CI:.0%} bootstrap CI){xnote}")
    ax.set_ylabel(f"accuracy deviation from the base (%){ynote}")
    ax.set_title(title)
    _place_labels(fig, ax, labels, notes)
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
