import json
import multiprocessing as mp
import os

import numpy as np
import pytest
import torch

from funclens.config import DataCfg, ModelCfg, RunSpec, TrainCfg
from funclens.store import Store, StoreError, atomic_write_bytes, load_torch

SPEC = RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(epochs=1))


def finished(tmp_path) -> Store:
    st = Store(tmp_path)
    st.begin(SPEC)
    st.save_preds(SPEC.run_id, 1, np.full((4, 3), 1 / 3, np.float16))
    st.finish(SPEC.run_id, state_dict={"w": torch.ones(2)}, metrics={"test_acc": 0.5})
    return st


def test_done_is_written_last_and_vouches_for_every_file(tmp_path):
    st = finished(tmp_path)
    rec = st.done_record(SPEC.run_id)
    assert set(rec["files"]) == {"config.json", "metrics.json", "model.pt", "preds/ep_001.npy"}
    assert st.verify_run(SPEC.run_id) == []
    cfg = json.loads((st.run_dir(SPEC.run_id) / "config.json").read_text())
    assert cfg["id"] == SPEC.run_id and "funclens_version" in cfg and "git_commit" in cfg


@pytest.mark.parametrize("damage", ["truncate", "change", "delete"])
def test_verify_finds_a_damaged_file(tmp_path, damage):
    st = finished(tmp_path)
    p = st.run_dir(SPEC.run_id) / "preds" / "ep_001.npy"
    if damage == "truncate":
        p.write_bytes(p.read_bytes()[:-5])
    elif damage == "change":
        b = bytearray(p.read_bytes())
        b[-1] ^= 1
        p.write_bytes(bytes(b))
    else:
        p.unlink()
    [problem] = st.verify_run(SPEC.run_id)
    assert "preds/ep_001.npy" in problem and SPEC.run_id in problem


def test_verify_names_a_file_dropped_among_the_run_folders(tmp_path):
    st = finished(tmp_path)
    assert st.verify() == ([], 1)
    (tmp_path / "runs" / "notes.txt").write_text("not a run")
    (tmp_path / "runs" / ".ep_001.npy.77.tmp").write_bytes(b"")  # a killed writer's temporary: not a stray
    problems, checked = st.verify()
    assert checked == 1 and problems == ["runs/notes.txt is not a run's folder (funclens wrote no such file)"]


def test_atomic_write_leaves_no_partial_file_when_the_folder_is_gone(tmp_path):
    with pytest.raises(StoreError, match="cannot write"):
        atomic_write_bytes(tmp_path / "nope" / "f", b"x")
    assert not list(tmp_path.iterdir())


def test_a_different_config_in_a_run_folder_is_refused(tmp_path):
    st = Store(tmp_path)
    run = st.begin(SPEC)
    (run / "config.json").write_text(json.dumps({"canonical": "something else"}))
    with pytest.raises(StoreError, match="another config"):
        st.begin(SPEC)


def test_checkpoints_load_weights_only(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("code ran",))

    p = tmp_path / "model.pt"
    torch.save({"x": Boom()}, p)
    with pytest.raises(StoreError, match="weights-only"):
        load_torch(p)


def _hold(root, held, release):
    with Store(root).lock():
        held.put("held")
        release.get()


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    ctx = mp.get_context("spawn")
    held, release = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_hold, args=(str(tmp_path), held, release))
    p.start()
    try:
        assert held.get(timeout=60) == "held"
        with pytest.raises(StoreError, match=f"in use by funclens pid {p.pid}"):
            with Store(tmp_path).lock():
                pass
    finally:
        release.put("release")
        p.join(30)
    with Store(tmp_path).lock():  # released when the holder ends
        pass


def test_a_forked_child_does_not_keep_the_store_locked(tmp_path):
    # The local executor forks its workers inside the lock; one that outlives its study must not
    # hold the lock against the restarted study.
    go_r, go_w = os.pipe()
    up_r, up_w = os.pipe()
    with Store(tmp_path).lock():
        pid = os.fork()
        if pid == 0:  # the child: say it runs (fork handlers done), wait until told, leave without cleanup
            os.write(up_w, b"u")
            os.read(go_r, 1)
            os._exit(0)
        assert os.read(up_r, 1) == b"u"
    try:
        with Store(tmp_path).lock():  # the parent left the lock; the live child holds no copy
            pass
    finally:
        os.write(go_w, b"x")
        os.waitpid(pid, 0)


# ---------------------------------------------------------------- the manifest is the truth

