"""Per-layer attribution: which layer's compression moves the function.

The whole model is compressed once; then each Conv2d or Linear layer in turn takes its compressed weights while
every other layer keeps the original ones (mode ``only``), and separately every layer but that one takes them
(mode ``all-but``). Each hybrid is compared with the base's predictions on the test set: ``flips`` (the fraction
of test inputs whose correctness changed, both directions together), ``disagreement`` (top-1 differs) and ``kl``
(mean KL(base || model), nats). A layer whose ``only`` model moves furthest is the most harmful; its ``all-but``
model, which spares that layer, should sit nearest the base.

Per-channel and per-layer schemes (8-bit, 4-bit, 16-bit, bf16, layer-wise pruning) compress each layer on its
own, so a layer's compressed weights are the same in every hybrid. Global pruning shares one threshold over all
layers: ``only`` then prunes that layer as the global threshold would.

:func:`attribute` is pure (a model, images and predictions in, rows out); :func:`write_attribution` writes the
table and the chart; :func:`attribute_run` reads a finished training run through the store.

Example:
    >>> import torch
    >>> from funclens.config import QuantCfg
    >>> torch.manual_seed(0) and None
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> x = torch.randn(50, 1, 2, 2)
    >>> def predict(m):
    ...     return torch.softmax(m(x), 1).detach().numpy()
    >>> rows = attribute(net, QuantCfg("8-bit"), predict, predict(net), np.zeros(50, int))
    >>> [(r.layer, r.mode) for r in rows if r.rank == 1][0][1], len(rows)
    ('only', 4)
"""

from __future__ import annotations

import copy
import csv
import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from funclens import metrics, paths
from funclens.compress import compress, weight_layers
from funclens.config import QUANT_SCHEMES, ConfigError, PruneCfg, QuantCfg
from funclens.errors import StoreError
from funclens.store import Store, atomic_write_bytes, atomic_write_text

MODES = ("only", "all-but")
COLUMNS = ("rank", "layer", "mode", "flips", "disagreement", "kl", "flips_rel", "disagreement_rel", "kl_rel")

Predict = Callable[[nn.Module], np.ndarray]  # model -> softmax [N, C] on the test set


@dataclass(frozen=True)
class LayerEffect:
    """How far one hybrid model sits from the base; ``*_rel``: divided by the mean base-independent distance."""

    layer: str
    mode: str            # "only": this layer compressed alone; "all-but": every layer but this one
    flips: float         # fraction of test inputs whose correctness changed, both directions
    disagreement: float  # fraction of test inputs whose top-1 label changed
    kl: float            # mean KL(base || model), nats
    rank: int = 0        # the layer's place, 1 = most harmful
    flips_rel: float | None = None
    disagreement_rel: float | None = None
    kl_rel: float | None = None


def parse_compress(text: str) -> QuantCfg | PruneCfg:
    """The compression ``--compress`` names: a quantization scheme (``8-bit``, ``4-bit``, ``16-bit``, ``bf16``) or
    ``prune:AMOUNT`` / ``prune:global:AMOUNT`` (a fraction in (0, 1)).

    Args:
        text: the option's value.

    Example:
        >>> parse_compress("prune:0.5")
        PruneCfg(amount=0.5, scope='layer', last=True)
        >>> parse_compress("2-bit")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        funclens.errors.ConfigError: --compress must be 8-bit, 4-bit, 16-bit, bf16 or prune:AMOUNT ..., got '2-bit'
    """
    schemes = [s for s in QUANT_SCHEMES if s != "dynamic-int8"]  # torch's own modules: no per-layer state to swap
    if text in schemes:
        return QuantCfg(text)
    head, _, amount = text.rpartition(":")
    if head in ("prune", "prune:global"):
        try:
            value = float(amount)
        except ValueError:
            value = float("nan")
        return PruneCfg(value, scope="global" if head == "prune:global" else "layer")
    raise ConfigError(f"--compress must be 8-bit, 4-bit, 16-bit, bf16 or prune:AMOUNT (prune:global:AMOUNT), "
                      f"got {text!r}")


