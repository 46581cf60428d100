"""Compare models from their predictions: reading ``.npy``/``.npz`` files and run folders, distances to the base,
RFD against independent models, and the table or JSON that ``funclens compare`` prints.

The numbers are those of a study's report: RFD comes from :func:`funclens.rfd.rfd` with the same bootstrap,
so ``funclens compare`` on a study's run folders prints the ``rfd`` and ``rfd_ci`` of its ``summary.json``.
Rows are dicts in the ``summary.json`` schema, with ``model`` (the item as given) added.

Example:
    >>> import numpy as np
    >>> eye = np.eye(4)
    >>> res = compare_predictions(eye, {"q8": eye[[0, 1, 2, 0]]}, independents={"seed1": eye[[1, 0, 3, 2]]})
    >>> [(r["model"], r["disagreement"], r["rfd"]) for r in res["rows"]]
    [('q8', 0.25, 0.25), ('seed1', 1.0, 1.0)]
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from funclens import metrics, paths
from funclens.errors import FunclensError, StoreError
from funclens.plan import ROLES
from funclens.summary import YARDSTICK, diagnose, json_safe
from funclens.rfd import N_BOOT, SEED, rfd
from funclens.store import Store

INDEP_PREFIX = "indep:"
# Largest array a prediction or label file may declare: 4 GiB holds float32 predictions of a million inputs
# over 1,000 classes; anything larger is refused before memory is allocated for it.
MAX_ARRAY_BYTES = 1 << 32
# distance columns every comparison shows; the RFD metric is added when it is not among them
DISTANCES = ("disagreement", "js", "tv")


class CompareError(FunclensError):
    """Items that ``compare`` cannot read or compare: a bad file, an unfinished run, a misplaced ``indep:``."""


@dataclass
class Item:
    """One model as read for a comparison."""

    name: str                 # the item as given, without its "indep:" prefix
    preds: np.ndarray         # [N, C] probabilities
    independent: bool = False
    meta: dict = field(default_factory=dict)   # role, setting, runs of a run folder
    labels: np.ndarray | None = None           # the test labels a run folder stored


# ---------------------------------------------------------------- reading

def _read_npy(f: IO[bytes], name: str, available: int) -> np.ndarray:
    """An array from an open ``.npy`` stream, its header checked against ``available`` bytes before reading."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise CompareError(f"{name}: .npy format version {version} is not supported")
        if dtype.hasobject:
            raise CompareError(f"{name}: holds Python objects, not numbers")
        declared = math.prod(int(s) for s in shape) * dtype.itemsize   # Python ints: no overflow
        body = available - f.tell()
        if declared > body:
            raise CompareError(f"{name}: its header declares {shape} {dtype} ({declared} bytes) but the file "
                               f"holds {max(body, 0)} bytes of data (truncated or damaged)")
        if declared > MAX_ARRAY_BYTES:
            raise CompareError(f"{name}: {declared} bytes of data, more than the {MAX_ARRAY_BYTES} allowed")
        data = f.read(declared)
        return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    except (ValueError, OSError, EOFError) as e:
        raise CompareError(f"{name}: not a readable .npy array ({e})") from None


def _read_npz(path: Path, key: str | None, name: str) -> np.ndarray:
    try:
        with zipfile.ZipFile(path) as z:
            members = {i.filename[:-4]: i for i in z.infolist() if i.filename.endswith(".npy")}
            if key is None:
                if len(members) != 1:
                    raise CompareError(f"{name}: .npz holds {len(members)} arrays ({', '.join(members)}); "
                                       f"name one as {name}:KEY")
                key = next(iter(members))
            if key not in members:
                raise CompareError(f"{name}: no array {key!r} in the .npz (it holds {', '.join(members)})")
            with z.open(members[key]) as f:
                return _read_npy(f, f"{name}:{key}", members[key].file_size)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CompareError(f"{name}: not a readable .npz archive ({e})") from None


