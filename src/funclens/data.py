"""Data sets as in-memory uint8 tensors, read from their canonical files.

Every data set is held as ``[N, C, H, W]`` uint8 images plus int64 labels, train and test; batches are
converted to float and normalised when they are drawn, so a CIFAR-sized set costs 180 MB, not 720.
Readers parse the canonical formats (IDX, gzipped or raw; CIFAR python pickles through a restricted
unpickler) and raise :class:`DataError`, one clean error type, on anything else. Every file is read whole
and within a size bound (a gzip stream to its CRC trailer); a known set's files must be the published ones
or hold the canonical arrays; and each loaded set carries the sha256 of its arrays, which names its runs.
A user's own set, ``npz:PATH`` or ``folder:PATH`` (image files resized to ``image_size``), becomes the same
tensors; an npz is read member by member with no pickle, each header checked before its data is allocated.

Example:
    >>> ds = load_dataset("digits")
    >>> ds.train_x.shape, ds.num_classes
    (torch.Size([1437, 1, 8, 8]), 10)
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from funclens.config import DATASETS, MAX_IMAGE_SIZE, DataCfg, own_data_path
from funclens.errors import DataError, FunclensError
from funclens.safeio import read_regular


DEBIAN_DATASETS = Path("/usr/share/datasets")
# Sizes above these are refused before anything is allocated: the largest canonical IDX file holds
# 47 MB of data (raw MNIST train images), the largest CIFAR pickle 155 MB (CIFAR-100 train).
MAX_IDX_BYTES = 1 << 30
MAX_PICKLE_BYTES = 256 << 20
# A canonical CIFAR file holds at most 50,000 images; a pickle declaring more rows is not CIFAR.
MAX_CIFAR_ROWS = 50_000


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
    content_sha256: str = ""  # of the four arrays as loaded (subsets applied): see content_sha256()
    classes: tuple[str, ...] = ()  # class names, where the data set has them (npz "classes", folder names)

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


# ---------------------------------------------------------------- reading files with bounds

def _read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of the regular data file ``path``, refused when over ``limit`` bytes (see safeio)."""
    return read_regular(path, limit, DataError, "data file")


