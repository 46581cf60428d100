"""The only module that reads and writes run folders, ``study.json`` and the record of report files.

A run folder fills up as the run goes (``config.json``, per-epoch ``preds/ep_NNN.npy`` and a
``checkpoint.pt``), and ``DONE`` is written last. ``DONE`` is the run's manifest and the truth about
it (as a wheel's RECORD is): the run's id, the sha256 of its canonical config, and every file with
its sha256. A finished run counts only when its folder holds exactly those files with those
checksums, and readers take a run's file list from ``DONE``, never from a directory listing.

Every write goes to a temporary file in the same folder, is flushed to disk, then renamed over its
target: a kill at any moment leaves either the old file or the new one, never half of one. Nothing
is written through a symbolic link: a store holding one where funclens writes is refused.

Example:
    >>> st = Store(Path(tempfile.mkdtemp()))
    >>> spec = RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(epochs=1))
    >>> st.prepare(spec)
    'start'
    >>> st.save_preds(spec.run_id, 1, np.full((4, 3), 1 / 3, np.float16))
    >>> st.finish(spec.run_id, state_dict={"w": torch.ones(2)}, metrics={"test_acc": 0.5})
    >>> st.verify_run(spec.run_id), st.pred_epochs(spec.run_id), st.prepare(spec)
    ([], [1], 'done')
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile  # noqa: F401  (the examples' folders)
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from funclens import __version__, paths
from funclens.config import (MAX_EPOCHS, DataCfg, ModelCfg, RunSpec, StudyCfg, TrainCfg,  # noqa: F401  (examples)
                             canonical_json, from_dict, to_dict)
from funclens.errors import ConfigError, StoreError


def _git_commit(where: Path = Path(__file__).parent) -> str | None:
    """HEAD of the checkout funclens runs from, with ``-dirty`` when its tracked files under ``where`` differ
    from HEAD: a stamp must not vouch for code the commit does not hold."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=where)
        head = out.stdout.strip() if out.returncode == 0 else ""
        if not head:
            return None
        diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "."], capture_output=True, timeout=10,
                              cwd=where)
        return head + "-dirty" if diff.returncode == 1 else head
    except (OSError, subprocess.SubprocessError):
        return None


GIT_COMMIT = _git_commit()


def short_commit(commit: str) -> str:
    """A commit stamp shortened for a table, keeping its ``-dirty`` mark.

    Example:
        >>> short_commit("0123456789abcdef-dirty"), short_commit("0123456789abcdef")
        ('0123456-dirty', '0123456')
    """
    return commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")


def describe_commit(folder: Path) -> str:
    """The short commit of the git work tree ``folder`` is in, marked when tracked files differ from it: what
    a script that writes a document records of the code that ran it.

    Args:
        folder: any folder of the work tree.

    Example:
        >>> describe_commit(Path(tempfile.mkdtemp()))
        'unknown (not a git checkout)'
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + (" with uncommitted changes" if dirty else "")

_TEMPORARY = re.compile(r"\..+\.\d+\.tmp")  # atomic_write_bytes's temporary name
_PREDS = re.compile(r"preds/ep_(\d{3,})\.npy")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_RECORD_BYTES = 64 << 20  # DONE, config.json, study.json: a few kB in practice
_LINKS = "funclens writes nothing through symbolic links: replace it with a real one or delete it"


def is_temporary(name: str) -> bool:
    """Whether a file name is an atomic write's temporary file, which is never a file of a run.

    Args:
        name: a file's name (no folder).

    Example:
        >>> is_temporary(".ep_003.npy.4242.tmp"), is_temporary("ep_003.npy")
        (True, False)
    """
    return _TEMPORARY.fullmatch(name) is not None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    The temporary file is opened without following links, and the rename replaces a link at ``path``
    rather than writing through it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno != errno.ELOOP:
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


def _digest(obj: Any) -> str:
    """sha256 of a JSON value's canonical text (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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