def _hybrid(model: nn.Module, compressed: dict, prefixes: list[str]) -> nn.Module:
    """``model`` with the compressed tensors of the layers named by ``prefixes`` (a copy; ``model`` unchanged)."""
    state = {k: (compressed[k] if any(k.startswith(p + ".") for p in prefixes) else v)
             for k, v in model.state_dict().items()}
    out = copy.deepcopy(model).float().cpu()
    out.load_state_dict(state)
    return out


def effect(base: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """(flips, disagreement, kl) of ``probs`` against ``base`` on inputs with true ``labels``.

    Args:
        base: the base's softmax ``[N, C]``.
        probs: another model's softmax ``[N, C]``.
        labels: true labels ``[N]``.

    Example:
        >>> eye = np.eye(2)
        >>> effect(eye[[0, 0, 1]], eye[[0, 1, 1]], np.array([0, 0, 0]))[:2]
        (0.3333333333333333, 0.3333333333333333)
    """
    c2w, w2c = metrics.flips(base, probs, labels)
    return ((c2w + w2c) / len(labels), metrics.distance(base, probs, "disagreement"),
            metrics.distance(base, probs, "kl"))


def attribute(model: nn.Module, cfg: QuantCfg | PruneCfg, predict: Predict, base: np.ndarray,
              labels: np.ndarray) -> list[LayerEffect]:
    """Every layer's effect, compressed alone and spared alone, ranked: the most harmful layer first.

    Layers are ranked by the KL of their ``only`` model (then its disagreement, then its flips; the layer's
    name breaks exact ties); each layer's ``only`` row comes before its ``all-but`` row.

    Args:
        model: the trained model (left unchanged).
        cfg: the compression.
        predict: the model's softmax on the test set, ``[N, C]``.
        base: the base's predictions ``[N, C]`` (the run's own stored ones).
        labels: the test set's true labels ``[N]``.
    """
    compressed, info = compress(model, cfg)
    if not info.loadable:
        raise ConfigError(f"{info.setting} replaces modules; attribution needs a per-layer weight format")
    state = compressed.state_dict()
    names = [n for n, _ in weight_layers(model)]
    rows = []
    for name in names:
        for mode, chosen in (("only", [name]), ("all-but", [n for n in names if n != name])):
            rows.append(LayerEffect(name, mode, *effect(base, predict(_hybrid(model, state, chosen)), labels)))
    only = sorted((r for r in rows if r.mode == "only"), key=lambda r: (-r.kl, -r.disagreement, -r.flips, r.layer))
    place = {r.layer: i + 1 for i, r in enumerate(only)}
    return sorted((replace(r, rank=place[r.layer]) for r in rows), key=lambda r: (r.rank, MODES.index(r.mode)))


def relative(rows: list[LayerEffect], yardstick: tuple[float, float, float]) -> list[LayerEffect]:
    """``rows`` with ``*_rel`` set: each distance over the mean base-independent one (flips, disagreement, kl).

    Args:
        rows: attribution rows.
        yardstick: the mean of :func:`effect` over the independent models.

    Example:
        >>> relative([LayerEffect("fc", "only", 0.1, 0.2, 0.4)], (0.2, 0.4, 0.8))[0].kl_rel
        0.5
    """
    def ratio(a: float, b: float) -> float | None:
        return a / b if b > 0 else None

    f, d, k = yardstick
    return [replace(r, flips_rel=ratio(r.flips, f), disagreement_rel=ratio(r.disagreement, d),
                    kl_rel=ratio(r.kl, k)) for r in rows]


def _cell(v: object) -> str:
    return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))