# ---------------------------------------------------------------- IDX

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class _Plain:
    """An IDX file's bytes, read in order."""

    def __init__(self, raw: bytes, path: Path) -> None:
        self.raw, self.pos, self.path = raw, 0, path

    def read(self, n: int) -> bytes:
        out = self.raw[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def finish(self) -> None:
        if self.pos != len(self.raw):
            raise DataError(f"{self.path}: {len(self.raw) - self.pos} bytes more than its IDX header declares")


class _Gunzip:
    """The decompressed bytes of exactly one gzip member, inflated only as far as asked.

    ``finish`` reads the stream to its end, so zlib checks the CRC-32 and length trailer; a file
    that goes on after the member (trailing bytes, a second member) is refused, not ignored.
    """

    def __init__(self, raw: bytes, path: Path) -> None:
        self.d, self.rest, self.path = zlib.decompressobj(16 + zlib.MAX_WBITS), raw, path

    def read(self, n: int) -> bytes:
        out: list[bytes] = []
        got = 0
        try:
            while got < n and not self.d.eof:
                before = len(self.rest)
                chunk = self.d.decompress(self.rest, n - got)
                self.rest = self.d.unconsumed_tail
                out.append(chunk)
                got += len(chunk)
                if not chunk and len(self.rest) == before:
                    break  # input used up before the member's end
        except zlib.error as e:
            raise DataError(f"{self.path}: damaged gzip data ({e})") from None
        return b"".join(out)

    def finish(self) -> None:
        if self.read(1):
            raise DataError(f"{self.path}: more data than its IDX header declares")
        if not self.d.eof:
            raise DataError(f"{self.path}: truncated gzip stream (no CRC trailer)")
        if self.d.unused_data:
            raise DataError(f"{self.path}: {len(self.d.unused_data)} bytes after the gzip stream "
                            "(trailing data or a second member)")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (raw or gzipped) whole; the header is checked before any data is allocated.

    A gzipped file is one gzip member whose CRC-32 and length are checked; any bit flipped in it is
    a :class:`DataError`, never different data.

    Args:
        path: the file, e.g. ``mnist/t10k-labels-idx1-ubyte.gz``.

    Example:
        >>> import gzip, tempfile
        >>> p = Path(tempfile.mkdtemp()) / "labels.gz"
        >>> _ = p.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 1, 2])))
        >>> read_idx(p).tolist()
        [7, 1, 2]
    """
    path = Path(path)
    return _idx_from_bytes(_read_bounded(path, MAX_IDX_BYTES), path)


def _idx_from_bytes(raw: bytes, path: Path) -> np.ndarray:
    f: _Plain | _Gunzip = _Gunzip(raw, path) if raw[:2] == b"\x1f\x8b" else _Plain(raw, path)
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
    if isinstance(f, _Plain) and len(raw) - 4 - 4 * head[3] < nbytes:
        raise DataError(f"{path}: truncated IDX file (header declares {nbytes} bytes of data)")
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise DataError(f"{path}: truncated IDX file ({len(data)} of {nbytes} bytes of data)")
    f.finish()
    return np.frombuffer(data, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_path(folder: Path, stem: str) -> Path:
    raw = folder / stem
    return raw if raw.is_file() else folder / (stem + ".gz")


def _load_idx_set(folder: Path, name: str) -> tuple[tuple[np.ndarray, ...], dict[Path, str]]:
    arrays, md5s = [], {}
    for stem in IDX_FILES:
        path = _idx_path(folder, stem)
        raw = _read_bounded(path, MAX_IDX_BYTES)
        md5s[path] = hashlib.md5(raw).hexdigest()
        arrays.append(_idx_from_bytes(raw, path))
    trx, try_, tex, tey = arrays
    for imgs, labels, which in ((trx, try_, "train"), (tex, tey, "test")):
        if imgs.ndim != 3 or labels.ndim != 1 or len(imgs) != len(labels) or imgs.dtype != np.uint8:
            raise DataError(f"{name} {which}: images {imgs.shape} and labels {labels.shape} do not fit together")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"{name} {which}: labels outside 0..9")
    return (trx[:, None], try_.astype(np.int64), tex[:, None], tey.astype(np.int64)), md5s


# ---------------------------------------------------------------- CIFAR pickles

_NDARRAY = object()  # stands for numpy.ndarray in a pickle: passed to _reconstruct, never called
_DTYPES = ("u1", "i1", "i2", "i4", "i8", "f4", "f8", "b1")  # what a CIFAR pickle's arrays may hold


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR pickle needs, within bounds: numpy arrays of plain dtypes no larger
    than the file itself (a canonical pickle holds its array bytes inline), and latin-1 strings.
    Any other global, an ``os.system`` say, is refused, so no code runs from a data file, and no
    allowed constructor can be asked to allocate more than the file's size.
    """

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def __init__(self, file: io.BytesIO, size: int) -> None:
        super().__init__(file, encoding="bytes")
        self.size = size

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) not in self.ALLOWED:
            raise DataError(f"forbidden global {module}.{name}")
        return {"encode": _latin1_encode, "ndarray": _NDARRAY, "dtype": _plain_dtype}.get(name, self._reconstruct)

    def _reconstruct(self, subtype: object, shape: object, dtype: object) -> np.ndarray:
        if subtype is not _NDARRAY or not isinstance(shape, tuple) or not all(type(d) is int for d in shape):
            raise DataError("not a CIFAR pickle (unexpected array reconstruction)")
        elements = 1
        for d in shape:
            elements *= max(d, 0)
        if elements > self.size:  # at least one byte each, all of them inline in the file
            raise DataError(f"array of {elements} elements declared in a {self.size}-byte file")
        return _np_reconstruct()(np.ndarray, shape, dtype)


def _np_reconstruct():  # noqa: ANN202
    return np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct


