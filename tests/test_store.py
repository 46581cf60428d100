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