def _read_record(path: Path) -> Any:
    """A small JSON record; FileNotFoundError when absent, StoreError when it is a link, not a file,
    too large or not JSON."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise StoreError(f"{path.name} is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{path.name} is not a file")
    if st.st_size > MAX_RECORD_BYTES:
        raise StoreError(f"{path.name} is {st.st_size} bytes, over the {MAX_RECORD_BYTES}-byte limit")
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise StoreError(f"{path.name} is not valid JSON") from None


def _walk(folder: Path) -> tuple[list[str], list[str]]:
    """(files, symbolic links) under ``folder`` as relative POSIX names, without following links;
    atomic writes' temporary files are left out."""
    files, links = [], []
    for top, dirs, names in os.walk(folder, followlinks=False):
        rel = Path(top).relative_to(folder)
        for d in dirs:
            if os.path.islink(os.path.join(top, d)):
                links.append((rel / d).as_posix())
        for n in names:
            if os.path.islink(os.path.join(top, n)):
                links.append((rel / n).as_posix())
            elif not is_temporary(n):
                files.append((rel / n).as_posix())
    return sorted(files), sorted(links)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _refuse_link(path: Path) -> None:
    if os.path.islink(path):
        raise StoreError(f"{path} is a symbolic link; {_LINKS}")


def _check_rng(t: Any, ref: torch.Tensor) -> bool:
    return torch.is_tensor(t) and t.dtype == ref.dtype and t.shape == ref.shape


def _checkpoint_shape_ok(ck: Any, epochs: int) -> bool:
    """Whether a loaded checkpoint has what a resume reads, with the right types."""
    if not isinstance(ck, dict):
        return False
    epoch, history, model, opt, rng = (ck.get(k) for k in ("epoch", "history", "model", "optimizer", "rng"))
    return (isinstance(epoch, int) and not isinstance(epoch, bool) and 1 <= epoch <= epochs
            and isinstance(history, list) and len(history) == epoch
            and all(isinstance(h, dict) and {"test_acc", "test_loss"} <= set(h) for h in history)
            and isinstance(model, dict) and all(torch.is_tensor(v) for v in model.values())
            and isinstance(opt, dict) and isinstance(opt.get("state"), dict)
            and isinstance(opt.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in opt["param_groups"])
            and isinstance(rng, dict) and _check_rng(rng.get("torch"), torch.get_rng_state())
            and _check_rng(rng.get("gen"), torch.Generator().get_state()))