def _plain_dtype(name: object, *args: object) -> np.dtype:
    if isinstance(name, bytes):  # Python 2 wrote its str, which loads as bytes
        name = name.decode("latin1")
    if not isinstance(name, str) or name not in _DTYPES:
        raise DataError(f"not a CIFAR pickle (dtype {name!r})")
    return np.dtype(name, *args)


def _latin1_encode(text: object, encoding: object = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise DataError("not a CIFAR pickle (unexpected string encoding)")
    return text.encode("latin1")


def read_cifar_pickle(path: Path) -> dict:
    """Load one CIFAR batch file into a dict with str keys, through the restricted unpickler.

    Args:
        path: a batch file, e.g. ``cifar-10-batches-py/test_batch``; at most ``MAX_PICKLE_BYTES``.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "batch"
        >>> _ = p.write_bytes(pickle.dumps({b"labels": [3], b"data": np.zeros((1, 3072), np.uint8)}, protocol=2))
        >>> sorted(read_cifar_pickle(p))
        ['data', 'labels']
    """
    path = Path(path)
    return _cifar_dict(_read_bounded(path, MAX_PICKLE_BYTES), path)


def _cifar_dict(raw: bytes, path: Path) -> dict:
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), len(raw)).load()
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    except Exception as e:  # a damaged pickle can raise nearly anything; all of it means "not CIFAR"
        raise DataError(f"{path}: not a CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR pickle (top level is {type(obj).__name__})")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _cifar_arrays(path: Path, label_key: str, num_classes: int, md5s: dict[Path, str]
                  ) -> tuple[np.ndarray, np.ndarray]:
    raw = _read_bounded(path, MAX_PICKLE_BYTES)
    md5s[path] = hashlib.md5(raw).hexdigest()
    d = _cifar_dict(raw, path)
    data, labels = d.get("data"), d.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' is not a uint8 [N, 3072] array")
    if len(data) > MAX_CIFAR_ROWS:
        raise DataError(f"{path}: {len(data)} images, more than a CIFAR file holds ({MAX_CIFAR_ROWS})")
    # Checked item by item before numpy sees it: a list of repeated references to one long list
    # costs a few bytes of pickle per reference but would expand to gigabytes in np.asarray.
    if not isinstance(labels, list) or len(labels) != len(data) or not all(type(v) is int for v in labels):
        raise DataError(f"{path}: '{label_key}' is not a list of {len(data)} integers, one per image")
    y = np.asarray(labels, dtype=np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{path}: '{label_key}' leaves 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), y


def _load_cifar(folder: Path, name: str) -> tuple[tuple[np.ndarray, ...], dict[Path, str]]:
    md5s: dict[Path, str] = {}
    if name == "cifar10":
        parts = [_cifar_arrays(folder / f"data_batch_{i}", "labels", 10, md5s) for i in range(1, 6)]
        trx, try_ = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        tex, tey = _cifar_arrays(folder / "test_batch", "labels", 10, md5s)
    else:
        trx, try_ = _cifar_arrays(folder / "train", "fine_labels", 100, md5s)
        tex, tey = _cifar_arrays(folder / "test", "fine_labels", 100, md5s)
    return (trx, try_, tex, tey), md5s


# ---------------------------------------------------------------- a user's own data: npz files and image folders

# An npz file, and the decoded images of a folder set, are refused past 4 GiB: twice ImageNet-1k's
# validation set at 224x224, far past what funclens trains on a CPU, and what a typo'd path might fill.
MAX_OWN_BYTES = 1 << 32
MAX_IMAGE_FILE_BYTES = 64 << 20  # one image file of a folder set
MAX_CLASSES = 100_000
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_GRAY_MODES = ("1", "L", "I", "I;16", "F")  # PIL modes with one channel of intensity


