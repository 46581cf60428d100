"""Compression-identified exemplars (Hooker et al. 2019, *What do compressed deep neural networks forget?*):
test inputs where the modal label of a setting's compressed models differs from the modal label of the
uncompressed models (the base and the independent models). Pure functions of prediction arrays.

A population of one (a study without ``compress_all_seeds``: the base's compressed model alone) still gives
exemplars, but then "modal" is that one model's label, and a single model's noise cannot be told from what the
setting does to every model; :data:`COLUMNS`' ``population`` column says how many compressed models voted.

Example:
    >>> import numpy as np
    >>> eye = np.eye(3)
    >>> unc = [eye[[0, 1, 2]], eye[[0, 1, 2]], eye[[0, 1, 1]]]
    >>> comp = [eye[[0, 2, 2]], eye[[0, 2, 2]]]
    >>> [(e.index, e.modal_uncompressed, e.modal_compressed, e.share) for e in exemplars(unc, comp)]
    [(1, 1, 2, 1.0)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from funclens.errors import MetricsError
from funclens.metrics import top1_margin

COLUMNS = ("setting", "index", "true_label", "modal_uncompressed", "modal_compressed", "share", "base_margin",
           "population")


@dataclass(frozen=True)
class Exemplar:
    """One test input whose modal label a setting changed."""

    index: int               # position in the test set (dataset order)
    modal_uncompressed: int  # the most frequent top-1 label of the uncompressed models (ties: the smallest)
    modal_compressed: int    # the same over the setting's compressed models
    share: float             # fraction of the compressed models whose top-1 differs from modal_uncompressed
    base_margin: float       # the base's top-1 minus top-2 probability on this input
    true_label: int | None = None


def modal_labels(preds: Sequence[np.ndarray]) -> np.ndarray:
    """The most frequent top-1 label of each input over ``preds`` (ties go to the smallest label).

    Args:
        preds: prediction arrays ``[N, C]`` of several models.

    Example:
        >>> import numpy as np
        >>> eye = np.eye(3)
        >>> modal_labels([eye[[0, 1]], eye[[2, 1]], eye[[2, 0]]]).tolist()
        [2, 1]
    """
    if not len(preds):
        raise MetricsError("modal labels need at least one model")
    top = np.stack([np.asarray(p).argmax(axis=1) for p in preds])          # [models, N]
    counts = np.stack([(top == c).sum(axis=0) for c in range(np.asarray(preds[0]).shape[1])])  # [C, N]
    return counts.argmax(axis=0)


def exemplars(uncompressed: Sequence[np.ndarray], compressed: Sequence[np.ndarray],
              labels: np.ndarray | None = None) -> list[Exemplar]:
    """Inputs whose modal label the compressed models changed, most striking first.

    Ranked by ``share`` (the compressed models that leave the uncompressed modal label, more first), then by
    the base's margin (inputs the base was surer of first: a change there is not a coin flip), then by index.

    Args:
        uncompressed: the base's predictions first, then the independent models' (``[N, C]`` each).
        compressed: the setting's compressed models' predictions.
        labels: the true labels ``[N]``, when known.

    Example:
        >>> import numpy as np
        >>> eye = np.eye(2)
        >>> [e.index for e in exemplars([eye[[0, 1, 1]]], [eye[[1, 0, 1]]], labels=np.array([0, 1, 1]))]
        [0, 1]
    """
    if not len(uncompressed) or not len(compressed):
        raise MetricsError("exemplars need at least one uncompressed and one compressed model")
    shape = np.asarray(uncompressed[0]).shape
    if any(np.asarray(p).shape != shape for p in [*uncompressed, *compressed]):
        raise MetricsError("exemplars need prediction arrays of one shape [N, C]")
    ref, mod = modal_labels(uncompressed), modal_labels(compressed)
    share = np.mean([np.asarray(p).argmax(axis=1) != ref for p in compressed], axis=0)
    base_margin = top1_margin(uncompressed[0])
    idx = np.flatnonzero(mod != ref)
    order = idx[np.lexsort((idx, -base_margin[idx], -share[idx]))]
    return [Exemplar(int(i), int(ref[i]), int(mod[i]), float(share[i]), float(base_margin[i]),
                     None if labels is None else int(labels[i])) for i in order]


def exemplar_rows(setting: str, found: Sequence[Exemplar], population: int) -> list[list[str]]:
    """CSV rows (without the header, :data:`COLUMNS`) for one setting's exemplars.

    Args:
        setting: the setting's name, e.g. ``"8-bit"``.
        found: its exemplars, ranked.
        population: how many compressed models voted.

    Example:
        >>> exemplar_rows("8-bit", [Exemplar(4, 1, 2, 1.0, 0.25)], 1)
        [['8-bit', '4', '', '1', '2', '1', '0.25', '1']]
    """
    return [[setting, str(e.index), "" if e.true_label is None else str(e.true_label), str(e.modal_uncompressed),
             str(e.modal_compressed), f"{e.share:.6g}", f"{e.base_margin:.6g}", str(population)] for e in found]
