"""Data sets as in-memory uint8 tensors, read from their canonical files.

Every data set is held as ``[N, C, H, W]`` uint8 images plus int64 labels, train and test; batches are
converted to float and normalised when they are drawn, so a CIFAR-sized set costs 180 MB, not 720.
Readers parse the canonical formats (IDX, gzipped or raw; CIFAR python pickles through a restricted
unpickler) and raise :class:`DataError`, one clean error type, on anything else.

Example:
    >>> ds = load_dataset("digits")
    >>> ds.train_x.shape, ds.num_classes
    (torch.Size([1437, 1, 8, 8]), 10)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from funclens.config import DATASETS, DataCfg
from funclens.errors import DataError


DEBIAN_DATASETS = Path("/usr/share/datasets")
# Sizes above this are refused before anything is allocated: the largest canonical file holds 47 MB.
MAX_IDX_BYTES = 1 << 30


@dataclass(frozen=True)
class Dataset:
    name: str
    train_x: torch.Tensor  # [N, C, H, W] uint8
    train_y: torch.Tensor  # [N] int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per channel, of train_x / 255
    std: tuple[float, ...]

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> float32 batch with zero mean and unit variance per channel."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std


# ---------------------------------------------------------------- canonical files and downloads

@dataclass(frozen=True)
class Remote:
    filename: str
    url: str
    md5: str


# Addresses and md5 checksums as published by the data sets' authors (the same values torchvision
# checks). CIFAR archives are unpacked after download.
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
REMOTES: dict[str, list[Remote]] = {
    "mnist": [
        Remote("train-images-idx3-ubyte.gz", _MNIST_URL + "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        Remote("train-labels-idx1-ubyte.gz", _MNIST_URL + "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        Remote("t10k-images-idx3-ubyte.gz", _MNIST_URL + "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        Remote("t10k-labels-idx1-ubyte.gz", _MNIST_URL + "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ],
    "fashion-mnist": [
        Remote("train-images-idx3-ubyte.gz", _FASHION_URL + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        Remote("train-labels-idx1-ubyte.gz", _FASHION_URL + "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        Remote("t10k-images-idx3-ubyte.gz", _FASHION_URL + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        Remote("t10k-labels-idx1-ubyte.gz", _FASHION_URL + "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ],
    "cifar10": [Remote("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                       "c58f30108f718f92721af3b95e74349a")],
    "cifar100": [Remote("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        "eb9058c3a382ffc7106e4002c42a8d85")],
}

FOLDERS = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "cifar10": "cifar-10-batches-py",
           "cifar100": "cifar-100-python"}
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_FILES = {"cifar10": ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"),
               "cifar100": ("train", "test")}


def default_data_dir() -> Path:
    return Path(os.environ.get("FUNCLENS_DATA") or Path.home() / ".cache" / "funclens")


def expected_files(name: str) -> list[str]:
    if name in ("mnist", "fashion-mnist"):
        return [f + "[.gz]" for f in IDX_FILES]
    return list(CIFAR_FILES.get(name, ()))


def _present_in(folder: Path, name: str) -> bool:
    if name in ("mnist", "fashion-mnist"):
        return all((folder / f).is_file() or (folder / (f + ".gz")).is_file() for f in IDX_FILES)
    return all((folder / f).is_file() for f in CIFAR_FILES[name])


def find_dataset(name: str, data_dir: Path | None = None) -> Path | None:
    """The folder holding ``name``'s canonical files: in ``data_dir``, else in Debian's /usr/share/datasets."""
    if name == "digits":
        return None
    for root in (Path(data_dir) if data_dir else default_data_dir(), DEBIAN_DATASETS):
        folder = root / FOLDERS[name]
        if _present_in(folder, name):
            return folder
    return None


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(name: str, data_dir: Path) -> Path:
    """Fetch ``name``'s canonical files into ``data_dir/<folder>``, verifying each md5."""
    folder = Path(data_dir) / FOLDERS[name]
    folder.mkdir(parents=True, exist_ok=True)
    for r in REMOTES[name]:
        with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
            target = Path(tmp) / r.filename
            try:
                with urllib.request.urlopen(r.url, timeout=30) as resp, open(target, "wb") as f:
                    shutil.copyfileobj(resp, f)
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                raise DataError(_missing_message(name, data_dir, f"download of {r.url} failed ({e})")) from None
            got = _md5(target)
            if got != r.md5:
                raise DataError(f"{r.url}: md5 {got} differs from the published {r.md5}; not used")
            if r.filename.endswith(".tar.gz"):
                with tarfile.open(target) as tar:
                    tar.extractall(data_dir, filter="data")  # 'data' refuses absolute paths and links out
            else:
                os.replace(target, folder / r.filename)
    return folder