def _split_key(item: str) -> tuple[Path, str | None]:
    """``FILE.npz:key`` -> (FILE.npz, key); anything else -> (path, None)."""
    head, sep, key = item.rpartition(":")
    if sep and head.endswith(".npz") and not Path(item).exists():
        return Path(head), key
    return Path(item), None


def read_array(item: str | Path) -> np.ndarray:
    """An array from a ``.npy`` file, a ``.npz`` with one array, or ``FILE.npz:key``, refused before any
    allocation when its header declares more data than the file holds or than ``MAX_ARRAY_BYTES``.

    Args:
        item: the file, as the user wrote it.

    Raises:
        CompareError: one line naming the file and the problem.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a.npz"
        >>> np.savez(p, probs=np.eye(2), labels=np.arange(2))
        >>> read_array(f"{p}:labels")
        array([0, 1])
    """
    name = str(item)
    path, key = _split_key(name)
    if not path.is_file():
        raise CompareError(f"{name}: no such file or run folder")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"PK"):
        return _read_npz(path, key, str(path))
    if key is not None:
        raise CompareError(f"{name}: only a .npz archive has named arrays")
    with open(path, "rb") as f:
        return _read_npy(f, name, path.stat().st_size)


def _plan_entry(root: Path, run_id: str) -> dict:
    """The role and setting the study's plan gives a run (empty when the folder has no readable plan)."""
    try:
        runs = json.loads(paths.study_file(root).read_text())["runs"]
        return next((r for r in runs if r.get("run") == run_id), {})
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def read_run(folder: Path) -> Item:
    """A run folder's final predictions, refused unless the run is DONE and its files match their checksums.

    Args:
        folder: ``OUT/runs/<id>``.

    Raises:
        StoreError: the run is not finished, or a file is missing or changed.
        CompareError: the folder is not a run folder.
    """
    folder = Path(folder)
    where = Path(os.path.abspath(folder))   # `train_x` given from inside runs/ names runs/train_x too
    if where.parent.name != "runs":
        raise CompareError(f"{folder}: not a run folder (expected .../runs/<id>)")
    store, rid = Store(where.parent.parent), where.name
    if not store.is_done(rid):
        raise StoreError(f"run {rid} is not finished (no DONE); run `funclens study` first")
    problems = store.verify_run(rid)
    if problems:
        raise StoreError(problems[0] + "; rerun `funclens study` to recompute it")
    entry = _plan_entry(store.root, rid)
    meta = {"runs": [rid]}
    if entry.get("role") in ROLES:
        meta.update(role=entry["role"], method=ROLES[entry["role"]].method, setting=str(entry.get("setting", "")))
    return Item(str(folder), store.load_preds(rid), meta=meta, labels=store.load_labels(rid))


def read_item(item: str | Path) -> Item:
    """One command-line item: ``indep:``-prefixed or not, a run folder or a prediction file.

    Files are checked with :func:`funclens.metrics.check_predictions` (logits become probabilities); a run
    folder's predictions, which funclens wrote and its checksums vouch for, are used exactly as stored, as the
    report does.

    Args:
        item: as the user wrote it.
    """
    s = str(item)
    independent = s.startswith(INDEP_PREFIX)
    s = s[len(INDEP_PREFIX):] if independent else s
    if Path(s).is_dir():
        it = read_run(Path(s))
    else:
        it = Item(s, metrics.check_predictions(read_array(s), s))
    it.independent = independent
    return it


# ---------------------------------------------------------------- comparing

