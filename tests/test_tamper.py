"""A store that cannot be fooled: every way of swapping, copying, linking, adding or editing a file of a
finished study is named by `verify`, refused by `report` and `compare`, and repaired by `study`, which
recomputes (never re-signs) and ends with the untouched study's bytes. Nothing is written through a link."""

import json
import shutil
from pathlib import Path

import pytest

from funclens.cli import main
from funclens.store import Store, _digest

pytestmark = pytest.mark.filterwarnings("ignore")


def cli(capsys, *args: str) -> tuple[int, str]:
    """The `funclens` command in this process (the store's checks need no fresh interpreter): rc, stderr."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("funclens: error:") and "Traceback" not in err, err
    return lines[0]


def final_preds(out: Path) -> dict[str, bytes]:
    """Every run's final predictions, by run id, as its DONE lists them."""
    st = Store(out)
    return {r["run"]: (st.run_dir(r["run"]) / f"preds/ep_{st.pred_epochs(r['run'])[-1]:03d}.npy").read_bytes()
            for r in st.read_study()["runs"]}


@pytest.fixture(scope="module")
def reported(small_ref, tmp_path_factory) -> Path:
    """The small study with its report built: the untouched reference of every case."""
    out = tmp_path_factory.mktemp("tamper") / "out"
    shutil.copytree(small_ref, out, symlinks=True)
    assert main(["report", str(out)]) == 0
    return out


def run_of(out: Path, role: str, setting: str | None = None) -> Path:
    rec = json.loads((out / "study.json").read_text())
    rid = next(r["run"] for r in rec["runs"] if r["role"] == role and setting in (None, r["setting"]))
    return out / "runs" / rid


def edit_study(out: Path, change, resign: bool) -> None:
    """Change study.json's record; with ``resign`` its checksum is recomputed, as a forger would."""
    p = out / "study.json"
    rec = json.loads(p.read_text())
    change(rec)
    if resign:
        body = {k: v for k, v in rec.items() if k != "sha256"}
        rec["sha256"] = _digest(body)
    p.write_text(json.dumps(rec))


