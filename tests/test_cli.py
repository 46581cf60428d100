"""Bad input exits 2 with one line on stderr, never a traceback; nothing computed is lost."""

import gzip
import pickle
import shutil


from conftest import run_cli


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