def write_attribution(out: Path, rows: list[LayerEffect], title: str) -> tuple[Path, Path]:
    """``out/attribution.csv`` (:data:`COLUMNS`, in the rows' order) and the bar chart ``out/attribution.png``.

    Args:
        out: the output folder (made if missing).
        rows: ranked rows from :func:`attribute`.
        title: the chart's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows([_cell(getattr(r, c)) for c in COLUMNS] for r in rows)
    atomic_write_text(paths.attribution_table(out), buf.getvalue())
    layers = list(dict.fromkeys(r.layer for r in rows))
    kl = {(r.layer, r.mode): r.kl for r in rows}
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(layers)))
    y = np.arange(len(layers))
    ax.barh(y - 0.2, [kl[(n, "only")] for n in layers], 0.4, label="this layer compressed alone", color="tab:red")
    ax.barh(y + 0.2, [kl[(n, "all-but")] for n in layers], 0.4, label="every layer but this one", color="tab:blue")
    ax.set_yticks(y, layers)
    ax.invert_yaxis()  # the most harmful layer on top
    ax.set_xlabel("mean KL(base || model), nats")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(paths.attribution_figure(out), png.getvalue())
    return paths.attribution_table(out), paths.attribution_figure(out)


def _yardstick(store: Store, run_id: str, base: np.ndarray, labels: np.ndarray) -> tuple[float, float, float] | None:
    """The mean :func:`effect` of the run's study's other uncompressed models (base and independents) against
    the run; None when the run belongs to no study or is not one of its uncompressed models."""
    try:
        planned = store.read_study()["runs"]
    except StoreError:
        return None
    mates = [r["run"] for r in planned if r["role"] in ("base", "independent")]
    if run_id not in mates:
        return None
    others = []
    for rid in mates:
        if rid != run_id and store.is_done(rid) and not store.verify_run(rid):
            others.append(effect(base, store.load_preds(rid).astype(np.float32), labels))
    return tuple(float(v) for v in np.mean(others, axis=0)) if others else None  # type: ignore[return-value]


def attribute_run(run_dir: Path, cfg: QuantCfg | PruneCfg, out: Path, *, data_dir: Path | None = None,
                  offline: bool = False) -> tuple[list[LayerEffect], bool]:
    """Attribute a finished training run's compression to its layers and write ``out/attribution.csv`` and
    ``out/attribution.png``. Returns the rows and whether they hold distances relative to the study's
    independent models.

    Args:
        run_dir: the run's folder, ``STUDY/runs/<id>``; it is verified against its DONE first.
        cfg: the compression (see :func:`parse_compress`).
        out: where the table and chart go.
        data_dir: canonical data files (default: funclens's data folder).
        offline: never download data.
    """
    from funclens.data import load_from_cfg
    from funclens.models import create_model
    from funclens.train import infer

    run_dir = Path(run_dir)
    if not run_dir.is_dir() or run_dir.parent.name != paths.runs_dir(Path()).name:
        raise StoreError(f"{run_dir} is not a run folder (STUDY/runs/<id>)")
    store, rid = Store(run_dir.parent.parent), run_dir.name
    problems = store.verify_run(rid)
    if problems:
        raise StoreError(problems[0])
    spec = store.load_spec(rid)
    if spec.kind != "train":
        raise ConfigError(f"run {rid} is a {spec.kind} run; attribute compresses a training run's model")
    data = load_from_cfg(spec.data, data_dir, offline)
    model = create_model(spec.model.arch, in_shape=data.in_shape, num_classes=data.num_classes)
    model.load_state_dict(store.load_model_state(rid))
    base, labels = store.load_preds(rid).astype(np.float32), data.test_y.numpy()
    if base.shape[0] != len(labels):
        raise StoreError(f"run {rid}: {base.shape[0]} stored predictions, but the data hold {len(labels)} test images")

    def predict(m: nn.Module) -> np.ndarray:
        return torch.softmax(infer(m, data.test_x, data), dim=1).numpy()

    rows = attribute(model, cfg, predict, base, labels)
    yard = _yardstick(store, rid, base, labels)
    if yard is not None:
        rows = relative(rows, yard)
    setting = cfg.scheme if isinstance(cfg, QuantCfg) else f"{cfg.scope} L1 pruning {cfg.amount:g}"
    write_attribution(out, rows, f"{spec.model.arch} {rid}: {setting}, one layer at a time")
    return rows, yard is not None