def flip_byte(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[-1] ^= 1
    p.write_bytes(bytes(b))


def replace_with_copy(src: Path, dst: Path) -> None:
    shutil.rmtree(dst)
    shutil.copytree(src, dst)


def replace_with_link(src: Path, dst: Path) -> None:
    shutil.rmtree(dst) if dst.is_dir() and not dst.is_symlink() else dst.unlink()
    dst.symlink_to(src.resolve())


def relabel_8bit(rec: dict) -> None:
    next(r for r in rec["runs"] if r["setting"] == "8-bit")["role"] = "independent"


def drop_role(rec: dict) -> None:
    del rec["runs"][0]["role"]


def edit_lr(p: Path) -> None:
    cfg = json.loads(p.read_text())
    cfg["spec"]["train"]["lr"] = 0.5  # "canonical" left alone
    p.write_text(json.dumps(cfg))


Q8, P50 = ("quantize", "8-bit"), ("prune", "50%")
BASE, INDEP = ("base", None), ("independent", "seed=1")
# (name, tamper(out, run), victim run (role, setting) or None, what verify names, what study does)
CASES = [
    ("run folder: a copy of another run", lambda o, r: replace_with_copy(run_of(o, *P50), r), Q8,
     "DONE is the manifest of run prune_", "repair"),
    ("run folder: a link to another run", lambda o, r: replace_with_link(run_of(o, *P50), r), Q8,
     "folder is a symbolic link", "refuse"),
    ("preds: another run's epoch added as ep_013", lambda o, r: shutil.copy(
        run_of(o, *INDEP) / "preds/ep_001.npy", r / "preds/ep_013.npy"), BASE,
     "preds/ep_013.npy is not listed in DONE", "repair"),
    ("preds: a copy with a space in its name", lambda o, r: shutil.copy(
        r / "preds/ep_002.npy", r / "preds/ep_002 (copy).npy"), BASE, "ep_002 (copy).npy is not listed", "repair"),
    ("preds: one bit of the final epoch edited", lambda o, r: flip_byte(r / "preds/ep_003.npy"), INDEP,
     "preds/ep_003.npy does not match its checksum", "repair"),
    ("preds: swapped with another run's", lambda o, r: shutil.copy(
        run_of(o, *INDEP) / "preds/ep_003.npy", r / "preds/ep_003.npy"), BASE, "preds/ep_003.npy does not match",
     "repair"),
    ("preds: a file replaced by a link", lambda o, r: replace_with_link(
        run_of(o, *INDEP) / "preds/ep_003.npy", r / "preds/ep_003.npy"), BASE, "preds/ep_003.npy is a symbolic link",
     "repair"),
    ("preds: the folder replaced by a link", lambda o, r: replace_with_link(run_of(o, *P50) / "preds", r / "preds"),
     Q8, "preds is a symbolic link", "repair"),
    ("DONE: []", lambda o, r: (r / "DONE").write_text("[]"), Q8, "DONE is damaged", "repair"),
    ("DONE: not JSON", lambda o, r: (r / "DONE").write_bytes(b"\x00garbage"), Q8, "DONE is not valid JSON", "repair"),
    ("DONE: a folder", lambda o, r: ((r / "DONE").unlink(), (r / "DONE").mkdir()), Q8, "DONE is not a file", "repair"),
    ("DONE: deleted", lambda o, r: (r / "DONE").unlink(), INDEP, "is not finished (no DONE)", "repair"),
    ("DONE: another run's", lambda o, r: shutil.copy(run_of(o, *P50) / "DONE", r / "DONE"), Q8,
     "DONE is the manifest of run prune_", "repair"),
    ("config.json: lr edited, canonical left alone", lambda o, r: edit_lr(r / "config.json"), INDEP,
     "config.json does not match its checksum", "repair"),
    ("config.json: another run's", lambda o, r: shutil.copy(run_of(o, *P50) / "config.json", r / "config.json"), Q8,
     "config.json is the config of run prune_", "repair"),
    ("run folder: a stray file added", lambda o, r: (r / "notes.txt").write_text("x"), Q8,
     "notes.txt is not listed in DONE", "repair"),
    ("study.json: 8-bit relabelled independent", lambda o, r: edit_study(o, relabel_8bit, False), None,
     "study.json does not match its checksum", "repair"),
    ("study.json: relabelled and re-signed", lambda o, r: edit_study(o, relabel_8bit, True), None,
     "not the plan of its study config", "repair"),
    ("study.json: a run without a role, re-signed", lambda o, r: edit_study(o, drop_role, True), None,
     "not the plan of its study config", "repair"),
    ("study.json: {}", lambda o, r: (o / "study.json").write_text("{}"), None, "study.json is damaged", "repair"),
    ("study.json: a link", lambda o, r: replace_with_link(o.parent / "outside.json", o / "study.json"), None,
     "study.json is a symbolic link", "refuse"),
    ("tables: a value edited", lambda o, r: (o / "tables/functional_distance.csv").write_text("x\n"), None,
     "tables/functional_distance.csv does not match its checksum", "repair"),
    ("tables: two tables swapped", lambda o, r: shutil.copy(o / "tables/accuracy_deviation.csv",
                                                          o / "tables/functional_distance.csv"), None,
     "tables/functional_distance.csv does not match", "repair"),
    ("tables: the folder a link out of the store", lambda o, r: replace_with_link(o.parent / "outside", o / "tables"),
     None, "tables is a symbolic link", "refuse"),
    (".lock: a dangling link", lambda o, r: ((o / ".lock").unlink(), (o / ".lock").symlink_to(o.parent / "made")),
     None, ".lock is a symbolic link", "refuse"),
]


@pytest.mark.parametrize("name,tamper,victim,named,study_does", CASES, ids=[c[0] for c in CASES])
def test_tampering_is_named_refused_and_repaired(name, tamper, victim, named, study_does, reported, small_ref,
                                                 tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reported, out, symlinks=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside.json").write_text((reported / "study.json").read_text())
    outside = {p: p.read_bytes() for p in tmp_path.glob("outside*") if p.is_file()}
    run = run_of(out, *victim) if victim else None
    tamper(out, run)

    rc, err = cli(capsys, "verify", out)
    assert rc == 2 and named in err, err
    if name.startswith(("tables: a value", "tables: two")):
        assert cli(capsys, "report", out)[0] == 0  # report files are rebuilt, not trusted
    else:
        rc, err = cli(capsys, "report", out)
        assert rc == 2, err
        one_line(err)
    if run is not None:
        rc, err = cli(capsys, "compare", run_of(reported, "base"), run)
        assert rc == 2, err
        one_line(err)

    rc, err = cli(capsys, "study", small_ref.parent / "small.toml", "--out", out, "--jobs", "1", "--no-report")
    if study_does == "refuse":
        assert rc == 2 and "is a symbolic link" in one_line(err), err
        assert not (tmp_path / "made").exists() and not list((tmp_path / "outside").iterdir())
        assert {p: p.read_bytes() for p in outside} == outside
        return
    assert rc == 0, err
    assert final_preds(out) == final_preds(reported)
    rc, err = cli(capsys, "verify", out)
    assert rc == 0, err


def test_a_file_put_among_the_tables_stays_named_after_the_report(reported, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reported, out, symlinks=True)
    (out / "tables" / "mine.csv").write_text("a,b\n")
    for _ in range(2):  # a rebuilt report does not vouch for a file it did not write
        rc, err = cli(capsys, "verify", out)
        assert rc == 2 and "tables/mine.csv is not a file of the recorded report" in err, err
        assert cli(capsys, "report", out)[0] == 0


def test_compare_refuses_an_unfinished_run_folder(reported, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reported, out, symlinks=True)
    q = run_of(out, *Q8)
    (q / "DONE").unlink()
    rc, err = cli(capsys, "compare", run_of(out, "base"), q)
    assert rc == 2 and "not finished" in one_line(err)
    assert cli(capsys, "compare", run_of(out, "base"), run_of(out, *P50))[0] == 0
