"""Whole studies end to end, through the real command, on real data."""

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import FASHION, chromium, need, run_cli

SUMMARY_FIELDS = {"method", "setting", "runs", "accuracy", "accuracy_deviation_pct", "accuracy_deviation_std",
                  "disagreement", "js", "rfd", "rfd_ci", "verdict"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    """The default study, as `make run` runs it."""
    out = tmp_path_factory.mktemp("quick") / "results"
    r = run_cli("study", "--preset", "quick", "--out", str(out), "--offline")
    assert r.returncode == 0, r.stderr
    assert f"report: {out / 'report.html'}" in r.stdout
    return out


def test_quick_study_holds_every_run_done(quick):
    rec = json.loads((quick / "study.json").read_text())
    roles = [r["role"] for r in rec["runs"]]
    assert roles.count("base") == 1 and roles.count("independent") == 2 and roles.count("student") == 9
    assert roles.count("quantize") == 2 and roles.count("prune") == 5 and roles.count("control") == 1
    for r in rec["runs"]:
        run = quick / "runs" / r["run"]
        assert (run / "DONE").is_file(), r
        n_preds = len(list((run / "preds").glob("ep_*.npy")))
        assert n_preds == (12 if r["run"].startswith("train_") else 1)
    preds = np.load(next((quick / "runs").glob("train_*/preds/ep_012.npy")))
    assert preds.dtype == np.float16 and preds.shape == (360, 10)


def test_summary_has_a_row_per_setting_and_independent_with_every_field(quick):
    s = json.loads((quick / "summary.json").read_text())
    assert (s["dataset"], s["arch"], s["num_test"], s["num_classes"], s["metric"]) == ("digits", "lenet", 360, 10,
                                                                                        "disagreement")
    settings = [(r["method"], r["setting"]) for r in s["rows"]]
    assert settings.count(("independent", "seed=1")) == 1 and ("quantize", "8-bit") in settings
    assert {st for m, st in settings if m == "distill"} >= {"alpha=0.1", "alpha=0.5", "alpha=0.9"}
    assert {st for m, st in settings if m == "prune"} == {"10%", "30%", "50%", "70%", "90%"}
    for r in s["rows"]:
        assert SUMMARY_FIELDS <= set(r), r
        assert all(r[k] is not None for k in SUMMARY_FIELDS - {"accuracy_deviation_std"}), r
        lo, hi = r["rfd_ci"]
        assert lo <= r["rfd"] <= hi and r["verdict"] in (
            ("yardstick",) if r["method"] == "independent" else ("preserves", "partial", "independent-like"))
    students = [r for r in s["rows"] if r["setting"] == "alpha=0.5"][0]
    assert len(students["runs"]) == 3 and students["accuracy_deviation_std"] is not None
    assert s["reference"]["pairs"] == 2 and s["reference"]["independent_mean"] > 0


def test_report_files_exist_and_rebuild_from_the_store_alone(quick):
    for f in ("report.md", "report.html", "tables/accuracy_deviation.csv", "tables/functional_distance.csv",
              "figures/landscape.png", "figures/accuracy_vs_distance.png"):
        assert (quick / f).stat().st_size > 100, f
    before = json.loads((quick / "summary.json").read_text())
    (quick / "summary.json").unlink()
    r = run_cli("report", str(quick))
    assert r.returncode == 0, r.stderr
    assert json.loads((quick / "summary.json").read_text()) == before
    html = (quick / "report.html").read_text()
    figures = html.count("data:image/png;base64,") - html.count('class="gallery-img"')
    assert figures == 3 and "preserves" in html and "0.5" in html


def test_report_refuses_a_damaged_run_naming_it(quick, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(quick, copy)
    victim = next((copy / "runs").glob("quant_*/preds/ep_000.npy"))
    victim.write_bytes(victim.read_bytes()[:-3])
    r = run_cli("report", str(copy))
    assert r.returncode == 2 and victim.parent.parent.name in r.stderr


def test_compare_reads_run_folders_and_npy_files(quick, tmp_path):
    rec = json.loads((quick / "study.json").read_text())
    by = {(r["role"], r["setting"]): r["run"] for r in rec["runs"]}
    base = quick / "runs" / by[("base", "seed=0")]
    q8 = quick / "runs" / by[("quantize", "8-bit")]
    i1 = np.load(quick / "runs" / by[("independent", "seed=1")] / "preds" / "ep_012.npy")
    np.save(tmp_path / "i1.npy", np.log(i1.astype(np.float32) + 1e-6))  # logits from another framework
    np.savez(tmp_path / "i2.npz", p=np.load(quick / "runs" / by[("independent", "seed=2")] / "preds" / "ep_012.npy"))
    r = run_cli("compare", str(base), str(q8), f"indep:{tmp_path / 'i1.npy'}", f"indep:{tmp_path / 'i2.npz'}", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    [row] = [x for x in out["rows"] if x["model"] == str(q8)]
    assert row["rfd"] < 0.5 and row["verdict"] == "preserves"


def test_compare_refuses_bad_arrays_naming_the_file(tmp_path):
    good = np.full((10, 3), 1 / 3, np.float32)
    np.save(tmp_path / "good.npy", good)
    bad = good.copy()
    bad[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "short.npy", good[:5])
    for other, needle in (("nan.npy", "NaN"), ("short.npy", "short.npy")):
        r = run_cli("compare", str(tmp_path / "good.npy"), str(tmp_path / other))
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def render_in_chromium(report: Path, tmp_path: Path) -> tuple[str, list, Path]:
    """(DOM after load, [decoded?, natural width] of every image, screenshot) of a report in headless Chromium."""
    # Chromium writes the page's DOM after load: each image reports whether it decoded and its size.
    probe = report.parent / "probe.html"
    page = report.read_text().replace(
        "</body>", "<script>document.title=JSON.stringify([...document.querySelectorAll('img:not(.gallery-img)')].map(i=>[i.complete,i.naturalWidth]))"
                   "</script></body>")
    probe.write_text(page)
    dom, shot = chromium(probe, tmp_path)
    probe.unlink()
    title = re.search(r"<title>(.*?)</title>", dom, re.S).group(1)
    return dom, json.loads(title.replace("&quot;", '"')), shot


def assert_report_reads(dom: str, images: list, shot: Path, reduced: bool) -> None:
    """The summary block with a badge per setting, the setup block, every figure decoded, the reduced mark iff
    the study changed its preset."""
    assert len(images) == 3 and all(done and width > 200 for done, width in images), images
    assert shot.stat().st_size > 20_000  # a rendered page with figures, not a blank one
    summary = re.search(r"<table id=\"summary\">(.*?)</table>", dom, re.S).group(1)
    assert summary.count("class=\"badge\"") >= 3 and "RFD [95% CI]" in summary
    assert dom.index("Summary: which compressions") < dom.index("<h2>Setup</h2>") < dom.index("<h2>Verdicts</h2>")
    assert "<td>learning rate</td>" in dom and "<td>git commit of the runs</td>" in dom
    assert ("class=\"reduced\"" in dom) == reduced and ("(REDUCED)" in dom) == reduced


def test_report_renders_in_headless_chromium(quick, tmp_path):
    dom, images, shot = render_in_chromium(quick / "report.html", tmp_path)
    assert_report_reads(dom, images, shot, reduced=False)
    # the interactive landscape draws in a browser with no network: plotly's script is inline
    page = quick / "figures" / "landscape.html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile2'}"]
    drawn = subprocess.run(["/usr/bin/chromium", *flags, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                           capture_output=True, text=True, timeout=120).stdout
    assert 'class="main-svg"' in drawn and drawn.count('class="trace scatter') == 6   # one per role


def test_real_mnist_study_report_renders_with_its_reduced_mark(shared_data, tmp_path):
    out = tmp_path / "mnist"
    r = run_cli("study", "--preset", "paper-mnist", "--train-subset", "2000", "--test-subset", "500", "--epochs",
                "1", "--data-dir", str(shared_data), "--offline", "--out", str(out))
    assert r.returncode == 0, r.stderr
    dom, images, shot = render_in_chromium(out / "report.html", tmp_path)
    assert_report_reads(dom, images, shot, reduced=True)
    for change in ("train.epochs: 25 -&gt; 1", "data.train_subset: 0 -&gt; 2000", "data.test_subset: 0 -&gt; 500"):
        assert change in dom, change
    s = json.loads((out / "summary.json").read_text())
    assert s["setup"]["preset"] == "paper-mnist" and s["num_test"] == 500


def test_real_fashion_mnist_study_quantized_nearer_the_base_than_independents(tmp_path):
    """The paper's qualitative result on real data: quantization keeps the base function, independent
    models do not share it."""
    need(FASHION)
    study = tmp_path / "f.toml"
    study.write_text('preset = "fashion"\nquantize = ["8-bit", "4-bit", "bf16", "dynamic-int8"]\nprune = [0.3]\n'
                     'prune_global = [0.5]\n'
                     '[data]\ntrain_subset = 6000\ntest_subset = 2000\n[train]\nepochs = 2\n'
                     '[distill]\nalphas = [0.5]\nseeds = [2]\ncontrol = false\n')
    out = tmp_path / "out"
    r = run_cli("study", str(study), "--out", str(out), "--offline")
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    rows = {(x["method"], x["setting"]): x for x in s["rows"]}
    q8 = rows[("quantize", "8-bit")]
    assert q8["verdict"] == "preserves" and q8["rfd_ci"][1] < 0.5 and q8["p_closer"] < 0.05
    assert rows[("independent", "seed=1")]["rfd_ci"][0] > 0.5
    assert s["base"]["accuracy"] > 0.7
    # every post-hoc method ran through the executor, with its real size and sparsity recorded
    assert rows[("quantize", "4-bit")]["weight_bytes"] < q8["weight_bytes"] < q8["fp32_bytes"]
    assert rows[("prune", "global 50%")]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert rows[("quantize", "dynamic-int8")]["conv_layers_compressed"] == 0
    assert "quantizes Linear layers only" in (out / "report.md").read_text()
    # ...and the landscape shows it: in the 2-D embedding the quantized model sits nearer the base's
    # final checkpoint than any independent model's final checkpoint does.
    import csv

    pts = list(csv.DictReader(open(out / "tables" / "landscape.csv")))
    last = {}
    for p in pts:
        if p["run"] not in last or int(p["epoch"]) > int(last[p["run"]]["epoch"]):
            last[p["run"]] = p
    xy = {r: np.array([float(p["x"]), float(p["y"])]) for r, p in last.items()}
    base = xy[s["base"]["run"]]
    d_q = np.linalg.norm(xy[q8["runs"][0]] - base)
    d_i = [np.linalg.norm(xy[x["runs"][0]] - base) for x in s["rows"] if x["method"] == "independent"]
    assert d_q < min(d_i)