def _row(base: Item, it: Item, indeps: list[Item], labels: np.ndarray | None, metric: str, n_boot: int,
         seed: int) -> dict:
    row = {"model": it.name, "method": "model", "role": "independent" if it.independent else None,
           "setting": it.name, "runs": [], **it.meta}
    if it.independent:
        row["method"] = row["role"] = "independent"
    row.update({m: metrics.distance(base.preds, it.preds, m) for m in dict.fromkeys((*DISTANCES, metric))})
    if labels is not None:
        row["accuracy"] = metrics.accuracy(it.preds, labels)
        row["accuracy_deviation_pct"] = metrics.accuracy_deviation(row["accuracy"],
                                                                   metrics.accuracy(base.preds, labels))
    if indeps:
        row.update(rfd(base.preds, it.preds, [i.preds for i in indeps], metric=metric, n_boot=n_boot,
                       seed=seed).to_json())
        if it.independent:   # as in a study's summary: the yardstick gets no verdict of its own
            row["verdict"] = YARDSTICK
    row.update(diagnose(base.preds, [it.preds], labels, [i.preds for i in indeps if i is not it]))
    return row


def compare(items: Sequence[Item], *, labels: np.ndarray | None = None, metric: str = "disagreement",
            n_boot: int = N_BOOT, seed: int = SEED) -> dict:
    """Distances of every item to the first (the base); with independent items, RFD and verdicts too.

    Args:
        items: the base first, then the models; those marked ``independent`` form RFD's yardstick and get rows
            of their own, measured against all of them, as in a study's report.
        labels: ``[N]`` integer test labels, for accuracy.
        metric: RFD's distance, one of :data:`funclens.metrics.METRICS`.
        n_boot, seed: the bootstrap; the defaults give a study report's numbers.

    Returns:
        ``{"base", "metric", "independents", "rows"}`` (and ``base_accuracy`` with labels).
    """
    metrics.check_metric(metric)
    if len(items) < 2:
        raise CompareError("compare needs at least two models: the base and one to compare")
    base, rest = items[0], list(items[1:])
    if base.independent:
        raise CompareError(f"the first model is the base and cannot be an independent one ({INDEP_PREFIX}"
                           f"{base.name}); put the base first without {INDEP_PREFIX}")
    metrics.check_same_shape({it.name: it.preds for it in items})
    n, c = base.preds.shape
    y = None if labels is None else metrics.check_labels(labels, n, c, "labels")
    indeps = [it for it in rest if it.independent]
    result = {"base": base.name, "metric": metric, "independents": [i.name for i in indeps],
              "rows": [_row(base, it, indeps, y, metric, n_boot, seed) for it in rest]}
    if y is not None:
        result["base_accuracy"] = metrics.accuracy(base.preds, y)
        result["base_ece"] = metrics.ece(base.preds, y)
    return result


def compare_items(items: Sequence[str | Path], *, labels: str | Path | None = None,
                  metric: str = "disagreement") -> dict:
    """``funclens compare``: read every item (``indep:`` marks the yardstick) and :func:`compare` them.

    Args:
        items: run folders or prediction files, the base first.
        labels: a ``.npy`` file (or ``FILE.npz:key``) of integer test labels; by default those a base run
            folder stored, if any.
        metric: RFD's distance.
    """
    metrics.check_metric(metric)   # before reading anything: a typo should not wait for large files
    if items and str(items[0]).startswith(INDEP_PREFIX):
        raise CompareError(f"the first model is the base and cannot be an independent one ({items[0]}); "
                           f"put the base first without {INDEP_PREFIX}")
    read = [read_item(it) for it in items]
    y = read[0].labels if read else None   # a base run folder's own labels, unless --labels names others
    if labels is not None:
        y = read_array(labels)
        if read:
            metrics.check_labels(y, *read[0].preds.shape, str(labels))
    return compare(read, labels=y, metric=metric)