def test_readers_take_epochs_from_done_not_from_the_folder(tmp_path):
    st = finished(tmp_path)
    extra = st.run_dir(SPEC.run_id) / "preds" / "ep_005.npy"
    np.save(extra, np.zeros((4, 3), np.float16))
    assert st.pred_epochs(SPEC.run_id) == [1]
    assert np.array_equal(st.load_preds(SPEC.run_id), np.full((4, 3), 1 / 3, np.float16))
    with pytest.raises(StoreError, match="no predictions for epoch 5"):
        st.load_preds(SPEC.run_id, 5)
    assert st.verify_run(SPEC.run_id) == [f"run {SPEC.run_id}: preds/ep_005.npy is not listed in DONE"]


def test_done_records_the_run_and_its_config_checksum(tmp_path):
    import hashlib

    from funclens.config import canonical_json

    rec = finished(tmp_path).done_record(SPEC.run_id)
    assert rec["run"] == SPEC.run_id
    assert rec["config_sha256"] == hashlib.sha256(canonical_json(SPEC).encode()).hexdigest()


def _resign(st: Store, run_id: str, name: str) -> None:
    """Put ``name``'s current checksum into DONE, as an older funclens would have written it."""
    from funclens.store import sha256_file

    done = st.run_dir(run_id) / "DONE"
    rec = json.loads(done.read_text())
    rec["files"][name] = sha256_file(st.run_dir(run_id) / name)
    done.write_text(json.dumps(rec))


def test_a_finished_run_of_another_full_spec_under_the_same_id_is_refused_naming_the_field(tmp_path):
    # Emulates a default that changed between versions: the stored spec says momentum 0.5, the id is the same.
    st = finished(tmp_path)
    cfg_path = st.run_dir(SPEC.run_id) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["spec"]["train"]["momentum"] = 0.5
    cfg_path.write_text(json.dumps(cfg))
    _resign(st, SPEC.run_id, "config.json")
    with pytest.raises(StoreError, match=r"another config under the same id \(train.momentum 0.5 stored, 0.9 "
                                         r"requested\); use another --out, or delete .*"):
        st.prepare(SPEC)
    assert (st.run_dir(SPEC.run_id) / "DONE").is_file()  # nothing cleared: the user decides


def test_an_edited_finished_run_is_cleared_and_begun_from_the_requested_spec(tmp_path):
    st = finished(tmp_path)
    cfg_path = st.run_dir(SPEC.run_id) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["spec"]["train"]["lr"] = 0.5  # "canonical" left alone
    cfg_path.write_text(json.dumps(cfg))
    assert st.prepare(SPEC) == "start"
    run = st.run_dir(SPEC.run_id)
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "preds"] and not list((run / "preds").iterdir())
    assert json.loads(cfg_path.read_text())["spec"]["train"]["lr"] == SPEC.train.lr


def _checkpoint(epoch=1, model=None, rng=True, history=None) -> dict:
    ck = {"epoch": epoch, "model": model if model is not None else {"w": torch.zeros(2)},
          "optimizer": {"state": {}, "param_groups": [{"params": [0], "lr": 0.1}]},
          "history": history if history is not None else [{"test_acc": 0.5, "test_loss": 1.0}] * epoch}
    if rng:
        ck["rng"] = {"torch": torch.get_rng_state(), "gen": torch.Generator().get_state()}
    return ck


@pytest.mark.parametrize("ck", [
    "not a dict", {"epoch": 1}, _checkpoint(rng=False), _checkpoint(model={"w": torch.zeros(3)}),
    _checkpoint(model={"other": torch.zeros(2)}), _checkpoint(epoch=2), _checkpoint(history=[{"x": 1}]),
    _checkpoint(epoch=True),
], ids=["str", "only-epoch", "no-rng", "wrong-shape", "wrong-keys", "epoch-without-preds", "bad-history",
        "bool-epoch"])
def test_a_loadable_but_wrong_checkpoint_is_discarded(tmp_path, ck):
    spec = RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(epochs=3))
    st = Store(tmp_path)
    st.prepare(spec)
    st.save_init(spec.run_id, {"w": torch.ones(2)})
    st.save_preds(spec.run_id, 1, np.full((4, 3), 1 / 3, np.float16))
    st.save_checkpoint(spec.run_id, _checkpoint())
    assert st.load_checkpoint(spec.run_id)["epoch"] == 1  # the well-formed one is kept
    st.save_checkpoint(spec.run_id, ck)
    assert st.load_checkpoint(spec.run_id) is None
    assert not (st.run_dir(spec.run_id) / "checkpoint.pt").exists()