def _missing_message(name: str, data_dir: Path | None, why: str) -> str:
    where = Path(data_dir) if data_dir else default_data_dir()
    return (f"{name}: {why}; expected {', '.join(expected_files(name))} in {where / FOLDERS[name]} "
            f"(or {DEBIAN_DATASETS / FOLDERS[name]})")


# ---------------------------------------------------------------- IDX

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _open_maybe_gzip(path: Path) -> io.BufferedIOBase:
    with open(path, "rb") as f:
        magic = f.read(2)
    # gzip.open owns its file, so closing the reader closes the file too (GzipFile(fileobj=) would not)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")  # type: ignore[return-value]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (raw or gzipped); the header is checked before any data is allocated."""
    path = Path(path)
    try:
        with _open_maybe_gzip(path) as f:
            head = f.read(4)
            if len(head) != 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES or not 1 <= head[3] <= 4:
                raise DataError(f"{path}: not an IDX file (bad magic number)")
            dtype = np.dtype(_IDX_DTYPES[head[2]])
            dims_raw = f.read(4 * head[3])
            if len(dims_raw) != 4 * head[3]:
                raise DataError(f"{path}: truncated IDX header")
            dims = tuple(int(d) for d in np.frombuffer(dims_raw, ">u4"))
            nbytes = int(np.prod(dims, dtype=np.float64)) * dtype.itemsize
            # A zero dimension makes the data empty but not the shape sane: (0, 11, 3e8) cannot be built.
            span = float(np.prod([max(d, 1) for d in dims], dtype=np.float64)) * dtype.itemsize
            if nbytes > MAX_IDX_BYTES or span > MAX_IDX_BYTES:
                raise DataError(f"{path}: IDX header declares {nbytes} bytes, over the {MAX_IDX_BYTES}-byte limit")
            if not isinstance(f, gzip.GzipFile) and os.path.getsize(path) - 4 - 4 * head[3] < nbytes:
                raise DataError(f"{path}: truncated IDX file (header declares {nbytes} bytes of data)")
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise DataError(f"{path}: truncated IDX file ({len(data)} of {nbytes} bytes of data)")
    except (OSError, EOFError, gzip.BadGzipFile, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    return np.frombuffer(data, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_path(folder: Path, stem: str) -> Path:
    raw = folder / stem
    return raw if raw.is_file() else folder / (stem + ".gz")


def _load_idx_set(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    arrays = [read_idx(_idx_path(folder, s)) for s in IDX_FILES]
    trx, try_, tex, tey = arrays
    for imgs, labels, which in ((trx, try_, "train"), (tex, tey, "test")):
        if imgs.ndim != 3 or labels.ndim != 1 or len(imgs) != len(labels) or imgs.dtype != np.uint8:
            raise DataError(f"{name} {which}: images {imgs.shape} and labels {labels.shape} do not fit together")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"{name} {which}: labels outside 0..9")
    return trx[:, None], try_.astype(np.int64), tex[:, None], tey.astype(np.int64)


# ---------------------------------------------------------------- CIFAR pickles

class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a CIFAR pickle names (numpy's array reconstruction); anything
    else, a ``os.system`` say, is refused, so no code runs from a data file."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) not in self.ALLOWED:
            raise DataError(f"forbidden global {module}.{name}")
        if name == "encode":
            import codecs

            return codecs.encode
        if name in ("ndarray", "dtype"):
            return getattr(np, name)
        return np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct


def read_cifar_pickle(path: Path) -> dict:
    """Load one CIFAR batch file into a dict with str keys, through the restricted unpickler."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    except Exception as e:  # a damaged pickle can raise nearly anything; all of it means "not CIFAR"
        raise DataError(f"{path}: not a CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR pickle (top level is {type(obj).__name__})")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _cifar_arrays(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = read_cifar_pickle(path)
    data, labels = d.get("data"), d.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' is not a uint8 [N, 3072] array")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: '{label_key}' is not a list of integers") from None
    if y.shape != (len(data),) or (y.size and (y.min() < 0 or y.max() >= num_classes)):
        raise DataError(f"{path}: '{label_key}' does not match 'data' or leaves 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), y


def _load_cifar(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if name == "cifar10":
        parts = [_cifar_arrays(folder / f"data_batch_{i}", "labels", 10) for i in range(1, 6)]
        trx, try_ = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        tex, tey = _cifar_arrays(folder / "test_batch", "labels", 10)
    else:
        trx, try_ = _cifar_arrays(folder / "train", "fine_labels", 100)
        tex, tey = _cifar_arrays(folder / "test", "fine_labels", 100)
    return trx, try_, tex, tey


# ---------------------------------------------------------------- digits

def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    # Pixel values are 0..16; scale to the 0..255 range every other set uses.
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    trx, tex, try_, tey = train_test_split(x, d.target.astype(np.int64), test_size=0.2, random_state=0,
                                           stratify=d.target)
    return trx, try_, tex, tey


# ---------------------------------------------------------------- entry point

NUM_CLASSES = {"digits": 10, "mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100}


def load_dataset(name: str, data_dir: Path | None = None, *, offline: bool = False,
                 train_subset: int = 0, test_subset: int = 0) -> Dataset:
    """Load a data set into memory, downloading its canonical files first when missing and online.

    Args:
        name: one of ``digits``, ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``.
        data_dir: where canonical folders live (default ``$FUNCLENS_DATA`` or ``~/.cache/funclens``).
        offline: never download; a missing set is a :class:`DataError` naming the files expected.
        train_subset, test_subset: keep only the first N images (0: all).
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if name == "digits":
        arrays = _load_digits()
    else:
        folder = find_dataset(name, data_dir)
        if folder is None:
            if offline:
                raise DataError(_missing_message(name, data_dir, "not found and --offline given"))
            folder = download(name, Path(data_dir) if data_dir else default_data_dir())
        arrays = _load_idx_set(folder, name) if name in ("mnist", "fashion-mnist") else _load_cifar(folder, name)
    trx, try_, tex, tey = arrays
    if train_subset:
        trx, try_ = trx[:train_subset], try_[:train_subset]
    if test_subset:
        tex, tey = tex[:test_subset], tey[:test_subset]
    train_x = torch.from_numpy(np.ascontiguousarray(trx))
    mean, std = _channel_stats(train_x)
    return Dataset(name, train_x, torch.from_numpy(np.ascontiguousarray(try_)),
                   torch.from_numpy(np.ascontiguousarray(tex)), torch.from_numpy(np.ascontiguousarray(tey)),
                   NUM_CLASSES[name], mean, std)


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``x / 255``, in chunks: a float copy of CIFAR would take 600 MB."""
    s = torch.zeros(x.shape[1], dtype=torch.float64)
    s2 = torch.zeros_like(s)
    for i in range(0, len(x), 4096):
        c = x[i:i + 4096].to(torch.float64).div_(255.0)
        s += c.sum(dim=(0, 2, 3))
        s2 += c.square().sum(dim=(0, 2, 3))
    n = max(1, x.numel() // x.shape[1])
    mean = s / n
    std = (s2 / n - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def load_from_cfg(cfg: DataCfg, data_dir: Path | None = None, offline: bool = False) -> Dataset:
    return load_dataset(cfg.dataset, data_dir, offline=offline, train_subset=cfg.train_subset,
                        test_subset=cfg.test_subset)


def dataset_status(data_dir: Path | None = None) -> list[tuple[str, str, str]]:
    """(name, where, state) for every known data set, for `funclens datasets`."""
    rows = [("digits", "scikit-learn (embedded)", "present")]
    for name in DATASETS[1:]:
        folder = find_dataset(name, data_dir)
        where = str(folder) if folder else str((Path(data_dir) if data_dir else default_data_dir()) / FOLDERS[name])
        rows.append((name, where, "present" if folder else "missing (downloaded on first use)"))
    return rows
