import gzip
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch

from conftest import FASHION, need
from funclens.data import DataError, find_dataset, load_dataset, read_cifar_pickle, read_idx

# Label counts published with the canonical files (repeated in shared/data/SOURCES.md).
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR10_BATCH1_COUNTS = [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]


def test_digits_is_a_fixed_stratified_80_20_split():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train_x.shape == (1437, 1, 8, 8) and a.test_x.shape == (360, 1, 8, 8)
    assert a.train_x.dtype == torch.uint8 and int(a.train_x.max()) == 255
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    assert sorted(a.test_y.bincount().tolist())[0] >= 35  # every class in the test set


def test_real_mnist_from_the_canonical_gz_files(shared_data):
    ds = load_dataset("mnist", shared_data, offline=True)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.test_y.bincount().tolist() == MNIST_TEST_COUNTS
    assert ds.mean[0] == pytest.approx(0.1307, abs=1e-4) and ds.std[0] == pytest.approx(0.3081, abs=1e-4)


def test_mnist_reads_raw_idx_as_well_as_gz(shared_data, tmp_path):
    (tmp_path / "mnist").mkdir()
    for f in (shared_data / "mnist").glob("t10k-*.gz"):
        (tmp_path / "mnist" / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
    raw = read_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte")
    assert raw.tolist() == read_idx(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz").tolist()


def test_real_cifar10_without_filenames_key(shared_data):
    d = read_cifar_pickle(shared_data / "cifar-10-batches-py" / "data_batch_1")
    assert "filenames" not in d  # this copy lacks them; the reader must not need them
    assert np.bincount(d["labels"]).tolist() == CIFAR10_BATCH1_COUNTS
    ds = load_dataset("cifar10", shared_data, offline=True)
    assert ds.train_x.shape == (50000, 3, 32, 32) and ds.test_x.shape == (10000, 3, 32, 32)
    assert ds.test_y.bincount().tolist() == [1000] * 10
    assert ds.mean == pytest.approx((0.4914, 0.4822, 0.4465), abs=1e-3)


def test_real_fashion_mnist_from_debian():
    need(FASHION)
    ds = load_dataset("fashion-mnist", "/nonexistent", offline=True)
    assert find_dataset("fashion-mnist", "/nonexistent") == FASHION
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.train_y.bincount().tolist() == [6000] * 10


def write_cifar100(folder, n_train=50, n_test=20, seed=0):
    """CIFAR-100 in its canonical format: protocol-2 pickles of dicts with bytes keys, as Python 2 wrote them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        d = {b"filenames": [b"x.png"] * n, b"batch_label": b"training batch 1 of 1",
             b"fine_labels": rng.integers(0, 100, n).tolist(), b"coarse_labels": rng.integers(0, 20, n).tolist(),
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"c"] * 100}, protocol=2))
    return folder


def test_cifar100_canonical_format(tmp_path):
    write_cifar100(tmp_path / "cifar-100-python")
    ds = load_dataset("cifar100", tmp_path, offline=True, allow_modified=True)  # not the published files
    assert ds.num_classes == 100 and ds.train_x.shape == (50, 3, 32, 32) and ds.test_x.shape == (20, 3, 32, 32)
    raw = pickle.loads((tmp_path / "cifar-100-python" / "test").read_bytes())
    assert torch.equal(ds.test_x, torch.from_numpy(raw[b"data"].reshape(-1, 3, 32, 32)))
    assert ds.test_y.tolist() == raw[b"fine_labels"]


class Evil:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-funclens-target",))


def test_pickle_naming_a_forbidden_global_is_refused_without_running_it(tmp_path):
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="forbidden global shutil.rmtree"):
        read_cifar_pickle(p)


def idx_bytes(arr: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_truncated_idx_is_refused(tmp_path):
    data = idx_bytes(np.zeros((10, 28, 28), np.uint8))
    (tmp_path / "a").write_bytes(data[:-100])
    (tmp_path / "a.gz").write_bytes(gzip.compress(data[:-100]))
    for name in ("a", "a.gz"):
        with pytest.raises(DataError, match="truncated"):
            read_idx(tmp_path / name)


def test_idx_header_declaring_an_absurd_size_is_refused_before_allocating(tmp_path):
    p = tmp_path / "huge"
    p.write_bytes(struct.pack(">BBBBIII", 0, 0, 0x08, 3, 4_000_000_000, 28, 28) + b"\0" * 64)
    with pytest.raises(DataError, match="limit"):
        read_idx(p)


def test_idx_header_with_a_zero_and_an_absurd_dimension_is_refused(tmp_path):
    # found by the fuzz test: no data to read, yet a shape numpy cannot build
    p = tmp_path / "odd"
    p.write_bytes(struct.pack(">BBBBIIII", 0, 0, 0x08, 4, 0, 11, 0x12000000, 0xA57EB503))
    with pytest.raises(DataError, match="limit"):
        read_idx(p)


def test_missing_data_offline_names_the_files_and_folder(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("cifar100", tmp_path, offline=True)
    msg = str(e.value)
    assert "test" in msg and str(tmp_path / "cifar-100-python") in msg and "\n" not in msg


def test_subsets_keep_the_first_images(shared_data):
    full = load_dataset("mnist", shared_data, offline=True)
    sub = load_dataset("mnist", shared_data, offline=True, train_subset=100, test_subset=50)
    assert torch.equal(sub.test_x, full.test_x[:50]) and len(sub.train_x) == 100