def compare_predictions(base: np.ndarray, models: Mapping[str, np.ndarray], *,
                        independents: Mapping[str, np.ndarray] | None = None, labels: np.ndarray | None = None,
                        metric: str = "disagreement") -> dict:
    """Compare arrays in memory, each checked as the command checks files (logits become probabilities).

    Args:
        base: ``[N, C]`` probabilities or logits of the base model.
        models: name -> ``[N, C]`` of each model to compare.
        independents: name -> ``[N, C]`` of independently trained models, RFD's yardstick.
        labels: ``[N]`` integer labels, for accuracy.
        metric: RFD's distance.

    Returns:
        as :func:`compare`.
    """
    def item(name: str, arr: np.ndarray, indep: bool = False) -> Item:
        return Item(name, metrics.check_predictions(arr, name), independent=indep)

    items = [item("base", base)] + [item(k, v) for k, v in models.items()]
    items += [item(k, v, True) for k, v in (independents or {}).items()]
    return compare(items, labels=labels, metric=metric)


# ---------------------------------------------------------------- rendering

def _cell(row: dict, col: str) -> str:
    v = row.get(col)
    if col == "rfd_ci":
        return "" if v is None else "[" + ", ".join("undefined" if x is None else f"{x:.4f}" for x in v) + "]"
    if col == "model":
        meta = [row[k] for k in ("role", "setting") if row.get(k) and row[k] != row["model"]]
        return " ".join(meta) + f" ({row['model']})" if meta else row["model"]
    if v is None:
        return "undefined" if col == "rfd" and "verdict" in row else ""
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def render_text(result: dict) -> str:
    """The comparison as an aligned text table, numbers with 4 decimals.

    Args:
        result: from :func:`compare`.
    """
    rows = result["rows"]
    cols = ["model", *dict.fromkeys((*DISTANCES, result["metric"]))]
    cols += ["accuracy", "accuracy_deviation_pct"] if "base_accuracy" in result else []
    cols += ["rfd", "rfd_ci", "p_closer", "verdict"] if result["independents"] else []
    table = [cols] + [[_cell(r, c) for c in cols] for r in rows]
    widths = [max(len(line[k]) for line in table) for k in range(len(cols))]
    lines = [f"base: {result['base']}" + (f" (accuracy {result['base_accuracy']:.4f})"
                                           if "base_accuracy" in result else "")]
    # columns of numbers right-aligned, head included, so decimal points line up; text left-aligned
    numeric = [k > 0 and all(_is_number(line[k]) or not line[k] for line in table[1:]) for k in range(len(cols))]
    for line in table:
        lines.append("  ".join(c.rjust(w) if num else c.ljust(w)
                               for c, w, num in zip(line, widths, numeric)).rstrip())
    reasons = dict.fromkeys(r["verdict_reason"] for r in rows if r.get("verdict_reason"))
    lines += [f"RFD undetermined: {why}" for why in reasons]
    if not result["independents"]:
        lines.append(f"(pass independent models as {INDEP_PREFIX}FILE for RFD and verdicts)")
    return "\n".join(lines)


def render(result: dict, *, as_json: bool = False) -> str:
    """The comparison as the command prints it: strict JSON (non-finite numbers as null) or a text table.

    Args:
        result: from :func:`compare`.
        as_json: JSON instead of text.
    """
    if as_json:
        return json.dumps(json_safe(result), indent=2, allow_nan=False)
    return render_text(result)


# ---------------------------------------------------------------- the --fail-if gate

class GateError(CompareError):
    """A ``--fail-if`` condition that is malformed, or that the comparison cannot evaluate (no ``indep:``
    models for ``rfd``, no labels for ``flips``)."""


# what each gate field reads from a row, and what it needs
GATE_FIELDS = {
    "rfd": ("RFD", "indep"), "rfd_hi": ("upper end of RFD's 95% interval", "indep"),
    "flips": ("fraction of test inputs whose correctness changed, both ways", "labels"),
    "disagreement": ("fraction of test inputs whose top-1 class differs", ""),
    "kl": ("mean KL(base || model), nats", ""),
}
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
_CONDITION = re.compile(r"\s*([a-z_]+)\s*(<=|>=|<|>)\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*")


