"""The only module that reads and writes run folders.

A run folder fills up as the run goes (``config.json``, per-epoch ``preds/ep_NNN.npy`` and a
``checkpoint.pt``), and ``DONE`` is written last. ``DONE`` is JSON holding the sha256 of every file
it vouches for, so a truncated or edited file is found rather than trusted. Every write goes to a
temporary file in the same folder, is flushed to disk, then renamed over its target: a kill at
any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from funclens import __version__, paths
from funclens.config import RunSpec, canonical_json, from_dict, to_dict
from funclens.errors import StoreError


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


GIT_COMMIT = _git_commit()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StoreError(f"cannot write {path}: {e.strerror or e}") from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_torch(path: Path) -> Any:
    """Load a checkpoint without running code from it (tensors and plain containers only)."""
    try:
        with warnings.catch_warnings():  # a hostile file's odd pickle protocol is refused, not warned about
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StoreError(f"missing file {path}") from None
    except Exception as e:  # torch raises many types for damaged or hostile files
        raise StoreError(f"{path}: not a loadable weights-only checkpoint ({type(e).__name__})") from None


@dataclass
class Store:
    """A study's output folder. Runs live in ``root/runs/<id>/``."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    # ------------------------------------------------------------ layout
    def run_dir(self, run_id: str) -> Path:
        return paths.run_dir(self.root, run_id)

    def ensure_writable(self) -> None:
        """Create the store's folders, or fail with one clear line if that is impossible."""
        try:
            paths.runs_dir(self.root).mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise StoreError(f"--out {self.root} is not writable: {e.strerror or e}") from None

    # ------------------------------------------------------------ state
    def is_done(self, run_id: str) -> bool:
        return paths.done_file(self.run_dir(run_id)).exists()

    def done_record(self, run_id: str) -> dict:
        p = paths.done_file(self.run_dir(run_id))
        try:
            return json.loads(p.read_text())
        except FileNotFoundError:
            raise StoreError(f"run {run_id} is not finished (no DONE)") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StoreError(f"run {run_id}: DONE is damaged") from None

    def verify_run(self, run_id: str) -> list[str]:
        """Problems with a DONE run's files (empty when every recorded checksum matches)."""
        try:
            rec = self.done_record(run_id)
        except StoreError as e:
            return [str(e)]
        run = self.run_dir(run_id)
        problems = []
        for name, digest in sorted(rec.get("files", {}).items()):
            p = run / name
            if not p.is_file():
                problems.append(f"run {run_id}: {name} is missing")
            elif sha256_file(p) != digest:
                problems.append(f"run {run_id}: {name} does not match its checksum (truncated or changed)")
        if not rec.get("files"):
            problems.append(f"run {run_id}: DONE lists no files")
        return problems

    def invalidate(self, run_id: str) -> None:
        """Withdraw a damaged run's DONE so that it is computed again."""
        with contextlib.suppress(FileNotFoundError):
            paths.done_file(self.run_dir(run_id)).unlink()

    def list_runs(self) -> list[str]:
        d = paths.runs_dir(self.root)
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    # ------------------------------------------------------------ writing a run
    def begin(self, spec: RunSpec) -> Path:
        """Create the run folder and its config.json (once; a differing config is refused)."""
        run = self.run_dir(spec.run_id)
        try:
            paths.preds_dir(run).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create {run}: {e.strerror or e}") from None
        cfg = paths.config_file(run)
        record = {"id": spec.run_id, "spec": to_dict(spec), "canonical": canonical_json(spec),
                  "funclens_version": __version__, "git_commit": GIT_COMMIT}
        if cfg.exists():
            try:
                old = json.loads(cfg.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                old = {}
            if old.get("canonical") == record["canonical"]:
                return run
            if old:
                raise StoreError(f"{cfg} holds another config than run {spec.run_id}'s; move it away")
        atomic_write_text(cfg, json.dumps(record, indent=2, sort_keys=True))
        return run

    def save_init(self, run_id: str, state_dict: dict) -> None:
        path = paths.init_file(self.run_dir(run_id))
        if not path.exists():
            atomic_write_bytes(path, _torch_bytes(_cpu_state(state_dict)))

    def load_init(self, run_id: str) -> dict:
        return load_torch(paths.init_file(self.run_dir(run_id)))

    def save_preds(self, run_id: str, epoch: int, probs: np.ndarray) -> None:
        """Store a ``[N, C]`` float16 softmax array for ``epoch`` (0 for post-hoc runs)."""
        assert probs.dtype == np.float16 and probs.ndim == 2
        atomic_write_bytes(paths.preds_file(self.run_dir(run_id), epoch), _npy_bytes(probs))

    def save_checkpoint(self, run_id: str, state: dict) -> None:
        atomic_write_bytes(paths.checkpoint_file(self.run_dir(run_id)), _torch_bytes(state))

    def load_checkpoint(self, run_id: str) -> dict | None:
        """The last finished epoch's state, or None to start from scratch (damaged files included:
        a checkpoint is a cache, and the epochs it covers are recomputed identically)."""
        p = paths.checkpoint_file(self.run_dir(run_id))
        if not p.exists():
            return None
        try:
            return load_torch(p)
        except StoreError:
            return None

    def finish(self, run_id: str, *, state_dict: dict | None, metrics: dict,
               packed: dict | None = None, extra_files: dict[str, bytes] | None = None) -> None:
        """Write the final model and metrics, then DONE with the checksum of every file."""
        run = self.run_dir(run_id)
        if state_dict is not None:
            atomic_write_bytes(paths.model_file(run), _torch_bytes(_cpu_state(state_dict)))
        if packed is not None:
            atomic_write_bytes(paths.packed_model_file(run), _torch_bytes(packed))
        for name, data in (extra_files or {}).items():
            atomic_write_bytes(run / name, data)
        metrics = {**metrics, "funclens_version": __version__, "git_commit": GIT_COMMIT}
        atomic_write_text(paths.metrics_file(run), json.dumps(metrics, indent=2, sort_keys=True))
        with contextlib.suppress(FileNotFoundError):
            paths.checkpoint_file(run).unlink()  # the final model supersedes it
        files = {}
        for p in sorted(run.rglob("*")):
            if p.is_file() and p.name != "DONE" and not p.name.startswith("."):
                files[p.relative_to(run).as_posix()] = sha256_file(p)
        atomic_write_text(paths.done_file(run), json.dumps(
            {"run": run_id, "files": files, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
            indent=2, sort_keys=True))

    # ------------------------------------------------------------ reading a run
    def load_spec(self, run_id: str) -> RunSpec:
        p = paths.config_file(self.run_dir(run_id))
        try:
            return from_dict(RunSpec, json.loads(p.read_text())["spec"])
        except FileNotFoundError:
            raise StoreError(f"run {run_id} has no config.json") from None
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
            raise StoreError(f"run {run_id}: config.json is damaged") from None

    def load_metrics(self, run_id: str) -> dict:
        p = paths.metrics_file(self.run_dir(run_id))
        try:
            return json.loads(p.read_text())
        except FileNotFoundError:
            raise StoreError(f"run {run_id} has no metrics.json") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StoreError(f"run {run_id}: metrics.json is damaged") from None

    def pred_epochs(self, run_id: str) -> list[int]:
        d = paths.preds_dir(self.run_dir(run_id))
        return sorted(int(p.stem[3:]) for p in d.glob("ep_*.npy")) if d.is_dir() else []

    def load_preds(self, run_id: str, epoch: int | None = None) -> np.ndarray:
        """Softmax array of ``epoch`` (default: the last one stored)."""
        if epoch is None:
            epochs = self.pred_epochs(run_id)
            if not epochs:
                raise StoreError(f"run {run_id} has no predictions")
            epoch = epochs[-1]
        p = paths.preds_file(self.run_dir(run_id), epoch)
        try:
            return np.load(p, allow_pickle=False)
        except FileNotFoundError:
            raise StoreError(f"run {run_id} has no predictions for epoch {epoch}") from None
        except ValueError as e:
            raise StoreError(f"{p}: not a readable .npy file ({e})") from None

    def load_model_state(self, run_id: str) -> dict:
        return load_torch(paths.model_file(self.run_dir(run_id)))

    # ------------------------------------------------------------ whole-store lock
    @contextlib.contextmanager
    def lock(self, wait: bool = False) -> Iterator[None]:
        """Hold the store for one `funclens study`; a second one waits or is refused naming the holder."""
        path = paths.lock_file(self.root)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"cannot create lock {path}: {e.strerror or e}") from None
        _HELD_LOCKS.add(fd)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                raise StoreError(f"{self.root} is in use by {holder}; wait for it or pass --wait") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"funclens pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            yield
        finally:
            _HELD_LOCKS.discard(fd)
            os.close(fd)  # closing releases the flock


_HELD_LOCKS: set[int] = set()


def _close_inherited_locks() -> None:
    # A flock lasts while any copy of its descriptor is open: a forked worker that outlived its
    # killed study would otherwise keep the store locked against the restarted one.
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


def _cpu_state(state_dict: dict) -> dict:
    return {k: v.detach().to("cpu").clone() if torch.is_tensor(v) else v for k, v in state_dict.items()}
