"""docs/findings.py: the five findings of the full studies, one column per study, written in place."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def _run(*args):
    return subprocess.run([sys.executable, str(REPO / "docs" / "findings.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(REPO / "src"),
                                                                             "PATH": "/usr/bin:/bin"})


def test_each_study_is_a_column_read_by_the_stated_rules_and_the_section_is_replaced(small_reported, tmp_path):
    doc = tmp_path / "R.md"
    doc.write_text("intro\n<!-- findings:start -->\nold\n<!-- findings:end -->\ntail\n")
    r = _run(small_reported, "--doc", doc)
    assert r.returncode == 0, r.stderr
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("tail\n") and "\nold\n" not in text
    summary = json.loads((small_reported / "summary.json").read_text())
    lr = summary["setup"]["lr"]
    header = next(line for line in text.splitlines() if line.startswith("| digits: finding"))
    assert header == f"| digits: finding | SGD lr {lr:g}, pruned per layer |"
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1].removesuffix(" |") for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| digits")}
    half = next(x for x in summary["rows"] if x["setting"] == "50%")
    # finding 4 per layer reads the study's own 50% row; the global scope was not run
    expect = "holds: preserves to 50%" if half["verdict"] == "preserves" else "no: not at 50%"
    assert rows["4. L1 pruning preserves the function, each layer pruned alone"] == expect
    assert rows["4. L1 pruning preserves the function, one global threshold"] == "–"
    eight = next(x for x in summary["rows"] if x["setting"] == "8-bit")
    assert f"8-bit {eight['rfd']:.2f}" in rows["3. quantization preserves best"]
    r = _run(small_reported, "--doc", doc)
    assert doc.read_text().count("<!-- findings:start -->") == 1


def test_a_folder_without_a_study_is_one_line(tmp_path):
    r = _run(tmp_path, "--doc", tmp_path / "R.md")
    assert r.returncode == 2 and "holds no study" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "R.md").exists()
