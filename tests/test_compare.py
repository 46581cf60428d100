"""funclens compare: reading files and run folders safely, refusing what it cannot compare, and its table."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_cli
from test_cli import one_line_error

from funclens import paths
from funclens.compare import CompareError, compare_items, compare_predictions, read_array, render_text


def probs(seed: int, n: int = 60, c: int = 4) -> np.ndarray:
    z = np.random.default_rng(seed).standard_normal((n, c)) * 2
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    base = probs(0)
    near = base.copy()
    near[:3] = near[:3, ::-1]                 # 3 of 60 inputs change their top-1 class, or keep it
    out = {"base": base, "near": near, "i1": probs(1), "i2": probs(2)}
    for k, v in out.items():
        np.save(tmp_path / f"{k}.npy", v)
    return {k: tmp_path / f"{k}.npy" for k in out}


def test_header_declaring_more_than_the_file_holds_is_refused_before_allocating(tmp_path, files):
    huge = tmp_path / "huge.npy"
    raw = files["base"].read_bytes()
    header_len = 10 + int.from_bytes(raw[8:10], "little")
    header = raw[:header_len].decode("latin1").replace("(60, 4)", "(1000000, 1000000)")
    huge.write_bytes(header.encode("latin1") + raw[header_len:])
    one_line_error(run_cli("compare", str(files["base"]), str(huge)), "huge.npy", "declares", "(1000000, 1000000)")
    with pytest.raises(CompareError, match="truncated or damaged"):
        read_array(huge)
    short = tmp_path / "short.npy"
    short.write_bytes(raw[:-40])
    with pytest.raises(CompareError, match="short.npy"):
        read_array(short)
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CompareError, match="Python objects"):
        read_array(obj)


def test_npz_with_two_arrays_needs_a_key(tmp_path, files):
    both = tmp_path / "both.npz"
    np.savez(both, probs=np.load(files["near"]), labels=np.arange(60) % 4)
    one_line_error(run_cli("compare", str(files["base"]), str(both)), "holds 2 arrays", "probs, labels", ":KEY")
    one_line_error(run_cli("compare", str(files["base"]), f"{both}:nope"), "no array 'nope'")
    r = run_cli("compare", str(files["base"]), f"{both}:probs", "--labels", f"{both}:labels", "--json")
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)["rows"]
    assert row["model"] == f"{both}:probs" and row["disagreement"] == pytest.approx(
        np.mean(np.argmax(np.load(files["base"]), 1) != np.argmax(np.load(files["near"]), 1)))
    assert "accuracy" in row


def test_an_independent_as_the_base_and_an_unknown_metric_are_refused(files):
    one_line_error(run_cli("compare", f"indep:{files['i1']}", str(files["near"])), "base", "indep:")
    one_line_error(run_cli("compare", str(files["base"]), str(files["near"]), "--metric", "foo"), "foo", "known")
    with pytest.raises(CompareError, match="at least two"):
        compare_items([files["base"]])


def test_kl_metric_adds_a_kl_column_and_the_table_is_aligned(files):
    r = run_cli("compare", str(files["base"]), str(files["near"]), f"indep:{files['i1']}", f"indep:{files['i2']}",
                "--metric", "kl")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    header, rows = lines[1], lines[2:5]
    assert header.split() == ["model", "disagreement", "js", "tv", "kl", "rfd", "rfd_ci", "p_closer", "verdict"]
    for col in ("disagreement", "js", "tv", "kl", "rfd", "p_closer"):
        end = re.search(rf"\b{col}\b", header).end()
        for line in rows:   # every number right-aligned under its head
            assert re.match(r"-?\d+\.\d{4}$", line[:end].split()[-1]), (col, line)
            assert line[end:end + 1] in (" ", ""), (col, line)
    res = compare_items([files["base"], files["near"], f"indep:{files['i1']}", f"indep:{files['i2']}"],
                        metric="kl")
    near = res["rows"][0]
    assert near["kl"] > 0 and near["verdict"] in ("preserves", "partial")
    kl_rfd = near["kl"] / np.mean([row["kl"] for row in res["rows"][1:]])
    assert near["rfd"] == pytest.approx(kl_rfd, rel=1e-9)


def test_compare_predictions_checks_arrays_like_the_command(files):
    base = np.load(files["base"])
    logits = np.log(np.load(files["near"]))
    res = compare_predictions(base, {"near": logits}, independents={"i1": np.load(files["i1"])})
    assert res["rows"][0]["tv"] == pytest.approx(
        compare_items([files["base"], files["near"], f"indep:{files['i1']}"])["rows"][0]["tv"], abs=1e-6)
    assert "model" in render_text(res)


def test_run_folders_must_be_done_and_verified(small_ref, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(small_ref, out)
    plan = {r["role"] + r["setting"]: r["run"] for r in json.loads(paths.study_file(out).read_text())["runs"]}
    base, q8, prune = (paths.run_dir(out, plan[k]) for k in ("baseseed=0", "quantize8-bit", "prune50%"))
    r = run_cli("compare", str(base), str(q8))
    assert r.returncode == 0 and "quantize 8-bit" in r.stdout, r.stderr
    # the same runs named from inside runs/, as a user in that folder types them
    here = run_cli("compare", base.name, q8.name, "--json", cwd=paths.runs_dir(out),
                   env={"PYTHONPATH": str(REPO / "src")})
    assert here.returncode == 0, here.stderr
    row = json.loads(here.stdout)["rows"][0]
    full = json.loads(run_cli("compare", str(base), str(q8), "--json").stdout)["rows"][0]
    assert row["setting"] == "8-bit" and [row[k] for k in ("disagreement", "js", "tv")] == [
        full[k] for k in ("disagreement", "js", "tv")]
    victim = q8 / "preds" / "ep_000.npy"
    victim.write_bytes(victim.read_bytes()[:-3])
    one_line_error(run_cli("compare", str(base), str(q8)), q8.name, "checksum")
    paths.done_file(prune).unlink()
    one_line_error(run_cli("compare", str(base), str(prune)), prune.name, "not finished")
    one_line_error(run_cli("compare", str(base), str(tmp_path)), "not a run folder")


def test_no_yardstick_prints_undefined_and_strict_json(files):
    from funclens.compare import render

    base = np.load(files["base"])
    res = compare_predictions(base, {"near": np.load(files["near"])}, independents={"twin": base.copy()})
    text = render_text(res)
    assert "undefined" in text and text.count("RFD undetermined: the independent models agree") == 1
    rec = json.loads(render(res, as_json=True), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert rec["rows"][0]["rfd"] is None and rec["rows"][0]["verdict"] == "undetermined"