@dataclass
class Store:
    """A study's output folder. Runs live in ``root/runs/<id>/``."""

    root: Path
    # report files as they were before a report began: (inode, mtime in ns) by name
    _before: dict[str, tuple[int, int]] | None = field(default=None, init=False, repr=False, compare=False)
    # sha256 of the predictions this store wrote, by (run id, epoch): what a checkpoint vouches for
    _preds_sha: dict[tuple[str, int], str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    # ------------------------------------------------------------ layout
    def run_dir(self, run_id: str) -> Path:
        return paths.run_dir(self.root, run_id)

    def _entries(self) -> list[Path]:
        """The store's own entries, where funclens writes: none of them may be a symbolic link."""
        out = [paths.runs_dir(self.root), paths.study_file(self.root), paths.lock_file(self.root),
               paths.outputs_file(self.root)] + self._output_entries()
        runs = paths.runs_dir(self.root)
        if runs.is_dir() and not runs.is_symlink():
            out += sorted(runs.iterdir())
        return out

    def _output_entries(self) -> list[Path]:
        r = self.root
        return [paths.summary_file(r), paths.report_md(r), paths.report_html(r), paths.tables_dir(r),
                paths.figures_dir(r)]

    def check_links(self) -> None:
        """Refuse, with one line naming it, a store entry that is a symbolic link (``runs``, a run folder,
        ``study.json``, ``.lock``, report files, ``tables``, ``figures``): writing there could land
        outside the store.

        Example:
            >>> root = Path(tempfile.mkdtemp())
            >>> (root / "tables").symlink_to("/tmp")
            >>> try:
            ...     Store(root).check_links()
            ... except StoreError as e:
            ...     print(str(e).replace(str(root), "OUT").split(";")[0])
            OUT/tables is a symbolic link
        """
        for p in self._entries():
            _refuse_link(p)

    def ensure_writable(self) -> None:
        """Create the store's folders, or fail with one clear line if that is impossible or unsafe."""
        self.check_links()
        try:
            paths.runs_dir(self.root).mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise StoreError(f"--out {self.root} is not writable: {e.strerror or e}") from None

    # ------------------------------------------------------------ state
    def is_done(self, run_id: str) -> bool:
        """Whether the run claims to be finished (has a DONE); :meth:`verify_run` says whether it is."""
        return os.path.lexists(paths.done_file(self.run_dir(run_id)))

    def done_record(self, run_id: str) -> dict:
        """The run's manifest: ``{"run": id, "config_sha256": ..., "files": {name: sha256}, ...}``."""
        try:
            rec = _read_record(paths.done_file(self.run_dir(run_id)))
        except (FileNotFoundError, NotADirectoryError):
            raise StoreError(f"run {run_id} is not finished (no DONE)") from None
        except StoreError as e:
            raise StoreError(f"run {run_id}: {e}") from None
        files = rec.get("files") if isinstance(rec, dict) else None
        if (not isinstance(files, dict) or not files or not isinstance(rec.get("run"), str)
                or not all(isinstance(n, str) and _SAFE_NAME.fullmatch(n) and ".." not in n.split("/")
                           and isinstance(d, str) and _SHA256.fullmatch(d) for n, d in files.items())):
            raise StoreError(f"run {run_id}: DONE is damaged (not a manifest of the run's files)")
        return rec

    def _folder_problem(self, run_id: str) -> str | None:
        runs, run = paths.runs_dir(self.root), self.run_dir(run_id)
        if os.path.islink(runs):
            return f"{runs} is a symbolic link"
        if os.path.islink(run):
            return f"run {run_id}: its folder is a symbolic link"
        if not os.path.lexists(run):
            return f"run {run_id} has no folder"
        if not run.is_dir():
            return f"run {run_id}: its folder is not a folder"
        return None

    def _identity_problems(self, run_id: str, rec: dict) -> list[str]:
        """DONE, config.json and the folder's name must name the same run."""
        problems = []
        if rec["run"] != run_id:
            problems.append(f"run {run_id}: DONE is the manifest of run {rec['run']}, not of this folder's")
        if paths.config_file(Path()).name not in rec["files"]:
            problems.append(f"run {run_id}: DONE does not list config.json")
        try:
            cfg = _read_record(paths.config_file(self.run_dir(run_id)))
            spec = from_dict(RunSpec, cfg["spec"])
        except (OSError, StoreError, ConfigError, KeyError, TypeError, ValueError, AttributeError):
            return problems + [f"run {run_id}: config.json is missing or damaged"]
        if cfg.get("id") != run_id:
            problems.append(f"run {run_id}: config.json is the config of run {cfg.get('id')}")
        elif spec.run_id != run_id:
            problems.append(f"run {run_id}: config.json's spec has the id {spec.run_id}, not its folder's")
        digest = _digest_text(canonical_json(spec))
        if rec.get("config_sha256", digest) != digest:
            problems.append(f"run {run_id}: DONE vouches for another config than config.json's")
        return problems

    def verify_run(self, run_id: str) -> list[str]:
        """Problems with a finished run; empty when its folder is exactly what its DONE vouches for.

        The folder must be a real folder inside ``runs/`` with no symbolic link in it; DONE, config.json
        (its id, and the id recomputed from its spec) and the folder's name must name the same run;
        every file in the folder must be listed in DONE (temporary files of atomic writes aside), and
        every listed file must be there with its checksum.

        Args:
            run_id: the run's id, the name of its folder.

        Example:
            >>> Store(Path(tempfile.mkdtemp())).verify_run("train_0123456789ab")
            ['run train_0123456789ab has no folder']
        """
        folder = self._folder_problem(run_id)
        if folder:
            return [folder]
        try:
            rec = self.done_record(run_id)
        except StoreError as e:
            return [str(e)]
        run = self.run_dir(run_id)
        problems = self._identity_problems(run_id, rec)
        files, links = _walk(run)
        problems += [f"run {run_id}: {n} is a symbolic link" for n in links]
        done = paths.done_file(Path()).name
        problems += [f"run {run_id}: {n} is not listed in DONE" for n in files if n not in rec["files"] and n != done]
        for name, digest in sorted(rec["files"].items()):
            try:
                st = os.lstat(run / name)
            except OSError:
                problems.append(f"run {run_id}: {name} is missing")
                continue
            if stat.S_ISLNK(st.st_mode):
                continue  # named above
            if not stat.S_ISREG(st.st_mode):
                problems.append(f"run {run_id}: {name} is not a regular file")
            elif sha256_file(run / name) != digest:
                problems.append(f"run {run_id}: {name} does not match its checksum (truncated or changed)")
        return problems

    def invalidate(self, run_id: str) -> None:
        """Withdraw a damaged run's DONE (a file, or whatever stands in its place) so that it is computed again."""
        done = paths.done_file(self.run_dir(run_id))
        with contextlib.suppress(FileNotFoundError):
            if done.is_dir() and not done.is_symlink():
                shutil.rmtree(done)
            else:
                done.unlink()

    def clear_run(self, run_id: str) -> None:
        """Empty a run's folder (DONE first), without following links, so the run starts afresh."""
        run = self.run_dir(run_id)
        _refuse_link(run)
        try:
            self.invalidate(run_id)
            for entry in os.scandir(run):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise StoreError(f"cannot clear {run}: {e.strerror or e}") from None

    def list_runs(self) -> list[str]:
        """The entries of ``runs/`` that are folders or links (a link is named by :meth:`verify_run`)."""
        d = paths.runs_dir(self.root)
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if p.is_dir() or p.is_symlink())

    # ------------------------------------------------------------ writing a run
    def _stored_config(self, run_id: str) -> dict | None:
        """config.json's record, or None when it is absent, unreadable or not a record."""
        try:
            cfg = _read_record(paths.config_file(self.run_dir(run_id)))
        except (OSError, StoreError):
            return None
        return cfg if isinstance(cfg, dict) else None

    def _vouched_spec(self, run_id: str) -> dict | None:
        """The full spec a finished run recorded, when DONE, config.json and the folder name agree on
        the run and config.json matches its checksum in DONE; else None."""
        try:
            rec = self.done_record(run_id)
            cfg_path = paths.config_file(self.run_dir(run_id))
            if rec["run"] != run_id or rec["files"].get(cfg_path.name) != sha256_file(cfg_path):
                return None
            cfg = self._stored_config(run_id)
            return to_dict(from_dict(RunSpec, cfg["spec"])) if cfg and cfg.get("id") == run_id else None
        except (OSError, StoreError, ConfigError, KeyError, TypeError, ValueError, AttributeError):
            return None

    def prepare(self, spec: RunSpec) -> str:
        """Make a run's folder ready: ``"done"`` when the run is finished and intact, else ``"start"``
        (its folder made, with config.json).

        A finished run whose folder is not exactly what its DONE vouches for, or an unfinished one
        holding another config or a link, is cleared and begun afresh from ``spec``: a damaged run is
        recomputed, never re-signed. A finished, intact run whose recorded full spec differs from
        ``spec`` under the same id (a default changed between versions) is refused, naming the fields.

        Args:
            spec: the requested run; its parents must be finished.

        Example:
            >>> st = Store(Path(tempfile.mkdtemp()))
            >>> st.prepare(RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(epochs=1)))
            'start'
        """
        rid, run = spec.run_id, self.run_dir(spec.run_id)
        _refuse_link(paths.runs_dir(self.root))
        _refuse_link(run)
        want = to_dict(spec)
        if self.is_done(rid):
            stored = self._vouched_spec(rid)
            if stored is not None and stored != want:
                raise StoreError(_identity_message(run, stored, want))
            if not self.verify_run(rid):
                return "done"
            self.clear_run(rid)
        elif run.is_dir():
            cfg, record = self._stored_config(rid) or {}, _config_record(spec)
            if _walk(run)[1] or (os.path.lexists(paths.config_file(run))
                                 and any(cfg.get(k) != record[k] for k in ("id", "spec", "canonical"))):
                self.clear_run(rid)  # partial work of another config, or a link: a cache, not a result
        for parent in spec.parents:
            if not self.is_done(parent):
                raise StoreError(f"run {rid} needs {parent}, which is not finished")
        self.begin(spec)
        return "start"

    def begin(self, spec: RunSpec) -> Path:
        """Create the run folder and its config.json (once; a folder holding another config is refused)."""
        run = self.run_dir(spec.run_id)
        _refuse_link(run)
        try:
            paths.preds_dir(run).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create {run}: {e.strerror or e}") from None
        cfg = paths.config_file(run)
        record = _config_record(spec)
        if os.path.lexists(cfg):
            old = self._stored_config(spec.run_id) or {}
            if all(old.get(k) == record[k] for k in ("id", "spec", "canonical")):
                return run
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
        data = _npy_bytes(probs)
        atomic_write_bytes(paths.preds_file(self.run_dir(run_id), epoch), data)
        self._preds_sha[(run_id, epoch)] = hashlib.sha256(data).hexdigest()

    def save_labels(self, run_id: str, labels: np.ndarray) -> None:
        """Store the test set's ``[N]`` integer labels with a run (DONE then lists them)."""
        atomic_write_bytes(paths.labels_file(self.run_dir(run_id)), _npy_bytes(np.asarray(labels, np.int64)))

    def save_checkpoint(self, run_id: str, state: dict) -> None:
        """Write a run's resume state (after its epoch's predictions), stamped with the run's id and the sha256
        of the predictions of every epoch it covers: a resume takes neither another run's checkpoint (a
        fine-tuning run of another setting has the same tensors) nor predictions changed since."""
        epoch = state.get("epoch") if isinstance(state, dict) else None
        if isinstance(epoch, int) and 1 <= epoch <= MAX_EPOCHS:
            state = {**state, "run": run_id,
                     "preds_sha256": [self._preds_digest(run_id, e) for e in range(1, epoch + 1)]}
        atomic_write_bytes(paths.checkpoint_file(self.run_dir(run_id)), _torch_bytes(state))

    def _preds_digest(self, run_id: str, epoch: int) -> str:
        """The sha256 of a run's predictions of ``epoch`` as this store wrote them, else as they are on disk
        (a resumed run's earlier epochs); empty when there is no such regular file."""
        if (run_id, epoch) not in self._preds_sha:
            p = paths.preds_file(self.run_dir(run_id), epoch)
            if not os.path.isfile(p) or os.path.islink(p):
                return ""
            self._preds_sha[(run_id, epoch)] = sha256_file(p)
        return self._preds_sha[(run_id, epoch)]

    def _checkpoint_fits(self, run_id: str, ck: Any) -> bool:
        """Whether a loaded checkpoint is one this run's resume can use: the structure ``train`` wrote,
        the model's parameter names and shapes (from ``init.pt``), and the predictions of its epochs."""
        try:
            spec = self.load_spec(run_id)
        except StoreError:
            return False
        if spec.train is None or not _checkpoint_shape_ok(ck, spec.train.epochs):
            return False
        run = self.run_dir(run_id)
        if os.path.lexists(paths.init_file(run)):
            try:
                init = self.load_init(run_id)
            except StoreError:
                return False
            if not isinstance(init, dict) or {k: tuple(v.shape) for k, v in ck["model"].items()} != \
                    {k: tuple(v.shape) for k, v in init.items() if torch.is_tensor(v)}:
                return False
        digests = ck.get("preds_sha256")
        if ck.get("run") != run_id or not isinstance(digests, list) or len(digests) != ck["epoch"]:
            return False
        self._preds_sha = {k: v for k, v in self._preds_sha.items() if k[0] != run_id}  # read them as they are now
        return all(d and self._preds_digest(run_id, e) == d for e, d in enumerate(digests, start=1))

    def load_checkpoint(self, run_id: str) -> dict | None:
        """The last finished epoch's state, or None to start from scratch.

        A checkpoint is a cache: one that is damaged, or loads but is not what a resume of this run
        needs, is deleted, and the epochs it covered are recomputed identically.
        """
        p = paths.checkpoint_file(self.run_dir(run_id))
        if not os.path.lexists(p):
            return None
        try:
            ck = None if p.is_symlink() else load_torch(p)
        except StoreError:
            ck = None
        if ck is not None and self._checkpoint_fits(run_id, ck):
            return ck
        with contextlib.suppress(OSError):
            p.unlink()
        return None

    def finish(self, run_id: str, *, state_dict: dict | None, metrics: dict,
               packed: dict | None = None, extra_files: dict[str, bytes] | None = None) -> None:
        """Write the final model and metrics, then DONE: the run's id, the sha256 of its canonical
        config, and every file with its sha256."""
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
        files, links = _walk(run)
        if links:
            raise StoreError(f"run {run_id}: {links[0]} is a symbolic link; {_LINKS}")
        done = paths.done_file(run)
        record = {"run": run_id, "config_sha256": _digest_text(canonical_json(self.load_spec(run_id))),
                  "files": {n: sha256_file(run / n) for n in files if n != done.name},
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_text(done, json.dumps(record, indent=2, sort_keys=True))

    # ------------------------------------------------------------ reading a run
    def load_spec(self, run_id: str) -> RunSpec:
        try:
            return from_dict(RunSpec, _read_record(paths.config_file(self.run_dir(run_id)))["spec"])
        except FileNotFoundError:
            raise StoreError(f"run {run_id} has no config.json") from None
        except (StoreError, ConfigError, KeyError, TypeError, ValueError, AttributeError):
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
        """The epochs of a finished run's predictions, as its DONE lists them (0 alone for a post-hoc run).

        Args:
            run_id: a finished run.

        Example:
            >>> Store(Path(tempfile.mkdtemp())).pred_epochs("quant_0123456789ab")
            Traceback (most recent call last):
            funclens.errors.StoreError: run quant_0123456789ab is not finished (no DONE)
        """
        names = self.done_record(run_id)["files"]
        return sorted(int(m.group(1)) for n in names if (m := _PREDS.fullmatch(n))
                      and n == paths.preds_file(Path(), int(m.group(1))).as_posix())

    def load_preds(self, run_id: str, epoch: int | None = None) -> np.ndarray:
        """Softmax array of a finished run's ``epoch`` (default: the last one its DONE lists)."""
        epochs = self.pred_epochs(run_id)
        if not epochs:
            raise StoreError(f"run {run_id}: DONE lists no predictions")
        if epoch is None:
            epoch = epochs[-1]
        elif epoch not in epochs:
            raise StoreError(f"run {run_id}: DONE lists no predictions for epoch {epoch}")
        p = paths.preds_file(self.run_dir(run_id), epoch)
        try:
            with open(os.open(p, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
                return np.load(f, allow_pickle=False)
        except FileNotFoundError:
            raise StoreError(f"run {run_id} has no predictions for epoch {epoch}") from None
        except OSError as e:
            raise StoreError(f"{p}: cannot read: {e.strerror or e}") from None
        except ValueError as e:
            raise StoreError(f"{p}: not a readable .npy file ({e})") from None

    def load_labels(self, run_id: str) -> np.ndarray | None:
        """A finished run's test labels ``[N]`` int64, or None when its DONE lists none (runs of older versions).

        Example:
            >>> st = Store(Path(tempfile.mkdtemp()))
            >>> spec = RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(epochs=1))
            >>> _ = st.prepare(spec); st.save_preds(spec.run_id, 1, np.full((2, 3), 1 / 3, np.float16))
            >>> st.save_labels(spec.run_id, np.array([2, 0]))
            >>> st.finish(spec.run_id, state_dict=None, metrics={"test_acc": 0.5})
            >>> st.load_labels(spec.run_id)
            array([2, 0])
        """
        name = paths.labels_file(Path()).as_posix()
        if name not in self.done_record(run_id)["files"]:
            return None
        p = paths.labels_file(self.run_dir(run_id))
        try:
            with open(os.open(p, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
                y = np.load(f, allow_pickle=False)
        except OSError as e:
            raise StoreError(f"{p}: cannot read: {e.strerror or e}") from None
        except ValueError as e:
            raise StoreError(f"{p}: not a readable .npy file ({e})") from None
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise StoreError(f"{p}: not [N] integer labels ({y.dtype} {y.shape})")
        return y

    def load_model_state(self, run_id: str) -> dict:
        return load_torch(paths.model_file(self.run_dir(run_id)))

    # ------------------------------------------------------------ the study's record
    def write_study(self, record: dict) -> None:
        """Write ``study.json`` (the study's config and plan) with a checksum of its content.

        A folder holding another study is refused; a damaged ``study.json`` is rewritten (the runs
        are verified on their own), so it never locks the folder.

        Args:
            record: ``{"funclens_version", "study": to_dict(StudyCfg), "runs": [PlannedRun.to_json()]}``.

        Example:
            >>> from funclens.config import preset_study
            >>> from funclens.plan import plan
            >>> st, study = Store(Path(tempfile.mkdtemp())), preset_study("quick")
            >>> st.write_study({"study": to_dict(study), "runs": [p.to_json() for p in plan(study)]})
            >>> st.read_study()["study"]["name"]
            'quick'
        """
        f = paths.study_file(self.root)
        _refuse_link(f)
        try:
            old = self.read_study()
        except StoreError:
            old = None
        name = record["study"].get("name")
        # The same study may grow (a method added, runs are shared by id); another study may not
        # take over the folder, since its report would silently replace this one's.
        if old is not None and old["study"].get("name") != name:
            raise StoreError(f"{self.root} holds another study ({old['study'].get('name')}); choose another --out")
        body = {k: v for k, v in record.items() if k != "sha256"}
        atomic_write_text(f, json.dumps({**body, "sha256": _digest(body)}, indent=2, sort_keys=True))

    def read_study(self) -> dict:
        """``study.json``, checked: its checksum, its shape, and that its runs (ids, roles, settings,
        seeds, parents) are exactly the plan of its study config.

        Example:
            >>> Store(Path("/nonexistent")).read_study()
            Traceback (most recent call last):
            funclens.errors.StoreError: /nonexistent holds no study (no study.json)
        """
        from funclens.plan import plan

        f = paths.study_file(self.root)
        redo = "; rerun `funclens study` to rewrite it"
        try:
            rec = _read_record(f)
        except (FileNotFoundError, NotADirectoryError):
            raise StoreError(f"{self.root} holds no study (no study.json)") from None
        except StoreError as e:
            raise StoreError(f"{self.root}: {e}{redo}") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str):
            raise StoreError(f"{f} is damaged (no checksum){redo}")
        if _digest({k: v for k, v in rec.items() if k != "sha256"}) != rec["sha256"]:
            raise StoreError(f"{f} does not match its checksum (edited or damaged){redo}")
        try:
            study = from_dict(StudyCfg, rec["study"])
            runs = rec["runs"]
        except (ConfigError, KeyError, TypeError, ValueError, AttributeError):
            raise StoreError(f"{f} is malformed (no valid study config){redo}") from None
        if runs != [p.to_json() for p in plan(study)]:
            raise StoreError(f"{f}: its runs are not the plan of its study config (roles, settings or ids "
                             f"changed){redo}")
        return rec

    # ------------------------------------------------------------ report files
    def _output_files(self) -> tuple[list[str], list[str]]:
        """(files, links) among the report's files, as names relative to the store."""
        files, links = [], []
        for p in self._output_entries():
            rel = p.relative_to(self.root).as_posix()
            if os.path.islink(p):
                links.append(rel)
            elif p.is_dir():
                f, l = _walk(p)
                files += [f"{rel}/{n}" for n in f]
                links += [f"{rel}/{n}" for n in l]
            elif p.exists():
                files.append(rel)
        return files, links

    def _output_stats(self) -> dict[str, tuple[int, int]]:
        return {n: (st.st_ino, st.st_mtime_ns) for n in self._output_files()[0]
                if (st := os.lstat(self.root / n))}

    def begin_outputs(self) -> None:
        """Before a report is written: refuse links in the store, and withdraw the record of the
        previous report's files, so a half-written report is never vouched for."""
        self.check_links()
        files, links = self._output_files()
        if links:
            raise StoreError(f"{self.root / links[0]} is a symbolic link; {_LINKS}")
        self._before = self._output_stats()
        with contextlib.suppress(FileNotFoundError):
            paths.outputs_file(self.root).unlink()

    def record_outputs(self) -> None:
        """After a report is written: record the sha256 of every report file it wrote in ``outputs.json``.

        Files it did not write (anything else put into ``tables/`` or ``figures/``) stay unrecorded, so
        :meth:`verify_outputs` keeps naming them.
        """
        files, links = self._output_files()
        if links:
            raise StoreError(f"{self.root / links[0]} is a symbolic link; {_LINKS}")
        before, now = self._before or {}, self._output_stats()
        written = [n for n in files if before.get(n) != now.get(n)]  # atomic writes make new inodes
        atomic_write_text(paths.outputs_file(self.root), json.dumps(
            {"files": {n: sha256_file(self.root / n) for n in written}}, indent=2, sort_keys=True))

    def verify_outputs(self) -> list[str]:
        """Problems with the report's files: links, files not recorded, files not matching their record."""
        files, links = self._output_files()
        problems = [f"{n} is a symbolic link" for n in links]
        try:
            rec = _read_record(paths.outputs_file(self.root))
        except FileNotFoundError:
            return problems + ([f"report files are not recorded (no {paths.outputs_file(Path()).name}); "
                                f"rebuild them with `funclens report`"] if files else [])
        except StoreError as e:
            return problems + [str(e)]
        listed = rec.get("files") if isinstance(rec, dict) else None
        if not isinstance(listed, dict):
            return problems + [f"{paths.outputs_file(Path()).name} is damaged"]
        problems += [f"{n} is not a file of the recorded report" for n in files if n not in listed]
        for n, digest in sorted(listed.items()):
            if not (isinstance(n, str) and _SAFE_NAME.fullmatch(n) and ".." not in n.split("/")):
                problems.append(f"{paths.outputs_file(Path()).name} is damaged")
                continue
            p = self.root / n
            if not p.is_file() or p.is_symlink():
                problems.append(f"{n} is missing")
            elif sha256_file(p) != digest:
                problems.append(f"{n} does not match its checksum (edited or damaged)")
        return problems

    # ------------------------------------------------------------ the whole store
    def verify(self) -> tuple[list[str], int]:
        """(problems, finished runs checked) of the whole store: links among its entries, study.json,
        the plan's unfinished runs, every run folder, and the report's files.

        Example:
            >>> Store(Path(tempfile.mkdtemp())).verify()
            ([], 0)
        """
        problems = [f"{p} is a symbolic link" for p in self._entries()
                    if os.path.islink(p) and p.parent != paths.runs_dir(self.root)]
        planned: list = []
        if os.path.lexists(paths.study_file(self.root)):
            try:
                planned = self.read_study()["runs"]
            except StoreError as e:
                problems.append(str(e))
        for r in planned:
            if not self.is_done(r["run"]):
                problems.append(f"run {r['run']} ({r['role']} {r['setting']}) is not finished (no DONE); "
                                "run `funclens study` to finish it")
        runs = paths.runs_dir(self.root)
        if runs.is_dir() and not runs.is_symlink():
            # funclens writes only run folders here; a file among them is nobody's output
            problems += [f"runs/{p.name} is not a run's folder (funclens wrote no such file)"
                         for p in sorted(runs.iterdir())
                         if not p.is_symlink() and not p.is_dir() and not is_temporary(p.name)]
        checked = 0
        for rid in self.list_runs():
            if self.is_done(rid) or self.run_dir(rid).is_symlink():
                checked += 1
                problems += self.verify_run(rid)
        return problems + self.verify_outputs(), checked

    def adopt_run(self, source: "Store", run_id: str) -> str | None:
        """Take a finished run of another store instead of computing it again (call with this store locked).

        The source's folder must pass :meth:`verify_run` there; it is copied under a temporary name and renamed
        into place whole, replacing an unfinished folder of this store, and checked again here. A run that is
        already DONE here is left as it is.

        Args:
            source: a store that may hold the run.
            run_id: the run's id.

        Returns:
            None once adopted, else why not (one line).
        """
        if self.is_done(run_id):
            return f"run {run_id} is already finished here"
        problems = source.verify_run(run_id)
        if problems:
            return problems[0]
        runs = paths.runs_dir(self.root)
        runs.mkdir(parents=True, exist_ok=True)
        tmp = runs / f".{run_id}.{os.getpid()}.tmp"
        try:
            shutil.copytree(source.run_dir(run_id), tmp, symlinks=True)
            if os.path.lexists(self.run_dir(run_id)):
                self.clear_run(run_id)
                os.rmdir(self.run_dir(run_id))
            os.rename(tmp, self.run_dir(run_id))
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(f"cannot copy run {run_id} from {source.root}: {e.strerror or e}") from None
        problems = self.verify_run(run_id)
        if problems:   # changed while it was copied: computed here instead
            self.clear_run(run_id)
            return problems[0]
        return None

    def remove_stale_temporaries(self) -> list[str]:
        """Delete temporary files that killed writers left behind, and the folders of runs being adopted
        (:meth:`adopt_run`) when it was killed (call with the store locked)."""
        gone = []
        runs = paths.runs_dir(self.root)
        if runs.is_dir() and not runs.is_symlink():
            for p in runs.iterdir():
                if is_temporary(p.name) and p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                    gone.append(str(p))
        for top, _dirs, names in os.walk(self.root, followlinks=False):
            for n in names:
                p = os.path.join(top, n)
                if is_temporary(n) and not os.path.islink(p):
                    with contextlib.suppress(OSError):
                        os.unlink(p)
                        gone.append(p)
        return gone

    # ------------------------------------------------------------ whole-store lock
    @contextlib.contextmanager
    def lock(self, wait: bool = False) -> Iterator[None]:
        """Hold the store for one `funclens study`; a second one waits or is refused naming the holder.

        Once held, temporary files left by killed writers are removed: no other writer can be running.
        """
        path = paths.lock_file(self.root)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StoreError(f"{path} is a symbolic link; {_LINKS}") from None
            raise StoreError(f"cannot create lock {path}: {e.strerror or e}") from None
        _HELD_LOCKS.add(fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StoreError(f"{path} is not a file; delete it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                raise StoreError(f"{self.root} is in use by {holder}; wait for it or pass --wait") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"funclens pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            self.remove_stale_temporaries()
            yield
        finally:
            _HELD_LOCKS.discard(fd)
            os.close(fd)  # closing releases the flock


def _config_record(spec: RunSpec) -> dict:
    """What config.json holds: the full spec, its canonical JSON (what the id hashes) and its origin."""
    return {"id": spec.run_id, "spec": to_dict(spec), "canonical": canonical_json(spec),
            "funclens_version": __version__, "git_commit": GIT_COMMIT}


def _digest_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _identity_message(run: Path, stored: dict, want: dict) -> str:
    """One line: a finished run under this id was computed from another full spec."""
    a, b = _flat(stored), _flat(want)
    diff = [f"{k} {a.get(k)!r} stored, {b.get(k)!r} requested" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return (f"run {run.name} was computed with another config under the same id ({'; '.join(diff[:5])}); "
            f"use another --out, or delete {run} to recompute it")


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
