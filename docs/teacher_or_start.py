"""Is it the teacher or the start? Distillation's closeness to the base across recipes, split into what the
shared initial weights give and what the teacher adds.

Reads finished studies (each `funclens study` output: a sweep's folder of entries, or one study's folder), as
docs/studies/teacher-or-start-cifar10.toml and teacher-or-start-mnist.toml make them, and writes:

- per data set, the figure ``teacher-or-start-<dataset>.png``: RFD with its 95% interval of each kind of model
  (students from the base's initial weights, the no-teacher control, the fresh-start student, the student of
  an independent teacher) against the learning rate, one line per kind, the independent models' band shaded,
  Adam as separate markers; below, the same against the epoch (log scale), one panel per recipe;
- the table RFD [95% CI] per kind x recipe x data set;
- the split per recipe: start = the no-teacher control's closeness (1 - RFD), teacher = what the students add
  to it (RFD of the control minus RFD of the students), with a paired bootstrap interval of that difference;

as a section of the document between ``<!-- teacher-or-start:start -->`` and ``<!-- teacher-or-start:end -->``
(appended when the markers are missing), with the command, the commit and the time it took.

Usage (from the repository root, once both studies have run):
    funclens study docs/studies/teacher-or-start-cifar10.toml --out results/teacher-or-start-cifar10 \\
        --reuse results/paper-cifar10-lenet-fit --reuse results/paper-cifar10-lenet
    funclens study docs/studies/teacher-or-start-mnist.toml --out results/teacher-or-start-mnist \\
        --reuse results/paper-mnist-fit --reuse results/paper-mnist
    PYTHONPATH=src .venv/bin/python docs/teacher_or_start.py results/teacher-or-start-cifar10 \\
        results/teacher-or-start-mnist --doc docs/REPRODUCTION.md
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from funclens import paths
from funclens.errors import FunclensError
from funclens.plan import ROLES
from funclens.rfd import rfd, rfd_difference
from funclens.store import (MAX_RECORD_BYTES, Store, atomic_write_bytes, atomic_write_text, describe_commit,
                            short_commit)
from funclens.summary import RunView, StudyView, load_study

BEGIN, END = "<!-- teacher-or-start:start -->", "<!-- teacher-or-start:end -->"
# The kinds of model compared, by role, in the order of lines and table rows. The students of the figure are
# those at the alpha the controls use (0.5 in the grid); the table lists every alpha.
KINDS = (("student", "students, base's initial weights"), ("start", "no-teacher control"),
         ("fresh", "fresh-start student"), ("control", "independent-teacher control"))
# Bootstrap replicates per epoch point: 25 epochs x 4 kinds x 5 recipes of 10,000 inputs stay under a minute
# of one core; the final epoch's interval in the table uses the studies' own 1,000.
EPOCH_BOOT = 200
FLOOR = 0.01   # the lowest RFD the epoch panels draw on their log axis: a hundredth of the independent distance


@dataclass
class Entry:
    """One finished study of a sweep: its summary.json, its store's view, and its recipe."""

    summary: dict
    view: StudyView
    # split() per student setting: the table and the conditions read the same paired bootstrap
    splits: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def setup(self) -> dict:
        return self.summary["setup"]

    @property
    def adam(self) -> bool:
        return self.setup["optimizer"] == "adam"

    @property
    def label(self) -> str:
        s = self.setup
        return f"Adam lr {s['lr']:g}" if self.adam else f"SGD lr {s['lr']:g}" + (
            "" if s["momentum"] == 0.9 else f" momentum {s['momentum']:g}")

    def rows(self, role: str) -> list[dict]:
        return [r for r in self.summary["rows"] if r.get("role") == role]

    def kind_row(self, role: str) -> dict | None:
        """The row of ``role`` the figure shows: for the students, those at the controls' alpha."""
        rows = self.rows(role)
        if role != "student" or not rows:
            return rows[0] if rows else None
        # the controls' settings read "control alpha=0.5" and "alpha=0.5 (fresh start)"
        words = [w for k in ("control", "fresh") for r in self.rows(k) for w in r["setting"].split()]
        at = next((w for w in words if w.startswith("alpha=")), "alpha=0.5")
        return next((r for r in rows if r["setting"] == at), rows[len(rows) // 2])

    def members(self, row: dict) -> list[RunView]:
        by_run = {r.run: r for r in self.view.runs}
        return [by_run[rid] for rid in row["runs"]]


def find_studies(folders: list[Path]) -> list[Path]:
    """Every study folder under ``folders``: one holding study.json, or a sweep's folder of them.

    Args:
        folders: `funclens study` output folders.

    Example:
        >>> find_studies([Path("/nonexistent")])
        Traceback (most recent call last):
        funclens.errors.FunclensError: /nonexistent holds no study (no study.json)
    """
    out = []
    for f in folders:
        found = [f] if paths.study_file(f).is_file() else sorted(p.parent for p in f.glob("*/study.json"))
        if not found:
            raise FunclensError(f"{f} holds no study (no study.json)")
        out += found
    return out


def _read_summary(folder: Path) -> dict:
    """``folder``'s summary.json, refused in one line when it is not the JSON a report writes (a damaged,
    truncated or hand-edited file must not draw a figure, nor stop in a traceback)."""
    try:
        # a report's summary is kilobytes; a huge file is refused unread rather than loaded whole
        big = paths.summary_file(folder).stat().st_size > MAX_RECORD_BYTES
        s = None if big else json.loads(paths.summary_file(folder).read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        s = None
    if not (isinstance(s, dict) and isinstance(s.get("setup"), dict) and isinstance(s.get("rows"), list)
            and isinstance(s.get("dataset"), str)):
        raise FunclensError(f"{paths.summary_file(folder)} is not a study's summary: run `funclens report "
                            f"{folder}` again")
    return s


def load_entries(folders: list[Path]) -> dict[str, list[Entry]]:
    """The finished studies by data set, SGD by learning rate first, then Adam.

    Args:
        folders: `funclens study` output folders (run `funclens report` first if summary.json is missing).
    """
    by_data: dict[str, list[Entry]] = {}
    for f in find_studies(folders):
        if not paths.summary_file(f).is_file():
            raise FunclensError(f"{f} has no summary.json: run `funclens report {f}` first")
        summary = _read_summary(f)
        # a summary copied from another study, left from an older plan or edited by hand would pair wrong
        # numbers with this store's runs: the store's record of the report it wrote (outputs.json) must vouch
        # for every report file, the summary first
        problems = Store(f).verify_outputs()
        if problems:
            raise FunclensError(f"{paths.summary_file(f)} is not this study's summary, or its report changed "
                                f"since `funclens report` wrote it ({problems[0]}): remove what funclens did not "
                                f"write, then run `funclens report {f}` again")
        e = Entry(summary, load_study(f))
        by_data.setdefault(e.summary["dataset"], []).append(e)
    for entries in by_data.values():
        entries.sort(key=lambda e: (e.adam, e.setup["lr"], e.setup["momentum"]))
    return by_data


def epoch_curve(e: Entry, row: dict, n_boot: int = EPOCH_BOOT) -> tuple[list[int], np.ndarray]:
    """(epochs, [E, 3] RFD, lo, hi) of a row's models after each epoch, against the final base and yardstick.

    Args:
        e: the study.
        row: a summary row of trained models (students over seeds: their mean distance).
        n_boot: bootstrap replicates per epoch.
    """
    store, members = Store(e.view.out), e.members(row)
    epochs = sorted(set.intersection(*(set(m.epochs) for m in members)))
    indeps = [i.final for i in e.view.of("independent")]
    out = []
    for ep in epochs:
        r = rfd(e.view.base.final, [store.load_preds(m.run, ep) for m in members], indeps,
                metric=e.summary["metric"], n_boot=n_boot)
        out.append((r.rfd, *r.ci))
    return epochs, np.array(out, dtype=float)


def _band(e: Entry) -> tuple[float, float]:
    """The independent models' band: the union of their intervals with each independent alone as yardstick."""
    ends = [r.get("rfd_ci_yardstick") or r["rfd_ci"] for r in e.rows("independent")]
    los, his = [v[0] for v in ends if v[0] is not None], [v[1] for v in ends if v[1] is not None]
    return (min(los), max(his)) if los and his else (np.nan, np.nan)


def _errbar(ax, x: float, row: dict, **kw) -> None:
    lo, hi = (np.nan if v is None else v for v in row["rfd_ci"])
    y = np.nan if row["rfd"] is None else row["rfd"]
    ax.errorbar([x], [y], yerr=[[max(y - lo, 0)], [max(hi - y, 0)]], capsize=3, **kw)


ADAM_SHIFT = 1.3   # Adam's markers sit right of its lr, apart from SGD's at the same lr


def _lr_panel(ax, entries: list[Entry]) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    sgd, adam = [e for e in entries if not e.adam], [e for e in entries if e.adam]
    if sgd:
        xs = [e.setup["lr"] for e in sgd]
        bands = np.array([_band(e) for e in sgd])
        ax.fill_between(xs, bands[:, 0], bands[:, 1], color=ROLES["independent"].colour, alpha=0.2,
                        label="independent models (yardstick range)")
    for k, (role, name) in enumerate(KINDS):
        colour = ROLES[role].colour
        pts = [(e.setup["lr"], e.kind_row(role)) for e in sgd if e.kind_row(role)]
        # kinds side by side at each lr (a factor 1.04 apart on the log axis) so the intervals stay readable
        shift = 1.04 ** (k - 1.5)
        if pts:
            ax.plot([x * shift for x, _ in pts], [np.nan if r["rfd"] is None else r["rfd"] for _, r in pts],
                    "-", color=colour, label=f"{name} (SGD)")
            for x, r in pts:
                _errbar(ax, x * shift, r, color=colour, fmt="o")
        for e in adam:
            if e.kind_row(role):
                _errbar(ax, e.setup["lr"] * shift * ADAM_SHIFT, e.kind_row(role), color=colour, fmt="*",
                        markersize=11, label=f"{name} (Adam)" if e is adam[0] else None)
    for e in adam:   # Adam's own yardstick, as wide as its markers
        x, (lo, hi) = e.setup["lr"] * ADAM_SHIFT, _band(e)
        ax.fill_between([x / 1.12, x * 1.12], [lo, lo], [hi, hi], color=ROLES["independent"].colour, alpha=0.2,
                        label=None if sgd or e is not adam[0] else "independent models (yardstick range)")
    ax.set_xscale("log")
    # at least a decade wide, so one recipe alone is not spread over a sliver of an axis
    xs = [e.setup["lr"] * (ADAM_SHIFT if e.adam else 1) for e in entries]
    lo, hi = min(xs) / 1.5, max(xs) * 1.5
    if hi / lo < 10:
        mid = np.sqrt(lo * hi)
        lo, hi = mid / np.sqrt(10), mid * np.sqrt(10)
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("learning rate (Adam: stars, drawn right of its lr)")
    ax.set_ylabel("RFD to the base (final epoch)")
    ax.legend(fontsize=7, ncol=2)


def _epoch_panel(ax, e: Entry) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter

    lo, hi = _band(e)
    ax.axhspan(lo, hi, color=ROLES["independent"].colour, alpha=0.2)
    for role, name in KINDS:
        row = e.kind_row(role)
        if row is None:
            continue
        epochs, c = epoch_curve(e, row)
        # a log axis has no 0 (the base's own function): RFD under 0.01 is drawn at 0.01, not dropped
        c = np.maximum(c, FLOOR)
        ax.plot(epochs, c[:, 0], color=ROLES[role].colour, label=name)
        ax.fill_between(epochs, c[:, 1], c[:, 2], color=ROLES[role].colour, alpha=0.15)
    ax.set_title(e.label, fontsize=9)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # log: the first epochs reach RFD 5-8 and a linear axis squeezed the last epochs, where the verdicts are
    # read, into its bottom eighth; a ratio scale keeps 0.2 and 0.4 as far apart as 2 and 4
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(FixedLocator([0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 3, 5, 10, 20]))


def figure(dataset: str, entries: list[Entry], path: Path) -> Path:
    """Write the data set's figure: RFD against the learning rate, then against the epoch per recipe.

    Args:
        dataset: the data set's name, for the title.
        entries: its studies, one per recipe.
        path: the PNG file.
    """
    from matplotlib.figure import Figure

    n = len(entries)
    fig = Figure(figsize=(max(8.0, 3.0 * n), 8.0), layout="constrained")
    grid = fig.add_gridspec(2, n)
    _lr_panel(fig.add_subplot(grid[0, :]), entries)
    first = None
    for k, e in enumerate(entries):
        first = fig.add_subplot(grid[1, k], sharey=first)
        _epoch_panel(first, e)
    first.legend(fontsize=6)
    fig.axes[1].set_ylabel("RFD to the final base (log scale)")
    fig.suptitle(f"{dataset}: is it the teacher or the start? (95% intervals over test inputs)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _ci(row: dict | None) -> str:
    if row is None:
        return ""
    if row["rfd"] is None:
        return "undefined"
    lo, hi = row["rfd_ci"]
    return f"{row['rfd']:.2f} [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else f"{row['rfd']:.2f}"


def table_md(dataset: str, entries: list[Entry]) -> str:
    """RFD [95% CI] of every kind of model (students at every alpha) x recipe, and the yardstick's range."""
    kinds: list[tuple[str, str, str]] = []   # (role, setting, name)
    for e in entries:
        for role, name in KINDS:
            for r in e.rows(role):
                key = (role, r["setting"], f"{name}, {r['setting']}" if role == "student" else name)
                kinds += [key] if key not in kinds else []
    lines = [f"| {dataset}: kind of model | " + " | ".join(e.label for e in entries) + " |",
             "|---|" + "---|" * len(entries)]
    for role, setting, name in kinds:
        cells = [_ci(next((r for r in e.rows(role) if r["setting"] == setting), None)) for e in entries]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| independent models (yardstick range) | "
                 + " | ".join("[{:.2f}, {:.2f}]".format(*_band(e)) for e in entries) + " |")
    return "\n".join(lines) + "\n"


def split(e: Entry, student: dict) -> dict:
    """Start and teacher for one row of base-init students: the no-teacher control's closeness ``1 - RFD``,
    and what the teacher adds, ``RFD(control) - RFD(students)``, with a paired bootstrap interval.

    Args:
        e: the study (it has a no-teacher control).
        student: a row of students from the base's initial weights.
    """
    if student["setting"] in e.splits:
        return e.splits[student["setting"]]
    start = e.kind_row("start")
    d = rfd_difference(e.view.base.final, [m.final for m in e.members(start)],
                       [m.final for m in e.members(student)], [i.final for i in e.view.of("independent")],
                       metric=e.summary["metric"])
    lo, hi = start["rfd_ci"]
    e.splits[student["setting"]] = {
        "start": 1 - d.rfd_a, "start_ci": (None if hi is None else 1 - hi, None if lo is None else 1 - lo),
        "teacher": d.difference, "teacher_ci": d.ci, "student_rfd": d.rfd_b, "verdict": student["verdict"]}
    return e.splits[student["setting"]]


def _pair(v: float, ci: tuple) -> str:
    return f"{v:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if None not in ci else f"{v:+.2f}"


def split_md(dataset: str, entries: list[Entry]) -> str:
    """Per recipe and student row: start, teacher, the students' RFD and whether the paper's finding 1 holds."""
    lines = [f"| {dataset}: recipe | students | start: 1 - RFD of the no-teacher control | teacher: RFD(control) - "
             "RFD(students) [paired 95% CI] | students' RFD | finding 1 (students independent-like) |",
             "|---|---|---|---|---|---|"]
    for e in entries:
        if e.kind_row("start") is None:
            continue
        for row in e.rows("student"):
            s = split(e, row)
            # the words of the findings table below, so one verdict never reads two ways in one section
            holds = {"independent-like": "holds", "preserves": "no: the students keep the base's function",
                     "partial": "partly: nearer than independent models, not near"}.get(
                         s["verdict"], f"undecided ({s['verdict']})")
            lines.append(f"| {e.label} | {row['setting']} | {_pair(s['start'], s['start_ci'])} | "
                         f"{_pair(s['teacher'], s['teacher_ci'])} | {_ci(row)} | {holds} |")
    return "\n".join(lines) + "\n"


def conditions_md(by_data: dict[str, list[Entry]]) -> str:
    """Where the paper's finding 1 holds and where distillation keeps the teacher's function, read off the
    split of every data set x recipe x alpha: a list that names each case once per statement, so that the
    answer follows the numbers whenever the studies change.

    Args:
        by_data: the finished studies by data set (:func:`load_entries`).
    """
    named = ("independent-like", "partial", "preserves", "teacher", "no-teacher", "away", "start", "no-start")
    cases: dict[str, list[str]] = {k: [] for k in named}
    for dataset, entries in by_data.items():
        for e in entries:
            if e.kind_row("start") is None:
                continue
            s = None
            for row in e.rows("student"):
                s = split(e, row)
                name = f"{dataset} {e.label} {row['setting']} ({_ci(row)})"
                cases.setdefault(s["verdict"], []).append(name)
                lo, hi = s["teacher_ci"]
                if lo is not None and hi is not None:
                    key = "teacher" if lo > 0 else "away" if hi < 0 else "no-teacher"
                    cases[key].append(f"{dataset} {e.label} {row['setting']} "
                                      f"({_pair(s['teacher'], s['teacher_ci'])})")
            if s is not None and None not in s["start_ci"]:
                cases["start" if s["start_ci"][0] > 0 else "no-start"].append(
                    f"{dataset} {e.label} ({_pair(s['start'], s['start_ci'])})")
    def say(key: str) -> str:
        return "; ".join(cases.get(key, [])) or "nowhere"
    # a verdict outside the three (undetermined: the RFD is undefined) is named too, never dropped from the list
    others = [f"- No verdict (`{k}`): {say(k)}." for k in cases if k not in named]
    return "\n".join([
        "Read off the tables above (students' RFD [95% CI]; start and teacher as in the split):", "",
        f"- The paper's finding 1 holds, the students `independent-like`: {say('independent-like')}.",
        f"- Distillation keeps the teacher's function, the students `preserves`: {say('preserves')}.",
        f"- Between the two, nearer than independent models but not near (`partial`): {say('partial')}.",
        f"- The teacher adds closeness beyond the start (paired interval above 0): {say('teacher')}.",
        f"- The teacher adds nothing the interval can tell from 0: {say('no-teacher')}; it takes the students "
        f"farther than the no-teacher control: {say('away')}.",
        f"- The start alone keeps part of the function (the no-teacher control's 1 - RFD above 0): "
        f"{say('start')}; it keeps none: {say('no-start')}.", *others, ""])


# The rules that turn a study's rows into a verdict on each of the paper's five findings (its Introduction),
# so that the findings can be read under every recipe and pruning scope the same way.
FINDINGS = (
    ("1. students as far from the teacher as independent models",
     "holds: every alpha's students `independent-like`; no: some `preserves`; partly: otherwise"),
    ("2. alpha does not change the distance",
     "holds: the alphas' RFD intervals overlap, pairwise; no: two are disjoint (needs 2 alphas or more)"),
    ("3. quantization preserves best",
     "holds: 16- and 8-bit `preserves` and no pruned model or student nearer than 8-bit; partly: they preserve "
     "but a pruned model is nearer; no: they do not preserve"),
    ("4. L1 pruning preserves the function",
     "per scope: the largest amount still `preserves`, and the RFD at 70%; holds: 50% or more preserves; "
     "partly: 10-30%; no: none"),
    ("5. accuracy is a false proxy",
     "holds: some compressed model or student whose accuracy deviation is within 2% (the paper's own bound for "
     "a compression that costs no accuracy, Section 4.1) is not `preserves`"))


# "Only when the Pruning reaches 90% of the network there is reduction in accuracy above 2%": below it the paper
# calls a compression's accuracy impact minute, so a model inside it that changed function is the false proxy.
ACCURACY_BOUND = 2.0


def findings(e: Entry) -> list[str]:
    """The verdict cell of each of :data:`FINDINGS` (finding 4 once per pruning scope the study ran), for one
    study. A study without the rows a finding needs gets "–".

    Args:
        e: a finished study.
    """
    # a row whose RFD is undefined (a yardstick of zero) has no distance to compare: it is left out
    students = [r for r in e.rows("student") if r["rfd"] is not None]
    v = [r["verdict"] for r in students]
    def rng(rs: list[dict]) -> str:
        near, far = min(rs, key=lambda r: r["rfd"]), max(rs, key=lambda r: r["rfd"])
        return f"RFD {_ci(near)}" if near is far else f"RFD {_ci(near)} to {_ci(far)}"
    f1 = "–" if not students else ("holds" if set(v) == {"independent-like"} else
                                   "no" if "preserves" in v else "partly") + f" ({rng(students)})"
    cis = [r["rfd_ci"] for r in students if None not in (r["rfd_ci"] or [None])]
    overlap = all(a[0] <= b[1] and b[0] <= a[1] for a in cis for b in cis)
    f2 = "–" if len(cis) < 2 else ("holds" if overlap else "no") + " (" + ", ".join(
        f"{r['setting'].split('=')[1]}: {_ci(r)}" for r in students) + ")"
    quant = [r for r in e.summary["rows"] if r["method"] == "quantize"]
    others = [r for r in e.summary["rows"] if r["method"] == "prune" or r["role"] == "student"]
    eight = next((r for r in quant if r["setting"] == "8-bit"), None)
    if not quant or eight is None:
        f3 = "–"
    elif any(r["verdict"] != "preserves" for r in quant):
        f3 = f"no (8-bit {_ci(eight)})"
    else:
        nearer = [r["setting"] for r in others if r["rfd"] is not None and r["rfd"] < eight["rfd"]]
        f3 = ("partly: nearer " + ", ".join(nearer) if nearer else "holds") + f" (8-bit {_ci(eight)})"
    f4 = []
    for prefix in ("", "global "):   # each layer pruned alone; one global threshold
        rows = {r["setting"][len(prefix):]: r for r in e.summary["rows"] if r["method"] == "prune"
                and r["setting"].startswith(prefix) and r["setting"][len(prefix):].rstrip("%").isdigit()}
        top = max((int(k.rstrip("%")) for k, r in rows.items() if r["verdict"] == "preserves"), default=0)
        at70 = f"; 70%: {_ci(rows['70%'])}" if "70%" in rows else ""
        f4.append("–" if not rows else f"{'holds' if top >= 50 else 'partly'}: preserves to {top}%{at70}" if top
                  else f"no: not at {min(rows, key=lambda k: int(k.rstrip('%')))}{at70}")
    close = [r for r in e.summary["rows"] if r["role"] in ("student", "quantize", "prune")
             and r["rfd"] is not None and abs(r["accuracy_deviation_pct"]) <= ACCURACY_BOUND
             and r["verdict"] not in ("preserves", "undetermined")]
    far = max(close, key=lambda r: r["rfd"], default=None)
    f5 = "–" if not others else (f"holds ({far['setting']}: {far['accuracy_deviation_pct']:+.2f}% accuracy, "
                                 f"RFD {_ci(far)})" if far else "no")
    return [f1, f2, f3, *f4, f5]


def findings_md(dataset: str, entries: list[Entry], labels: list[str] | None = None) -> str:
    """The paper's five findings x recipe: each cell a verdict by the rules of :data:`FINDINGS` and the RFD
    behind it; ``labels`` name the columns (default: each entry's recipe)."""
    labels = labels or [e.label for e in entries]
    names = [FINDINGS[0][0], FINDINGS[1][0], FINDINGS[2][0], FINDINGS[3][0] + ", each layer pruned alone",
             FINDINGS[3][0] + ", one global threshold", FINDINGS[4][0]]
    cells = [findings(e) for e in entries]
    lines = [f"| {dataset}: finding | " + " | ".join(labels) + " |", "|---|" + "---|" * len(entries)]
    lines += [f"| {n} | " + " | ".join(c[i] for c in cells) + " |" for i, n in enumerate(names)]
    lines += ["", "Rules: " + "; ".join(f"finding {n.split('.')[0]}: {rule}" for n, rule in FINDINGS) + "."]
    return "\n".join(lines) + "\n"


def training_hours(entries: list[Entry]) -> float:
    """Hours of training over every run of the studies (the epochs' own seconds, summed; one core each)."""
    total = 0.0
    for e in entries:
        store = Store(e.view.out)
        total += sum(h.get("train_seconds", 0.0) for r in e.view.runs
                     for h in store.load_metrics(r.run).get("history", []))
    return total / 3600


def section(by_data: dict[str, list[Entry]], figures: dict[str, Path], doc: Path, command: str,
            seconds: float, commit: str) -> str:
    """The document's section, markers included; ``commit``: the code's, as :func:`describe_commit` reads it."""
    everything = [e for es in by_data.values() for e in es]
    commits = sorted({short_commit(c) for e in everything for c in e.setup.get("git_commits", [])})
    out = [BEGIN, "", "## Is it the teacher or the start? Distillation across learning rates", "",
           f"Made by `{command}` at commit {commit} in {seconds:.0f} s; the studies' runs were trained at "
           f"commit(s) {', '.join(commits) or 'unknown'}, {training_hours(everything):.2f} hours of training "
           "in all. RFD 0: the base's own function; 1: as far as an independently trained model. Start: how "
           "close to the base the no-teacher control (the base's initial weights, another data order, no "
           "teacher) ends, as 1 - RFD; teacher: how much closer the students end than that control.", ""]
    for dataset, entries in by_data.items():
        rel = os.path.relpath(figures[dataset], doc.resolve().parent)
        out += [f"![{dataset}: RFD against learning rate and epoch]({rel})", "", table_md(dataset, entries),
                split_md(dataset, entries), findings_md(dataset, entries)]
    out += ["### When finding 1 holds, and when distillation keeps the function", "", conditions_md(by_data)]
    return "\n".join(out + [END]) + "\n"


def write_doc(doc: Path, body: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the section between the markers of ``doc``, or append it where they are missing.

    Args:
        doc: the Markdown document (made when missing).
        body: the section, markers included (:func:`section`).
        begin, end: the markers (default: this section's).

    Example:
        >>> import tempfile
        >>> doc = Path(tempfile.mkdtemp()) / "R.md"
        >>> for n in (1, 2):
        ...     write_doc(doc, f"{BEGIN}\\nrun {n}\\n{END}\\n")
        >>> doc.read_text().count(BEGIN), "run 2" in doc.read_text(), "run 1" in doc.read_text()
        (1, True, False)
    """
    text = doc.read_text() if doc.is_file() else ""
    if begin in text and end in text and text.index(begin) < text.index(end):
        text = text[:text.index(begin)] + body.rstrip("\n") + text[text.index(end) + len(end):]
    else:
        text = text + ("\n" if text and not text.endswith("\n") else "") + body
    atomic_write_text(doc, text)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("studies", nargs="+", type=Path, help="finished `funclens study` output folders")
    p.add_argument("--doc", type=Path, default=Path("docs/REPRODUCTION.md"), help="the document to write into")
    p.add_argument("--figures", type=Path, default=Path("docs/figures"), help="folder of the figures")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    t0 = time.perf_counter()
    # read before the figures are written: new figures in the work tree are this script's output, not a change
    # to the code that made them
    commit = describe_commit(Path(__file__).resolve().parent)
    try:
        args = parse(argv)
        by_data = load_entries(args.studies)
        figs = {d: figure(d, es, args.figures / f"teacher-or-start-{d}.png") for d, es in by_data.items()}
        body = section(by_data, figs, args.doc, shlex.join(["docs/teacher_or_start.py", *argv]),
                       time.perf_counter() - t0, commit)
        write_doc(args.doc, body)
    except FunclensError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(body, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
