"""`funclens study --reuse DIR`: finished runs of another store are copied in, checked, not computed again."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import SMALL_STUDY, run_cli
from funclens.store import Store


def _study(tmp_path: Path) -> Path:
    f = tmp_path / "small.toml"
    f.write_text(SMALL_STUDY)
    return f


def test_every_finished_run_is_reused_byte_for_byte_and_verifies(small_ref, tmp_path):
    src = Store(small_ref)
    runs = [r for r in src.list_runs() if src.is_done(r)]
    r = run_cli("study", str(_study(tmp_path)), "--out", str(tmp_path / "b"), "--reuse", str(small_ref),
                "--no-report", "--jobs", "1")
    assert r.returncode == 0, r.stderr
    assert f"reused {len(runs)} finished run(s)" in r.stderr and "not reused" not in r.stderr
    b = Store(tmp_path / "b")
    for rid in runs:
        assert (b.run_dir(rid) / "DONE").read_bytes() == (src.run_dir(rid) / "DONE").read_bytes()
    assert b.verify()[0] == [] and not list((tmp_path / "b" / "runs").glob(".*"))


def test_a_damaged_run_is_not_reused_but_computed_and_the_rest_still_is(small_ref, tmp_path):
    a = tmp_path / "a"
    shutil.copytree(small_ref, a)
    src = Store(a)
    leaf = next(r for r in src.list_runs() if not r.startswith("train_"))   # a post-hoc run: nothing hangs on it
    model = src.run_dir(leaf) / "preds"
    victim = sorted(model.iterdir())[-1]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    r = run_cli("study", str(_study(tmp_path)), "--out", str(tmp_path / "c"), "--reuse", str(a), "--no-report",
                "--jobs", "1")
    assert r.returncode == 0, r.stderr
    assert f"not reused (computed here): {a}: run {leaf}: preds/{victim.name} does not match" in " ".join(
        r.stderr.split())
    c = Store(tmp_path / "c")
    assert c.verify()[0] == [] and c.is_done(leaf)
    assert (c.run_dir(leaf) / "preds" / victim.name).read_bytes() != bytes(data)   # its own, not the damaged copy


def test_reuse_of_a_folder_without_runs_is_one_line(tmp_path):
    r = run_cli("study", str(_study(tmp_path)), "--out", str(tmp_path / "d"), "--reuse", str(tmp_path / "nothing"),
                "--no-report", "--jobs", "1")
    assert r.returncode == 2 and "holds no study's runs" in r.stderr and "Traceback" not in r.stderr


def test_a_killed_adoption_leaves_nothing_a_later_study_keeps(small_ref, tmp_path):
    out = tmp_path / "e"
    rid = Store(small_ref).list_runs()[0]
    half = out / "runs" / f".{rid}.4242.tmp"
    shutil.copytree(Store(small_ref).run_dir(rid), half)
    (half / "DONE").unlink()
    with Store(out).lock():
        pass
    assert not half.exists()