def _npy_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> np.ndarray:
    """One array of an npz, its header checked against the member's size before any data is allocated:
    numpy would allocate whatever shape a header declares, and a 200-byte member can declare terabytes."""
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise DataError(f"{what}: .npy format version {version} is not supported")
        fmt = np.lib.format
        shape, fortran, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
        if dtype.hasobject:
            raise DataError(f"{what}: holds Python objects, which only a pickle can load (allow_pickle=False)")
        declared = math.prod(int(d) for d in shape) * dtype.itemsize  # Python ints: no overflow
        if declared > info.file_size - f.tell():
            raise DataError(f"{what}: its header declares {declared} bytes of data, more than the member holds")
        data = bytearray(declared)  # writable, unlike the bytes of read(): torch tensors share it
        got = f.readinto(data)
    if got != declared:
        raise DataError(f"{what}: truncated ({got} of {declared} bytes)")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an npz data set, read with no pickle, the file and each array within the size bound."""
    _check_regular(path, MAX_OWN_BYTES)
    try:
        with zipfile.ZipFile(path) as z:
            members = {i.filename[:-4]: i for i in z.infolist() if i.filename.endswith(".npy")}
            missing = [k for k in NPZ_KEYS if k not in members]
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(missing)}; an npz data set holds "
                                f"{', '.join(NPZ_KEYS)} (and optionally classes)")
            wanted = [k for k in (*NPZ_KEYS, "classes") if k in members]
            declared = sum(members[k].file_size for k in wanted)
            if declared > MAX_OWN_BYTES:  # sizes from the zip directory, before anything is inflated
                raise DataError(f"{path}: its arrays declare {declared} bytes, over the {MAX_OWN_BYTES}-byte limit")
            return {k: _npy_member(z, members[k], f"{path}: {k}") for k in wanted}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: not a readable npz of plain arrays ({type(e).__name__}: {e})") from None


def _check_regular(path: Path, limit: int) -> None:
    """Refuse ``path`` unless it is a regular file of at most ``limit`` bytes (checked before reading)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise DataError(f"{path}: unreadable ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path}: not a regular file")
    if st.st_size > limit:
        raise DataError(f"{path}: {st.st_size} bytes, over the {limit}-byte limit")


def _npz_images(x: np.ndarray, what: str) -> np.ndarray:
    """uint8 ``[N, H, W]`` or ``[N, H, W, C]`` -> ``[N, C, H, W]``."""
    if x.dtype != np.uint8:
        raise DataError(f"{what}: images must be uint8 (0..255), got {x.dtype}")
    if x.ndim not in (3, 4) or (x.ndim == 4 and not 1 <= x.shape[3] <= 4) or min(x.shape[1:3], default=0) < 1:
        raise DataError(f"{what}: images must be [N, H, W] or [N, H, W, C] with C in 1..4, got shape {x.shape}")
    return np.ascontiguousarray(x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2))


def _npz_labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or len(y) != n:
        raise DataError(f"{what}: labels must be integers [N] with N = {n}, got {y.dtype} {y.shape}")
    if y.size and y.min() < 0:
        raise DataError(f"{what}: negative labels")
    return y.astype(np.int64)


def _npz_classes(arrays: dict[str, np.ndarray], path: Path, labels: tuple[np.ndarray, ...]) -> tuple[str, ...]:
    """The class names: the file's ``classes``, or ``0..max label`` when it has none."""
    top = max(int(y.max()) for y in labels if y.size) if any(y.size for y in labels) else -1
    if "classes" not in arrays:
        names = tuple(str(i) for i in range(top + 1))
    else:
        c = arrays["classes"]
        if c.ndim != 1 or c.dtype.kind not in "US":
            raise DataError(f"{path}: classes must be a 1-D array of strings, got {c.dtype} {c.shape}")
        names = tuple(str(v) for v in c.astype(str))
        if len(set(names)) != len(names):
            raise DataError(f"{path}: classes names a class twice")
        if top >= len(names):
            raise DataError(f"{path}: labels out of range: {top} is not below the {len(names)} classes")
    if not 2 <= len(names) <= MAX_CLASSES:
        raise DataError(f"{path}: {len(names)} class(es); a data set needs 2..{MAX_CLASSES}")
    return names


