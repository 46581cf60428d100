"""docs/fit.py, the fit search: its score on the paper's own numbers, and one tiny search on real MNIST."""

import importlib.util
import re

import pytest
import torch

from conftest import REPO

_spec = importlib.util.spec_from_file_location("fit", REPO / "docs" / "fit.py")
fit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fit)


@pytest.fixture(autouse=True)
def restore_threads():
    was = torch.get_num_threads()
    yield
    torch.set_num_threads(was)  # the search trains on one thread, as a study's runs do


def test_the_papers_own_cells_score_full():
    for ds, paper in fit.PAPER.items():
        assert fit.score(paper["cells"], paper["cells"]) == (7, 7, 0.0)
    exact = {(ds, "sgd", True): {"base": p["base"], "quant": {k: p["cells"][k] for k in fit.QUANT},
                                 "prune": {s: {k: v for k, v in p["cells"].items() if k.endswith("%")}
                                           for s in fit.SCOPES}}
             for ds, p in fit.PAPER.items()}
    rows = fit.candidates(exact, list(fit.PAPER), fit.TOLERANCE)
    assert [(r["within"], r["cells"], r["mad"]) for r in rows] == [(14, 14, 0.0)] * len(fit.SCOPES)


def test_the_score_counts_cells_within_the_tolerance_and_averages_the_differences():
    paper = fit.PAPER["cifar10"]["cells"]
    ours = {**paper, "70%": paper["70%"] - 3.0, "90%": paper["90%"] + 1.5}
    within, n, mad = fit.score(ours, paper)
    assert (within, n) == (6, 7) and mad == pytest.approx(4.5 / 7)
    assert fit.score(ours, paper, tolerance=3.0)[0] == 7
    with pytest.raises(ValueError, match="90%"):
        fit.score({k: v for k, v in paper.items() if k != "90%"}, paper)
    assert fit.deviation(0.5, 0.5) == 0.0 and fit.deviation(0.45, 0.5) == pytest.approx(-10.0)


def _table(text: str, first_cell: str) -> list[list[str]]:
    """The rows of the Markdown table whose header starts with ``first_cell``, as lists of cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_a_tiny_search_on_real_mnist(shared_data, tmp_path):
    out = tmp_path / "fit.md"
    argv = ["--data-dir", str(shared_data), "--datasets", "mnist", "--epochs", "1", "--train-subset", "1000",
            "--test-subset", "500", "--recipes", "sgd", "adam", "--out", str(out)]
    assert fit.main(argv) == 0
    text = out.read_text()
    assert "docs/fit.py --data-dir" in text and re.search(r"Commit: [0-9a-f]{7}", text)
    ranked = _table(text, "rank")
    assert len(ranked) == 2 * len(fit.SCOPES)  # recipes x scopes
    assert {(r[1], r[3], r[4]) for r in ranked} == {(rec, s, "pruned" if last else "kept")
                                                    for rec in ("sgd", "adam") for s, last in fit.SCOPES}
    cells = _table(text, "candidate")
    paper = [float(v) for v in cells[0][2:]]
    assert paper == list(fit.PAPER["mnist"]["cells"].values())
    for rank, row in zip(ranked, cells[1:], strict=True):
        # each score is the score of the candidate's printed cells (rounded to 0.01) against the paper's
        ours = dict(zip(fit.PAPER["mnist"]["cells"], (float(v) for v in row[2:])))
        within, n, mad = fit.score(ours, fit.PAPER["mnist"]["cells"])
        assert rank[6] == f"{within}/{n}" and float(rank[7]) == pytest.approx(mad, abs=0.01)
        worst = max(abs(ours[k] - v) for k, v in fit.PAPER["mnist"]["cells"].items())
        assert float(rank[8]) == pytest.approx(worst, abs=0.01)
        # its ranks under the other tolerances: a rank each, among the candidates
        assert all(1 <= int(x) <= len(ranked) for x in rank[9].split(" / ")) and rank[9].count("/") == 2
        assert 10.0 < float(rank[5]) <= 100.0  # the base's accuracy in %
    keys = [(int(r[6].split("/")[0]), -float(r[7])) for r in ranked]
    assert keys == sorted(keys, reverse=True)


def test_bad_options_are_one_line_and_exit_2(capsys):
    assert fit.main(["--recipes", "rmsprop"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rmsprop" in err and "sgd-momentum" in err
    assert fit.main(["--datasets", "mnist", "--epochs", "0"]) == 2


def test_an_out_that_cannot_be_written_is_refused_before_the_search(tmp_path, capsys):
    for out in (tmp_path / "absent" / "fit.md", tmp_path):  # a missing folder; a folder, not a file
        assert fit.main(["--datasets", "mnist", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {out}: not a file in a writable folder") and err.count("\n") == 1


def test_measured_bases_are_kept_reused_and_checked(shared_data, tmp_path, monkeypatch, capsys):
    measured, out = tmp_path / "measured.json", tmp_path / "fit.md"
    argv = ["--data-dir", str(shared_data), "--datasets", "mnist", "--epochs", "1", "--train-subset", "500",
            "--test-subset", "300", "--recipes", "sgd", "--measured", str(measured), "--out", str(out)]
    assert fit.main(argv) == 0
    first = out.read_text()
    assert re.search(r"bases trained at: MNIST [0-9a-f]{7}", first)
    kept = measured.read_bytes()

    def no_training(*a, **k):
        raise AssertionError("a base held by --measured was trained again")

    monkeypatch.setattr(fit, "measure", no_training)
    assert fit.main(argv) == 0
    assert out.read_text() == first and measured.read_bytes() == kept  # the same table from the same figures
    # another epoch count is another base: not taken from the file
    with pytest.raises(AssertionError, match="trained again"):
        fit.main([*argv[:5], "2", *argv[6:]])
    capsys.readouterr()
    # an edited figure, a damaged file, a folder: one line, exit 2, and the file is left as it was
    edited = kept.replace(b'"base": ', b'"base": 1', 1)
    for bad in (edited, kept[: len(kept) // 2], b"[]"):
        measured.write_bytes(bad)
        assert fit.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a --measured file" in err and measured.read_bytes() == bad
    assert fit.main([*argv[:-4], "--measured", str(tmp_path)]) == 2
    assert "not a file in a writable folder" in capsys.readouterr().err
