import gzip
import json
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FASHION, need
from funclens import data
from funclens.config import DataCfg
from funclens.data import (Dataset, DataError, check_model_fits, find_dataset, identified, load_dataset, load_from_cfg,
                           read_cifar_pickle, read_idx)

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


# ---------------------------------------------------------------- gzip integrity

def test_every_bit_flip_in_a_real_gz_is_refused_or_loads_identical_data(shared_data):
    good = (shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    want = data._idx_from_bytes(good, shared_data / "t10k-labels")
    refused = same = 0
    for pos in range(len(good)):
        bad = bytearray(good)
        bad[pos] ^= 1 << (pos % 8)
        try:
            got = data._idx_from_bytes(bytes(bad), shared_data / "t10k-labels")
        except DataError as e:
            assert "\n" not in str(e)
            refused += 1
            continue
        assert np.array_equal(got, want), f"a flip at byte {pos} loaded different data"
        same += 1
    # Only the gzip header's mtime, OS and file name are free of the CRC: 4 + 1 + 24 bytes.
    assert refused + same == len(good) and same <= 40, (refused, same)


def test_whole_dataset_load_refuses_a_flipped_bit(shared_data, tmp_path):
    folder = tmp_path / "mnist"
    shutil.copytree(shared_data / "mnist", folder)
    f = folder / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x10  # inside the deflate stream
    f.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", tmp_path, offline=True)


@pytest.mark.parametrize("tail", [b"\0", b"garbage", gzip.compress(b""), gzip.compress(b"\1\2\3")])
def test_bytes_after_the_gzip_member_are_refused(shared_data, tmp_path, tail):
    p = tmp_path / "t10k-labels-idx1-ubyte.gz"
    p.write_bytes((shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes() + tail)
    with pytest.raises(DataError, match="after the gzip stream"):
        read_idx(p)


def test_data_beyond_the_idx_header_is_refused(tmp_path):
    arr = np.arange(6, dtype=np.uint8)
    (tmp_path / "a").write_bytes(idx_bytes(arr) + b"\7")
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(arr) + b"\7"))
    for name in ("a", "a.gz"):
        with pytest.raises(DataError, match="more"):
            read_idx(tmp_path / name)
    (tmp_path / "b.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    assert read_idx(tmp_path / "b.gz").tolist() == list(range(6))


def test_a_gz_without_its_crc_trailer_is_refused(shared_data, tmp_path):
    p = tmp_path / "t.gz"
    p.write_bytes((shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()[:-8])
    with pytest.raises(DataError, match="truncated gzip"):
        read_idx(p)


def test_a_data_file_that_is_not_a_regular_file_is_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    for p in (tmp_path / "fifo", tmp_path, Path("/dev/zero")):
        with pytest.raises(DataError, match="must be a regular file"):
            read_idx(p)


# ---------------------------------------------------------------- identity

def _copy_mnist(shared_data, folder):
    shutil.copytree(shared_data / "mnist", folder)
    return folder


def _relabel(path, index, label):
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[8 + index] = label
    path.write_bytes(gzip.compress(bytes(raw)))


def test_content_hash_covers_every_array_and_the_subsets(shared_data):
    full = load_dataset("mnist", shared_data, offline=True)
    assert full.content_sha256 == data.KNOWN_CONTENT["mnist"]
    assert full.content_sha256 == data.content_sha256(full.train_x, full.train_y, full.test_x, full.test_y)
    sub = load_dataset("mnist", shared_data, offline=True, test_subset=50)
    assert sub.content_sha256 == data.content_sha256(full.train_x, full.train_y, full.test_x[:50], full.test_y[:50])
    y = full.test_y.clone()
    y[0] = (y[0] + 1) % 10
    assert data.content_sha256(full.train_x, full.train_y, full.test_x, y) != full.content_sha256
    # shapes enter too: the same bytes cut into other images are another data set
    assert (data.content_sha256(full.train_x.reshape(-1, 1, 14, 56), full.train_y, full.test_x, full.test_y)
            != full.content_sha256)


def test_published_files_regzipped_or_raw_are_accepted_by_content(shared_data, tmp_path):
    folder = _copy_mnist(shared_data, tmp_path / "a" / "mnist")
    f = folder / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes()), compresslevel=1, mtime=0))  # other bytes, same data
    assert load_dataset("mnist", tmp_path / "a", offline=True).content_sha256 == data.KNOWN_CONTENT["mnist"]
    raw = _copy_mnist(shared_data, tmp_path / "b" / "mnist")
    for g in raw.glob("*.gz"):  # the raw files' md5s are published too
        (raw / g.name[:-3]).write_bytes(gzip.decompress(g.read_bytes()))
        g.unlink()
    assert load_dataset("mnist", tmp_path / "b", offline=True).content_sha256 == data.KNOWN_CONTENT["mnist"]


def test_known_set_with_changed_data_is_refused_naming_file_and_checksums(shared_data, tmp_path):
    folder = _copy_mnist(shared_data, tmp_path / "mnist")
    _relabel(folder / "t10k-labels-idx1-ubyte.gz", 0, 3)
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path, offline=True)
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "ec29112dd5afa0611ce80d1b7f02629c" in msg  # the published md5
    assert data.KNOWN_CONTENT["mnist"] in msg and "--allow-modified-data" in msg and "\n" not in msg
    ds = load_dataset("mnist", tmp_path, offline=True, allow_modified=True)
    assert ds.test_y[0] == 3 and ds.content_sha256 != data.KNOWN_CONTENT["mnist"]


