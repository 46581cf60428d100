"""Any bytes given to a reader either load or raise its one clean error type: never a crash, hang or
code run from the file."""

import gzip
import io
import pickle
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funclens.data import DataError, read_cifar_pickle, read_idx
from funclens.metrics import check_predictions
from funclens.compare import read_array
from funclens.config import FunclensError
from funclens.store import Store, StoreError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def idx_header(dtype: int, dims: list[int]) -> bytes:
    return struct.pack(">BBBB", 0, 0, dtype, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


@FUZZ
@given(st.one_of(st.binary(max_size=300),
                 st.builds(lambda d, dims, tail: idx_header(d, dims) + tail,
                           st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x01]),
                           st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4), st.binary(max_size=200))),
       st.booleans())
def test_idx_reader(tmp_path, data, gz):
    p = tmp_path / "f"
    p.write_bytes(gzip.compress(data) if gz else data)
    try:
        arr = read_idx(p)
    except DataError:
        return
    assert isinstance(arr, np.ndarray)


def cifar_like(data: bytes) -> bytes:
    return pickle.dumps({b"data": np.frombuffer(data.ljust(3072, b"\0")[:3072], np.uint8).reshape(1, 3072),
                         b"labels": [1]}, protocol=2)


@FUZZ
@given(st.one_of(st.binary(max_size=400),
                 st.builds(lambda b, cut, flip: _mutate(cifar_like(b), cut, flip), st.binary(max_size=64),
                           st.integers(0, 4000), st.integers(0, 4000))))
def test_cifar_reader(tmp_path, data):
    p = tmp_path / "batch"
    p.write_bytes(data)
    try:
        d = read_cifar_pickle(p)
    except DataError:
        return
    assert isinstance(d, dict)


def _mutate(b: bytes, cut: int, flip: int) -> bytes:
    b = bytearray(b[: max(1, len(b) - cut % 50)])
    if b:
        b[flip % len(b)] ^= 0xFF
    return bytes(b)


@FUZZ
@given(st.one_of(st.binary(max_size=400),
                 st.builds(lambda arr, cut: _npy(arr)[: len(_npy(arr)) - cut],
                           st.sampled_from([np.ones((3, 2)), np.full((2, 2), np.nan), np.ones(4), np.zeros((1, 1, 1))]),
                           st.integers(0, 40))))
def test_prediction_file_reader(tmp_path, data):
    p = tmp_path / "p.npy"
    p.write_bytes(data)
    try:
        arr = check_predictions(read_array(p), str(p))
    except FunclensError:
        return
    assert arr.ndim == 2 and np.isfinite(arr).all()


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@FUZZ
@given(st.binary(max_size=600))
def test_checkpoint_reader(tmp_path, data):
    run = tmp_path / "runs" / "train_x"
    run.mkdir(parents=True, exist_ok=True)
    (run / "model.pt").write_bytes(data)
    try:
        Store(tmp_path).load_model_state("train_x")
    except StoreError:
        return
