"""Bad input exits 2 with one line on stderr, never a traceback; nothing computed is lost."""

import gzip
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, run_cli, two_seed_study
from funclens.data import load_dataset


def one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("funclens: error:"), r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_unknown_dataset(tmp_path):
    one_line_error(run_cli("study", "--dataset", "imagenet", "--out", str(tmp_path)), "imagenet")


def test_unknown_arch(tmp_path):
    one_line_error(run_cli("study", "--arch", "vgg16", "--out", str(tmp_path)), "vgg16", "lenet")


def test_zero_epochs(tmp_path):
    one_line_error(run_cli("study", "--epochs", "0", "--out", str(tmp_path)), "epochs")


def test_unknown_option_and_preset(tmp_path):
    one_line_error(run_cli("study", "--bogus"), "--bogus")
    one_line_error(run_cli("study", "--preset", "paper-imagenet", "--out", str(tmp_path)), "paper-imagenet")


def test_truncated_idx_file(tmp_path, shared_data):
    d = tmp_path / "data" / "mnist"
    d.mkdir(parents=True)
    for f in (shared_data / "mnist").iterdir():
        shutil.copy(f, d / f.name)
    raw = gzip.decompress((d / "t10k-images-idx3-ubyte.gz").read_bytes())
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    r = run_cli("study", "--dataset", "mnist", "--epochs", "1", "--data-dir", str(tmp_path / "data"),
                "--offline", "--out", str(tmp_path / "out"))
    one_line_error(r, "t10k-images", "truncated")


class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/funclens-pwned",))


def test_pickle_naming_a_forbidden_global(tmp_path, shared_data):
    d = tmp_path / "data" / "cifar-10-batches-py"
    shutil.copytree(shared_data / "cifar-10-batches-py", d)
    (d / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [1]}, protocol=2))
    r = run_cli("study", "--dataset", "cifar10", "--epochs", "1", "--data-dir", str(tmp_path / "data"),
                "--offline", "--out", str(tmp_path / "out"))
    one_line_error(r, "data_batch_3", "forbidden global")


