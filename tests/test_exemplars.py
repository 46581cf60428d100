"""Compression-identified exemplars by hand on tiny arrays."""

from __future__ import annotations

import numpy as np
import pytest

from funclens.errors import MetricsError
from funclens.exemplars import exemplar_rows, exemplars, modal_labels


def probs(labels: list[int], top: list[float], c: int = 3) -> np.ndarray:
    """Softmax rows with ``top`` on each label and the rest spread evenly."""
    out = np.empty((len(labels), c))
    for i, (l, p) in enumerate(zip(labels, top)):
        out[i] = (1 - p) / (c - 1)
        out[i, l] = p
    return out


def test_exemplars_by_hand():
    # 5 inputs; the base and two independents vote 0, 1, 2, 0, 1 (the third independent dissents on input 4)
    base = probs([0, 1, 2, 0, 1], [0.9, 0.6, 0.8, 0.5, 0.7])
    unc = [base, probs([0, 1, 2, 0, 1], [0.9] * 5), probs([0, 1, 2, 0, 2], [0.9] * 5)]
    # three compressed models: input 1 changes in all three, input 3 in two, input 2 in one, input 4 in two
    comp = [probs([0, 2, 2, 1, 2], [0.9] * 5), probs([0, 2, 1, 1, 2], [0.9] * 5), probs([0, 2, 2, 0, 1], [0.9] * 5)]
    found = exemplars(unc, comp, labels=np.array([0, 1, 2, 0, 2]))
    # modal compressed: 0, 2, 2, 1, 2 -> inputs 1, 3, 4 change (input 2 keeps its mode: one of three left it)
    # shares 3/3, 2/3, 2/3; inputs 3 and 4 tie on share, and the base is surer of input 4 (margin 0.55 vs 0.25)
    assert [e.index for e in found] == [1, 4, 3]
    assert [e.share for e in found] == pytest.approx([1.0, 2 / 3, 2 / 3])
    modes = [(e.modal_uncompressed, e.modal_compressed, e.true_label) for e in found]
    assert modes == [(1, 2, 1), (1, 2, 2), (0, 1, 0)]
    assert found[0].base_margin == pytest.approx(0.6 - 0.2)
    assert exemplar_rows("8-bit", found[:1], 3) == [["8-bit", "1", "1", "1", "2", "1", "0.4", "3"]]


def test_population_of_one_and_ties():
    eye = np.eye(3)
    # ties go to the smallest label: votes (2, 1) -> 1
    assert modal_labels([eye[[2]], eye[[1]]]).tolist() == [1]
    found = exemplars([eye[[0, 1]]], [eye[[0, 2]]])
    assert [(e.index, e.share, e.true_label) for e in found] == [(1, 1.0, None)]
    assert exemplar_rows("30%", found, 1)[0][2] == ""  # no labels: the column stays empty
    assert exemplars([eye[[0, 1]]], [eye[[0, 1]]]) == []


def test_exemplars_refuse_bad_input():
    eye = np.eye(3)
    with pytest.raises(MetricsError):
        exemplars([], [eye])
    with pytest.raises(MetricsError):
        exemplars([eye], [eye[:2]])