def test_cifar100_not_published_is_refused_unless_allowed(tmp_path):
    write_cifar100(tmp_path / "cifar-100-python")
    with pytest.raises(DataError, match=r"cifar-100-python/train: md5 .* not the published 16019d7e"):
        load_dataset("cifar100", tmp_path, offline=True)
    ds = load_dataset("cifar100", tmp_path, offline=True, allow_modified=True)
    other = tmp_path / "o"
    write_cifar100(other / "cifar-100-python", seed=1)
    assert load_dataset("cifar100", other, offline=True, allow_modified=True).content_sha256 != ds.content_sha256


def test_a_pinned_content_accepts_that_data_and_refuses_any_other(shared_data, tmp_path):
    folder = _copy_mnist(shared_data, tmp_path / "mnist")
    cfg = DataCfg("mnist", test_subset=20, allow_modified=True)
    _relabel(folder / "t10k-labels-idx1-ubyte.gz", 0, 3)
    damaged = load_from_cfg(cfg, tmp_path, offline=True)
    pinned = identified(cfg, damaged)
    assert pinned.content == damaged.content_sha256 and not pinned.allow_modified
    assert load_from_cfg(pinned, tmp_path, offline=True).content_sha256 == pinned.content  # accepted by its pin
    shutil.copy(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz", folder)  # repaired
    with pytest.raises(DataError, match="changed since the study was planned"):
        load_from_cfg(pinned, tmp_path, offline=True)


def test_run_ids_follow_the_data_content(shared_data, tmp_path):
    from funclens.config import StudyCfg
    from funclens.plan import plan

    folder = _copy_mnist(shared_data, tmp_path / "mnist")
    study = StudyCfg(name="m", data=DataCfg("mnist", train_subset=100, test_subset=20, allow_modified=True))
    good = plan(study.replace(data=identified(study.data, load_from_cfg(study.data, tmp_path, offline=True))))
    _relabel(folder / "t10k-labels-idx1-ubyte.gz", 0, 3)
    bad = plan(study.replace(data=identified(study.data, load_from_cfg(study.data, tmp_path, offline=True))))
    assert len(good) == len(bad) and not {r.run_id for r in good} & {r.run_id for r in bad}
    assert all(r.spec.data.content for r in good)


def test_a_config_without_content_still_parses_with_the_same_id():
    from funclens.config import ModelCfg, RunSpec, TrainCfg, canonical_json, from_dict

    s = RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(epochs=3))
    assert from_dict(RunSpec, json.loads(canonical_json(s))) == s
    assert "content" not in canonical_json(s) and "allow_modified" not in canonical_json(s)


# ---------------------------------------------------------------- bounds on pickles and sets

def _np_reconstruct():
    return np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct


class HugeArray:
    """Pickles as numpy's own array reconstruction, asking for 5.8 GiB."""

    def __reduce__(self):
        return (_np_reconstruct(), (np.ndarray, (6_200_000_000,), b"b"))


class CalledNdarray:
    def __reduce__(self):
        return (np.ndarray, ((6_200_000_000,), "u1"))


def test_a_small_pickle_asking_for_gigabytes_is_refused_before_allocating(tmp_path):
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({b"data": HugeArray(), b"labels": [0]}, protocol=2))
    assert p.stat().st_size < 300
    with pytest.raises(DataError, match="6200000000 elements declared"):
        read_cifar_pickle(p)
    p.write_bytes(pickle.dumps({b"data": CalledNdarray(), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="not a CIFAR pickle"):
        read_cifar_pickle(p)


def test_labels_made_of_repeated_references_are_refused_before_expanding(tmp_path):
    inner = [0] * 1000
    labels = [[inner] * 1000]  # 1,000,000 integers from a few kilobytes of pickle
    p = tmp_path / "cifar-100-python"
    p.mkdir()
    for name in ("train", "test"):
        (p / name).write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": labels},
                                            protocol=2))
    assert (p / "train").stat().st_size < 10_000
    with pytest.raises(DataError, match="not a list of 1 integers"):
        load_dataset("cifar100", tmp_path, offline=True, allow_modified=True)


def test_an_oversized_pickle_is_refused_by_its_size(tmp_path, monkeypatch):
    p = tmp_path / "test_batch"
    p.write_bytes(b"\0" * 2048)
    monkeypatch.setattr(data, "MAX_PICKLE_BYTES", 1024)
    with pytest.raises(DataError, match="over the 1024-byte limit"):
        read_cifar_pickle(p)


def test_an_empty_split_is_refused(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    for stem, arr in (("train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8)),
                      ("train-labels-idx1-ubyte", np.zeros(0, np.uint8)),
                      ("t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8)),
                      ("t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))):
        (d / stem).write_bytes(idx_bytes(arr))
    with pytest.raises(DataError, match="training set holds no images"):
        load_dataset("mnist", tmp_path, offline=True, allow_modified=True)


def test_images_too_small_for_the_model_are_refused_by_one_forward_pass():
    digits = load_dataset("digits")
    check_model_fits("lenet", digits)  # 8x8 fits
    tiny = Dataset("digits", torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64),
                   torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), 10, (0.5,), (0.2,))
    with pytest.raises(DataError, match="lenet cannot take digits's 1x2x2 images"):
        check_model_fits("lenet", tiny)
