"""docs/reproduction.py: each study's tables go between its own markers, the others' stay as they were."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def reproduction(doc: Path):
    spec = importlib.util.spec_from_file_location("reproduction", DOCS / "reproduction.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.DOC = doc
    return mod


def test_a_study_replaces_its_own_blocks_and_leaves_the_others(small_reported, tmp_path):
    doc = tmp_path / "R.md"
    kept = "<!-- table:other -->\nthe other study's table, by hand\n<!-- /table:other -->"
    doc.write_text(f"head\n<!-- tables:start -->\n{kept}\n\n<!-- tables:end -->\n"
                   "<!-- where:small -->\nold\n<!-- /where:small -->\ntail\n")
    mod = reproduction(doc)
    mod.main([str(small_reported)])
    once = doc.read_text()
    assert kept in once and once.startswith("head\n") and once.endswith("tail\n")
    table = once.split("<!-- table:small -->\n")[1].split("<!-- /table:small -->")[0]
    summary = json.loads((small_reported / "summary.json").read_text())
    assert f"base accuracy {100 * summary['base']['accuracy']:.2f}% here" in table
    where = once.split("<!-- where:small -->\n")[1].split("<!-- /where:small -->")[0]
    rows = [line for line in where.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert {r.split(" | ")[1] for r in rows} == {r["setting"] for r in summary["rows"]}
    q8 = next(r for r in summary["rows"] if r["setting"] == "8-bit")
    assert f"| {100 * q8['flips_correct_to_wrong']:.2f} | {100 * q8['flips_wrong_to_correct']:.2f} |" in where
    mod.main([str(small_reported)])
    assert doc.read_text() == once   # a rerun replaces, never appends


def test_a_key_keeps_a_second_run_of_one_study_apart_and_global_rows_fill_the_papers_columns(small_reported,
                                                                                             tmp_path):
    doc = tmp_path / "R.md"
    doc.write_text("<!-- tables:start -->\n<!-- tables:end -->\n")
    mod = reproduction(doc)
    mod.main([str(small_reported)])
    # the same study pruned under one global threshold (its 50% row renamed as a global study names it)
    fit = tmp_path / "fit"
    fit.mkdir()
    summary = json.loads((small_reported / "summary.json").read_text())
    for r in summary["rows"]:
        r["setting"] = "global 50%" if r["setting"] == "50%" else r["setting"]
    (fit / "summary.json").write_text(json.dumps(summary))
    mod.main([f"small-fit={fit}"])
    text = doc.read_text()
    before = text.split("<!-- table:small -->\n")[1].split("<!-- /table:small -->")[0]
    after = text.split("<!-- table:small-fit -->\n")[1].split("<!-- /table:small-fit -->")[0]
    assert "one global L1 threshold" in after and "global" not in before
    cols = mod.COLS.index("50%") + 2   # "| label | col... |" split on "|"

    def cell(table: str, label: str) -> str:
        return next(line for line in table.splitlines() if line.startswith(f"| {label} |")).split("|")[cols].strip()

    g50 = next(r for r in summary["rows"] if r["setting"] == "global 50%")
    assert cell(after, "funclens: RFD [95% CI]").startswith(f"{g50['rfd']:.2f} [")
    assert cell(before, "funclens: RFD [95% CI]") == cell(after, "funclens: RFD [95% CI]")   # the same model
    q8 = next(r for r in summary["rows"] if r["setting"] == "8-bit")   # the other columns stay filled

    def col(table: str, setting: str) -> str:
        return next(line for line in table.splitlines() if line.startswith("| funclens: RFD")).split("|")[
            mod.COLS.index(setting) + 2].strip()

    assert col(after, "8-bit").startswith(f"{q8['rfd']:.2f} [") and col(after, "alpha=0.5") != "–"
    assert "| prune | global 50%" not in after   # shown in its column, not again below


def test_a_folder_without_a_summary_is_refused_in_one_line_and_the_document_is_untouched(tmp_path):
    import pytest

    doc = tmp_path / "REPRODUCTION.md"
    doc.write_text("before\n")
    mod = reproduction(doc)
    with pytest.raises(SystemExit, match=r"has no readable summary\.json .*funclens report"):
        mod.main([f"k={tmp_path / 'unfinished'}"])
    assert doc.read_text() == "before\n"