def test_a_run_with_a_wrong_checkpoint_restarts_and_gives_the_clean_runs_bytes(tmp_path):
    from funclens.execute import RunContext, execute_run

    spec = RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(epochs=2, lr=0.02))
    clean, hurt = Store(tmp_path / "clean"), Store(tmp_path / "hurt")
    execute_run(spec, RunContext(out=str(clean.root)))
    hurt.prepare(spec)
    hurt.save_checkpoint(spec.run_id, {"epoch": 1, "model": {"junk": torch.ones(1)}, "history": []})
    execute_run(spec, RunContext(out=str(hurt.root)))
    assert hurt.verify_run(spec.run_id) == []
    for e in (1, 2):
        assert np.array_equal(hurt.load_preds(spec.run_id, e), clean.load_preds(spec.run_id, e))


# ---------------------------------------------------------------- nothing written outside the store

def test_a_lock_that_is_a_link_is_refused_and_nothing_written_through_it(tmp_path):
    out, target = tmp_path / "out", tmp_path / "precious"
    out.mkdir()
    (out / ".lock").symlink_to(target)  # dangling
    with pytest.raises(StoreError, match=r"\.lock is a symbolic link"):
        with Store(out).lock():
            pass
    assert not target.exists()
    target.write_text("keep me")
    with pytest.raises(StoreError, match="symbolic link"):
        with Store(out).lock():
            pass
    assert target.read_text() == "keep me"


def test_a_store_whose_runs_folder_is_a_link_is_refused_before_anything_is_written(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "runs").symlink_to(elsewhere)
    with pytest.raises(StoreError, match=r"runs is a symbolic link; funclens writes nothing through"):
        Store(out).ensure_writable()
    with pytest.raises(StoreError, match="symbolic link"):
        Store(out).prepare(SPEC)
    assert not list(elsewhere.iterdir()) and sorted(p.name for p in out.iterdir()) == ["runs"]


def test_an_atomic_write_never_follows_a_link_at_its_temporary_name(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me")
    (tmp_path / f".f.{os.getpid()}.tmp").symlink_to(target)
    with pytest.raises(StoreError, match="cannot write"):
        atomic_write_bytes(tmp_path / "f", b"x")
    assert target.read_text() == "keep me" and not (tmp_path / "f").exists()


def test_stale_temporaries_never_count_and_go_when_a_study_locks_the_store(tmp_path):
    st = finished(tmp_path)
    stale = st.run_dir(SPEC.run_id) / "preds" / ".ep_001.npy.99999.tmp"
    stale.write_bytes(b"half a file")
    assert st.verify_run(SPEC.run_id) == [] and st.pred_epochs(SPEC.run_id) == [1]
    with st.lock():
        assert not stale.exists()
    assert st.verify_run(SPEC.run_id) == []


# ---------------------------------------------------------------- study.json

def test_study_record_is_checked_and_a_damaged_one_never_locks_the_folder(tmp_path):
    from funclens.config import preset_study, to_dict
    from funclens.plan import plan

    st, study = Store(tmp_path), preset_study("quick")
    record = {"study": to_dict(study), "runs": [p.to_json() for p in plan(study)]}
    st.write_study(record)
    assert st.read_study()["runs"] == record["runs"]
    other = study.replace(name="other")
    with pytest.raises(StoreError, match=r"holds another study \(quick\)"):
        st.write_study({"study": to_dict(other), "runs": [p.to_json() for p in plan(other)]})
    for damage in ("{}", "[]", "not json", '{"sha256": "0", "study": {}, "runs": []}'):
        (tmp_path / "study.json").write_text(damage)
        with pytest.raises(StoreError, match="study.json"):
            st.read_study()
        st.write_study(record)  # rewritten: the runs are verified on their own
        assert st.read_study()["study"]["name"] == "quick"


def test_an_unfinished_run_keeps_its_epochs_unless_it_holds_another_config_or_a_link(tmp_path):
    st = Store(tmp_path)
    st.prepare(SPEC)
    st.save_preds(SPEC.run_id, 1, np.full((4, 3), 1 / 3, np.float16))
    run = st.run_dir(SPEC.run_id)
    assert st.prepare(SPEC) == "start" and (run / "preds" / "ep_001.npy").is_file()  # a resume keeps them
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "canonical": "{}"}))
    assert st.prepare(SPEC) == "start" and not (run / "preds" / "ep_001.npy").exists()
    assert json.loads((run / "config.json").read_text()) == cfg
    (tmp_path / "elsewhere").mkdir()
    (run / "preds").rmdir()
    (run / "preds").symlink_to(tmp_path / "elsewhere")
    assert st.prepare(SPEC) == "start" and not (run / "preds").is_symlink() and (run / "preds").is_dir()


def test_the_commit_stamp_says_when_the_code_differs_from_its_commit(tmp_path):
    import subprocess

    from funclens.store import _git_commit

    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "m.py").write_text("x = 1\n")
    git("add", "m.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert _git_commit(tmp_path) == head
    (tmp_path / "m.py").write_text("x = 2\n")
    assert _git_commit(tmp_path) == head + "-dirty"