@dataclass(frozen=True)
class Condition:
    """One ``--fail-if`` condition: the gate fails when ``field op limit`` is true for a compared model."""

    field: str
    op: str
    limit: float

    def __str__(self) -> str:
        return f"{self.field}{self.op}{self.limit:g}"

    def trips(self, value: float) -> bool:
        return bool(_OPS[self.op](value, self.limit))


def parse_condition(text: str) -> Condition:
    """A ``--fail-if`` condition, ``FIELD OP NUMBER`` with FIELD one of :data:`GATE_FIELDS` and OP one of
    ``<``, ``<=``, ``>``, ``>=``.

    Args:
        text: as the user wrote it, e.g. ``"rfd_hi>0.5"``.

    Raises:
        GateError: one line naming the condition and what is wrong with it.

    Example:
        >>> parse_condition("flips > 1e-2")
        Condition(field='flips', op='>', limit=0.01)
    """
    m = _CONDITION.fullmatch(text)
    if not m:
        raise GateError(f"--fail-if {text!r}: expected FIELD OP NUMBER, e.g. 'rfd_hi>0.5', with OP one of "
                        f"<, <=, >, >= and FIELD one of {', '.join(GATE_FIELDS)}")
    if m.group(1) not in GATE_FIELDS:
        raise GateError(f"--fail-if {text!r}: unknown field {m.group(1)!r}; known: {', '.join(GATE_FIELDS)}")
    return Condition(m.group(1), m.group(2), float(m.group(3)))


def _gate_value(row: dict, fld: str) -> float | None:
    if fld == "rfd_hi":
        return (row.get("rfd_ci") or [None, None])[1]
    if fld == "flips":
        a, b = row.get("flips_correct_to_wrong"), row.get("flips_wrong_to_correct")
        return None if a is None or b is None else a + b
    if fld == "kl":
        return (row.get("kl_base_model") or {}).get("mean")
    return row.get(fld)


def gate(result: dict, conditions: Sequence[Condition]) -> str | None:
    """Check every compared model (independent ones aside) against the ``--fail-if`` conditions.

    A model whose value is undefined (RFD with a yardstick of 0) trips the condition: a release gate that
    cannot show the model is fine does not pass it.

    Args:
        result: from :func:`compare`.
        conditions: from :func:`parse_condition`.

    Returns:
        None when no condition trips; else one line naming the first model and condition that tripped, with the
        value (and how many other trips there were).

    Raises:
        GateError: a condition on ``rfd`` or ``rfd_hi`` without independent models, or on ``flips`` without labels.

    Example:
        >>> eye = np.eye(4)
        >>> res = compare_predictions(eye, {"q8": eye[[0, 1, 2, 0]]}, labels=np.arange(4))
        >>> gate(res, [parse_condition("flips>0.3")]), gate(res, [parse_condition("disagreement>=0.25")])
        (None, 'q8: disagreement 0.25 >= 0.25 (--fail-if disagreement>=0.25)')
    """
    for c in conditions:
        need = GATE_FIELDS[c.field][1]
        if need == "indep" and not result["independents"]:
            raise GateError(f"--fail-if {c}: {c.field} needs independent models (pass them as {INDEP_PREFIX}FILE)")
        if need == "labels" and "base_accuracy" not in result:
            raise GateError(f"--fail-if {c}: flips need the test labels (--labels FILE, or run folders that "
                            "stored them)")
    trips = []
    for row in result["rows"]:
        if row.get("role") == "independent":
            continue
        for c in conditions:
            v = _gate_value(row, c.field)
            if v is None or not math.isfinite(v):
                trips.append(f"{row['model']}: {c.field} is undefined ({row.get('verdict_reason') or 'no value'})"
                             f" (--fail-if {c})")
            elif c.trips(v):
                trips.append(f"{row['model']}: {c.field} {v:.4g} {c.op} {c.limit:g} (--fail-if {c})")
    if not trips:
        return None
    return trips[0] + (f"; {len(trips) - 1} more condition(s) tripped" if len(trips) > 1 else "")
