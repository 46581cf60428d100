"""The gallery of a real MNIST study's report, rendered in headless Chromium; and a report without its data."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import SHARED_DATA, chromium, need, run_cli
from funclens.report import build_report

STUDY = """
preset = "paper-mnist"
name = "gallery"
seeds = [0, 1, 2]
quantize = ["8-bit"]
prune = [0.9]
[distill]
alphas = []
"""


@pytest.fixture(scope="module")
def mnist_study(tmp_path_factory) -> Path:
    need(SHARED_DATA / "mnist")
    d = tmp_path_factory.mktemp("gallery")
    (d / "s.toml").write_text(STUDY)
    # the report reads the test images from funclens's data folder, offline: the study's own files
    r = run_cli("study", str(d / "s.toml"), "--train-subset", "2000", "--test-subset", "500", "--epochs", "1",
                "--out", str(d / "out"), "--data-dir", str(SHARED_DATA), "--offline", "--device", "cpu",
                env={"FUNCLENS_DATA": str(SHARED_DATA)})
    assert r.returncode == 0, r.stderr
    return d / "out"


def test_mnist_gallery_renders_in_headless_chromium(mnist_study, tmp_path):
    html = (mnist_study / "report.html").read_text()
    # each gallery image reports, after load, whether it decoded and its natural size in pixels
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", "<script>document.title=JSON.stringify([...document.querySelectorAll("
                                             "'img.gallery-img')].map(i=>[i.complete,i.naturalWidth,i.naturalHeight]))"
                                             "</script></body>"))
    dom, shot = chromium(probe, tmp_path, height=6000)
    images = json.loads(re.search(r"<title>(.*?)</title>", dom, re.S).group(1).replace("&quot;", '"'))
    # 90% pruning of a one-epoch LeNet changes many labels: its exemplars fill their row, and flips fill theirs
    assert len(images) >= 12, images
    assert all(done and w == 84 and h == 84 for done, w, h in images), images  # 28x28 digits at 3x
    assert "Compression-identified exemplars" in dom and "Most-flipped test inputs" in dom
    assert re.search(r"#\d+ true \d<br>base \d \(0\.\d\d\)<br>90% \d \(\d\.\d\d\)", dom)
    assert "flipped by" in dom and "share 1.00" in dom
    assert shot.stat().st_size > 50_000
    rows = (mnist_study / "tables" / "exemplars.csv").read_text().splitlines()
    assert rows[0].startswith("setting,index,true_label") and any(r.startswith("90%,") for r in rows)
    assert "a population of one" in (mnist_study / "report.md").read_text()


def test_report_without_the_data_says_so_and_builds(mnist_study, tmp_path, monkeypatch):
    copy = tmp_path / "out"
    shutil.copytree(mnist_study, copy)
    monkeypatch.setenv("FUNCLENS_DATA", str(tmp_path / "no-data"))
    html = build_report(copy).read_text()
    assert "No gallery: the test images could not be read offline" in html and "gallery-img" not in html
    rows = (copy / "tables" / "exemplars.csv").read_text().splitlines()
    assert len(rows) > 1 and rows[1].split(",")[2] == ""  # exemplars still listed, the true labels unknown
    assert (copy / "figures" / "landscape.png").is_file()