def _load_npz(path: Path) -> tuple[tuple[np.ndarray, ...], tuple[str, ...]]:
    a = _npz_arrays(path)
    trx, tex = _npz_images(a["x_train"], f"{path}: x_train"), _npz_images(a["x_test"], f"{path}: x_test")
    if trx.shape[1:] != tex.shape[1:]:
        raise DataError(f"{path}: x_train images are {trx.shape[1:]} [C, H, W], x_test images {tex.shape[1:]}")
    try_ = _npz_labels(a["y_train"], len(trx), f"{path}: y_train")
    tey = _npz_labels(a["y_test"], len(tex), f"{path}: y_test")
    return (trx, try_, tex, tey), _npz_classes(a, path, (try_, tey))


def _image_files(folder: Path) -> dict[str, list[Path]]:
    """class name -> its image files, sorted by name; hidden entries are left out."""
    try:
        entries = sorted(d for d in folder.iterdir() if not d.name.startswith(".") and d.is_dir())
        return {d.name: sorted(f for f in d.iterdir() if not f.name.startswith(".") and f.is_file())
                for d in entries}
    except OSError as e:
        raise DataError(f"{folder}: unreadable ({e.strerror})") from None


def _decode(path: Path, size: int) -> tuple[np.ndarray, bool]:
    """One image file -> ``[size, size, 3]`` uint8 RGB, resized bilinearly, and whether it was grayscale."""
    from PIL import Image

    raw = _read_bounded(path, MAX_IMAGE_FILE_BYTES)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a few KB declaring gigapixels
            with Image.open(io.BytesIO(raw)) as im:
                gray = im.mode in _GRAY_MODES
                rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                return np.asarray(rgb, dtype=np.uint8), gray
    except Image.UnidentifiedImageError:
        raise DataError(f"{path}: not an image file PIL can read") from None
    except Exception as e:  # PIL raises many kinds for a damaged file; each means "not an image"
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def _load_folder(root: Path, size: int) -> tuple[tuple[np.ndarray, ...], tuple[str, ...]]:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` -> arrays, classes named by the train folders.

    Images are ``[N, 1, size, size]`` when every file is grayscale, else RGB ``[N, 3, size, size]``.
    """
    parts = {}
    for which in ("train", "test"):
        if not (root / which).is_dir():
            raise DataError(f"{root}: no {which}/ folder; a folder data set holds train/<class>/* and test/<class>/*")
        parts[which] = _image_files(root / which)
    classes = tuple(parts["train"])
    if len(classes) < 2:
        raise DataError(f"{root / 'train'}: {len(classes)} class folder(s); a data set needs at least 2 classes")
    if len(classes) > MAX_CLASSES:
        raise DataError(f"{root / 'train'}: {len(classes)} class folders, over the limit of {MAX_CLASSES}")
    extra = [c for c in parts["test"] if c not in classes]
    if extra:
        raise DataError(f"{root / 'test'}: class folder {extra[0]!r} has no counterpart in train/")
    count = sum(len(fs) for p in parts.values() for fs in p.values())
    if count * 3 * size * size > MAX_OWN_BYTES:
        raise DataError(f"{root}: {count} images of {size}x{size} pixels exceed the {MAX_OWN_BYTES}-byte limit")
    out, all_gray = [], True
    for which in ("train", "test"):
        imgs, labels = [], []
        for label, cls in enumerate(classes):
            for f in parts[which].get(cls, []):
                img, gray = _decode(f, size)
                imgs.append(img)
                labels.append(label)
                all_gray &= gray
        if not imgs:
            raise DataError(f"{root / which}: no image files in its class folders")
        out += [np.stack(imgs).transpose(0, 3, 1, 2), np.asarray(labels, dtype=np.int64)]
    if all_gray:  # a grayscale image converted to RGB holds three equal channels
        out[0], out[2] = out[0][:, :1], out[2][:, :1]
    return tuple(np.ascontiguousarray(a) for a in out), classes


def _load_own(name: str, image_size: int) -> tuple[tuple[np.ndarray, ...], tuple[str, ...]]:
    path = own_data_path(name)
    if not path:
        raise DataError(f"{name!r}: name the data set's file or folder after the colon")
    if name.startswith("npz:"):
        return _load_npz(Path(path))
    if not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise DataError(f"{name}: a folder data set needs image_size in 1..{MAX_IMAGE_SIZE} ([data] image_size)")
    if not Path(path).is_dir():
        raise DataError(f"{path}: not a folder")
    return _load_folder(Path(path), image_size)


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


# ---------------------------------------------------------------- identity

# md5 of each canonical file as published with the data set (the values torchvision checks; the raw
# MNIST ones as listed in shared/data/SOURCES.md), checked every time a set is read.
KNOWN_MD5: dict[str, dict[str, str]] = {
    "mnist": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
              "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
              "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
              "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
              "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
              "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
              "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
              "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"},
    "fashion-mnist": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                      "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                      "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                      "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
    "cifar10": {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
                "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e"},
    "cifar100": {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"},
}

# content_sha256() of the whole canonical sets, for files that hold the canonical arrays in other
# bytes: a gzip of other settings (Debian's Fashion-MNIST .gz files, whose md5s are not the published
# ones), or CIFAR pickles without the 'filenames' key. Computed once with this module from copies
# verified against the published checksums or independent sources: MNIST from the four .gz files
# whose md5s are the published ones; Fashion-MNIST from Debian's dataset-fashion-mnist
# 0.0~git20200523.55506a9-1; CIFAR-10 from the lossless copy described in shared/data/SOURCES.md
# (pixels and labels checked there against ConvNetJS, CIFAR-10H and published rows). No verified
# CIFAR-100 copy was at hand: CIFAR-100 is accepted through its files' md5s only.
KNOWN_CONTENT: dict[str, str] = {
    "mnist": "4603a34520d2cf66ddc0b6d9524213ca8a7794c477998fce8aade95041c8d142",
    "fashion-mnist": "bcaa2223d6348c30af808815450404474d5c4e95db8b9e1e70d1b4e7b8020b91",
    "cifar10": "34f4b971278576a4a7eec6b865f89ed4c8d27bbf5a41f0ee114680cba4f924dd",
}


def content_sha256(train_x: np.ndarray | torch.Tensor, train_y: np.ndarray | torch.Tensor,
                   test_x: np.ndarray | torch.Tensor, test_y: np.ndarray | torch.Tensor) -> str:
    """sha256 (hex) of a data set's four arrays, each as its name, dtype, shape and little-endian bytes.

    Args:
        train_x, train_y, test_x, test_y: the arrays as loaded (numpy arrays or CPU tensors).

    Example:
        >>> z = np.zeros((1, 1, 2, 2), np.uint8); y = np.zeros(1, np.int64)
        >>> content_sha256(z, y, z, y) == content_sha256(z, y, z, y + 1)
        False
    """
    h = hashlib.sha256()
    for name, a in (("train_x", train_x), ("train_y", train_y), ("test_x", test_x), ("test_y", test_y)):
        arr = np.ascontiguousarray(a.numpy() if isinstance(a, torch.Tensor) else a)
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        h.update(f"{name}:{arr.dtype.str}:{list(arr.shape)};".encode())
        h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def _check_known(name: str, md5s: dict[Path, str], arrays: tuple[np.ndarray, ...], allow_modified: bool) -> None:
    """Refuse a known set whose files are neither the published ones nor hold the canonical arrays."""
    known = KNOWN_MD5.get(name, {})
    bad = [(p, got) for p, got in md5s.items() if known.get(p.name) != got]
    if not bad:
        return
    full = content_sha256(*arrays)  # the whole set, before subsets: what KNOWN_CONTENT records
    if full == KNOWN_CONTENT.get(name) or allow_modified:
        return
    path, got = bad[0]
    want = known.get(path.name, "none published for this name")
    raise DataError(f"{path}: md5 {got}, not the published {want}; {name} content sha256 {full}, not the "
                    f"canonical {KNOWN_CONTENT.get(name) or '(none known)'}; to use these files anyway, pass "
                    "--allow-modified-data (in a study file: [data] allow_modified = true)")


# ---------------------------------------------------------------- entry point

NUM_CLASSES = {"digits": 10, "mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100}


def _read_arrays(name: str, data_dir: Path | None, offline: bool, image_size: int
                 ) -> tuple[tuple[np.ndarray, ...], dict[Path, str], tuple[str, ...]]:
    """(train x, train y, test x, test y), the md5 of every canonical file read, and an own set's class names."""
    if own_data_path(name) is not None:
        arrays, classes = _load_own(name, image_size)
        return arrays, {}, classes
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}, \"npz:PATH\" or \"folder:PATH\"")
    if name == "digits":
        return _load_digits(), {}, ()
    folder = find_dataset(name, data_dir)
    if folder is None:
        if offline:
            raise DataError(_missing_message(name, data_dir, "not found and --offline given"))
        folder = download(name, Path(data_dir) if data_dir else default_data_dir())
    arrays, md5s = _load_idx_set(folder, name) if name in ("mnist", "fashion-mnist") else _load_cifar(folder, name)
    return arrays, md5s, ()


def load_dataset(name: str, data_dir: Path | None = None, *, offline: bool = False, train_subset: int = 0,
                 test_subset: int = 0, allow_modified: bool = False, content: str = "",
                 image_size: int = 0, normalize: bool = True) -> Dataset:
    """Load a data set into memory, downloading its canonical files first when missing and online.

    Every load checks a known set's files against their published md5s, or else its arrays against
    the canonical content hash; the result carries ``content_sha256`` of what was loaded.

    A user's own set, ``npz:PATH`` or ``folder:PATH``, is read with no pickle and within size bounds,
    and checked: uint8 images ``[N, H, W]`` or ``[N, H, W, C]``, integer labels below the class count,
    at least two classes.

    Args:
        name: one of ``digits``, ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``, or ``npz:PATH``
            (arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``, optional ``classes``) or ``folder:PATH``
            (``train/<class>/*`` and ``test/<class>/*`` image files).
        data_dir: where canonical folders live (default ``$FUNCLENS_DATA`` or ``~/.cache/funclens``).
        offline: never download; a missing set is a :class:`DataError` naming the files expected.
        train_subset, test_subset: keep only the first N images (0: all).
        allow_modified: accept files that are neither the published ones nor hold the canonical arrays.
        content: the ``content_sha256`` the loaded set must have ("" : any); a set that matches it was
            accepted before, so the published checksums are not asked for again.
        image_size: ``folder:`` sets only: every image is resized to ``image_size`` x ``image_size``.
        normalize: standardise each channel by the training set's mean and std; False: mean 0 and std 1
            stand in for them, so every consumer of :meth:`Dataset.normalize` sees pixels / 255.

    Example:
        >>> ds = load_dataset("digits", test_subset=10)
        >>> len(ds.test_x), len(ds.content_sha256)
        (10, 64)
        >>> load_dataset("digits", test_subset=10, normalize=False).std
        (1.0,)
    """
    own = own_data_path(name) is not None
    arrays, md5s, classes = _read_arrays(name, data_dir, offline, image_size)
    trx, try_, tex, tey = arrays
    if train_subset:
        trx, try_ = trx[:train_subset], try_[:train_subset]
    if test_subset:
        tex, tey = tex[:test_subset], tey[:test_subset]
    for imgs, which in ((trx, "training"), (tex, "test")):
        if len(imgs) == 0:
            raise DataError(f"{name}: the {which} set holds no images")
    subset = (trx, try_, tex, tey)
    got = content_sha256(*subset)
    if content:
        if got != content:
            raise DataError(f"{name}: the data changed since the study was planned (content sha256 {got}, "
                            f"planned {content})")
    elif name != "digits" and not own:
        _check_known(name, md5s, arrays, allow_modified)
    train_x = torch.from_numpy(np.ascontiguousarray(trx))
    mean, std = _channel_stats(train_x)
    if not normalize:
        mean, std = (0.0,) * len(mean), (1.0,) * len(std)
    return Dataset(name, train_x, torch.from_numpy(np.ascontiguousarray(try_)),
                   torch.from_numpy(np.ascontiguousarray(tex)), torch.from_numpy(np.ascontiguousarray(tey)),
                   len(classes) if own else NUM_CLASSES[name], mean, std, got, classes)


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
    """The data set ``cfg`` describes; with ``cfg.content`` set, it must hold exactly that content."""
    return load_dataset(cfg.dataset, data_dir, offline=offline, train_subset=cfg.train_subset,
                        test_subset=cfg.test_subset, allow_modified=cfg.allow_modified, content=cfg.content,
                        image_size=cfg.image_size, normalize=cfg.normalize)


def check_content(cfg: DataCfg, data: Dataset) -> Dataset:
    """``data`` if it holds the content ``cfg`` pins (or ``cfg`` pins none); else a :class:`DataError`."""
    if cfg.content and data.content_sha256 != cfg.content:
        raise DataError(f"{cfg.dataset}: the data changed since the study was planned (content sha256 "
                        f"{data.content_sha256}, planned {cfg.content})")
    return data


def identified(cfg: DataCfg, data: Dataset) -> DataCfg:
    """``cfg`` pinned to the content of ``data``, as every run of a study records it.

    The pin replaces ``allow_modified``: a run is named by what it was trained on, not by how that
    data came to be accepted.

    Args:
        cfg: the study's data config.
        data: the data set loaded from it.

    Example:
        >>> cfg = DataCfg("digits", test_subset=10)
        >>> identified(cfg, load_from_cfg(cfg)).content == load_dataset("digits", test_subset=10).content_sha256
        True
    """
    check_content(cfg, data)
    return dataclasses.replace(cfg, content=data.content_sha256, allow_modified=False)


def check_model_fits(arch: str, data: Dataset) -> None:
    """One forward pass of ``arch`` on one test image: images the model cannot take (too small for
    its pooling, say) are a :class:`DataError` before any run starts, not a failure in every run.

    Args:
        arch: a registered model name, ``"package.module:function"`` or ``"timm:NAME"``.
        data: the data set the study trains on.

    Example:
        >>> check_model_fits("lenet", load_dataset("digits", test_subset=1))
    """
    from funclens.models import create_model  # late: the registry imports every model

    shape = "x".join(str(d) for d in data.in_shape)
    # fork_rng leaves the caller's random state alone; warnings about a model built for such images
    # (zero-element layers) would only precede the one line that says what is wrong.
    with torch.random.fork_rng(devices=[]), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = create_model(arch, in_shape=data.in_shape, num_classes=data.num_classes).eval()
            out = model(data.normalize(data.test_x[:1]))
        except FunclensError:
            raise
        # A user's model may fail in any way on images it cannot take; funclens's own in these.
        except (Exception if ":" in arch else (RuntimeError, ValueError, IndexError, ZeroDivisionError)) as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"{arch} cannot take {data.name}'s {shape} images ({why})") from None
    if not isinstance(out, torch.Tensor):
        raise DataError(f"{arch} returns a {type(out).__name__} for {data.name}'s {shape} images, not a tensor "
                        "of logits")
    if tuple(out.shape) != (1, data.num_classes):
        raise DataError(f"{arch} maps {data.name}'s {shape} images to outputs of shape {tuple(out.shape)[1:]}, "
                        f"not {data.num_classes} classes")


def dataset_status(data_dir: Path | None = None, *, offline: bool = False) -> list[tuple[str, str, str]]:
    """(name, where, state) for every known data set, for `funclens datasets`.

    Args:
        data_dir: the canonical data folder (default ``$FUNCLENS_DATA`` or ``~/.cache/funclens``).
        offline: as a study with ``--offline`` sees them: a missing set is "missing", never "downloaded on
            first use".

    Example:
        >>> dataset_status(offline=True)[0]
        ('digits', 'scikit-learn (embedded)', 'present')
    """
    missing = "missing" if offline else "missing (downloaded on first use)"
    rows = [("digits", "scikit-learn (embedded)", "present")]
    for name in DATASETS[1:]:
        folder = find_dataset(name, data_dir)
        where = str(folder) if folder else str((Path(data_dir) if data_dir else default_data_dir()) / FOLDERS[name])
        rows.append((name, where, "present" if folder else missing))
    return rows