def test_missing_data_offline_names_the_files(tmp_path):
    r = run_cli("study", "--dataset", "cifar100", "--offline", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    one_line_error(r, "cifar-100-python", "--offline")


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    one_line_error(run_cli("study", "--epochs", "1", "--out", str(blocker / "sub")), "not writable")


def test_bad_study_file(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text("[train]\nepochs = 'many'\n")
    one_line_error(run_cli("study", str(p), "--out", str(tmp_path / "o")), "integer")
    one_line_error(run_cli("study", str(tmp_path / "none.toml")), "not found")


def test_report_and_verify_of_a_folder_without_a_study(tmp_path):
    one_line_error(run_cli("report", str(tmp_path)), "no study")
    one_line_error(run_cli("verify", str(tmp_path)), "no runs")


def test_datasets_lists_every_known_set():
    r = run_cli("datasets")
    assert r.returncode == 0
    for name in ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100"):
        assert name in r.stdout


def write_toml(tmp_path, text, name="s.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_a_preset_of_the_wrong_type(tmp_path):
    one_line_error(run_cli("study", str(write_toml(tmp_path, 'preset = ["a"]\n')), "--out", str(tmp_path / "o")),
                   "preset")


def test_a_study_file_that_is_a_directory_or_a_fifo(tmp_path):
    one_line_error(run_cli("study", str(tmp_path), "--out", str(tmp_path / "o")), "regular file")
    os.mkfifo(tmp_path / "fifo")
    one_line_error(run_cli("study", str(tmp_path / "fifo"), "--out", str(tmp_path / "o"), timeout=60), "regular file")


def test_infinite_lr_duplicate_grid_and_huge_counts(tmp_path):
    one_line_error(run_cli("study", str(write_toml(tmp_path, "[train]\nlr = inf\n")), "--out", str(tmp_path / "o")),
                   "lr", "finite")
    one_line_error(run_cli("study", str(write_toml(tmp_path, 'quantize = ["8-bit", "8-bit"]\n')), "--out",
                           str(tmp_path / "o")), "8-bit twice")
    one_line_error(run_cli("study", "--epochs", str(10**30), "--out", str(tmp_path / "o")), "epochs")
    seeds = write_toml(tmp_path, f"seeds = {list(range(5000))}\n")
    one_line_error(run_cli("study", str(seeds), "--out", str(tmp_path / "o")), "seeds", "limit")
    assert not (tmp_path / "o").exists()


def test_a_study_name_never_leaves_results(tmp_path):
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    env = {"PYTHONPATH": str(REPO / "src")}  # this checkout's funclens, from another working folder too
    for name in ("../../x", str(tmp_path / "abs")):
        one_line_error(run_cli("study", str(write_toml(tmp_path, f'name = "{name}"\n')), cwd=cwd, env=env), "name")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "s.toml"]


def write_idx_set(folder, train_x, test_x):
    """An MNIST-named folder of raw IDX files holding the given uint8 images (labels all 0)."""
    folder.mkdir(parents=True)
    for stem, arr in (("train-images-idx3-ubyte", train_x), ("t10k-images-idx3-ubyte", test_x),
                      ("train-labels-idx1-ubyte", np.zeros(len(train_x), np.uint8)),
                      ("t10k-labels-idx1-ubyte", np.zeros(len(test_x), np.uint8))):
        head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
        (folder / stem).write_bytes(head + arr.tobytes())


@pytest.mark.parametrize("n_train, n_test, side, needle", [
    (0, 5, 28, "training set holds no images"), (20, 0, 28, "test set holds no images"), (20, 5, 2, "1x2x2 images"),
])
def test_data_no_model_can_train_on_is_refused_before_any_run(tmp_path, n_train, n_test, side, needle):
    rng = np.random.default_rng(0)
    write_idx_set(tmp_path / "data" / "mnist", rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
                  rng.integers(0, 256, (n_test, side, side), dtype=np.uint8))
    args = ("study", "--dataset", "mnist", "--epochs", "1", "--data-dir", str(tmp_path / "data"), "--offline",
            "--out", str(tmp_path / "out"))
    one_line_error(run_cli(*args, "--allow-modified-data"), needle)
    assert not list(tmp_path.rglob("DONE"))  # no run ends DONE with NaN accuracy
    if n_train and n_test:  # without the opt-in, files that are not MNIST's are refused first
        one_line_error(run_cli(*args), "train-images-idx3-ubyte: md5", "--allow-modified-data")


def test_a_flipped_bit_in_a_real_gz_is_a_clean_refusal(tmp_path, shared_data):
    d = tmp_path / "data" / "mnist"
    shutil.copytree(shared_data / "mnist", d)
    f = d / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(f.read_bytes())
    raw[-6] ^= 0x01  # in the length trailer: gzip's own check, not the md5, must refuse it
    f.write_bytes(bytes(raw))
    r = run_cli("study", "--dataset", "mnist", "--epochs", "1", "--data-dir", str(tmp_path / "data"), "--offline",
                "--allow-modified-data", "--out", str(tmp_path / "out"))
    one_line_error(r, "t10k-labels-idx1-ubyte.gz", "gzip")


TINY_MNIST = two_seed_study("tiny", dataset="mnist", data="train_subset = 200\ntest_subset = 100\n")


def test_a_rerun_on_repaired_data_recomputes_every_run(tmp_path, shared_data):
    d = tmp_path / "data" / "mnist"
    shutil.copytree(shared_data / "mnist", d)
    f = d / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(f.read_bytes()))
    raw[8] = (raw[8] + 1) % 10  # the first test label, damaged
    f.write_bytes(gzip.compress(bytes(raw)))
    toml = write_toml(tmp_path, TINY_MNIST)
    args = ("study", str(toml), "--data-dir", str(tmp_path / "data"), "--offline", "--out", str(tmp_path / "out"),
            "--jobs", "1", "--no-report")
    one_line_error(run_cli(*args), "t10k-labels-idx1-ubyte.gz")  # damaged data is refused by default
    assert run_cli(*args, "--allow-modified-data").returncode == 0
    damaged = {r["run"] for r in json.loads((tmp_path / "out" / "study.json").read_text())["runs"]}
    shutil.copy(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz", f)  # repaired
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "out" / "study.json").read_text())
    repaired = {r["run"] for r in rec["runs"]}
    assert len(repaired) == 3 and not damaged & repaired
    assert all((tmp_path / "out" / "runs" / rid / "DONE").is_file() for rid in damaged | repaired)
    assert rec["study"]["data"]["content"] == load_dataset("mnist", shared_data, offline=True, train_subset=200,
                                                           test_subset=100).content_sha256


SLOW_STUDY = two_seed_study("slow", epochs=40)


def test_sigint_prints_the_interrupted_line_and_exits_130_with_stderr_a_pipe(tmp_path):
    toml = write_toml(tmp_path, SLOW_STUDY)
    p = subprocess.Popen([sys.executable, "-m", "funclens", "study", str(toml), "--out", str(tmp_path / "o"),
                          "--jobs", "1", "--no-report"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONHASHSEED": "0"})
    try:
        for line in p.stderr:  # the study has started once its first run is finished
            if "finished base" in line:
                break
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    lines = [l for l in err.splitlines() if l.strip()]
    assert p.returncode == 130, err
    assert lines[-1] == ("funclens: error: interrupted; finished epochs and runs are kept, run the same command "
                         "again to resume"), err
    assert "Traceback" not in err
