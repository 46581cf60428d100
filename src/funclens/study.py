"""One study end to end: lock the store, record the plan, run it with progress bars, write the report.

Example:
    >>> import tempfile
    >>> from funclens.config import DistillGrid, StudyCfg, TrainCfg
    >>> study = StudyCfg(name="tiny", train=TrainCfg(epochs=1), seeds=(0, 1), distill=DistillGrid(alphas=()),
    ...                  quantize=("8-bit",), prune=())
    >>> result = run_study(study, RunContext(out=tempfile.mkdtemp()), jobs=1, report=False)
    >>> len(result.done), result.failed, result.skipped
    (3, {}, [])
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from funclens import __version__, paths
from funclens.config import FunclensError, StudyCfg, to_dict
from funclens.data import check_model_fits, identified
from funclens.execute import RunContext, preload_dataset
from funclens.plan import PlannedRun, plan
from funclens.schedule import Backend, PlanResult, run_plan
from funclens.store import Store


def study_record(study: StudyCfg, planned: list[PlannedRun]) -> dict:
    return {"funclens_version": __version__, "study": to_dict(study), "runs": [p.to_json() for p in planned]}


def check_code(study: StudyCfg) -> StudyCfg:
    """``study`` with its custom compressors pinned to their source files, once the code it names is known to
    be there: its architecture's factory, its compressors, the libraries they need. Reads no data, so a
    command running several studies (a sweep) refuses a later one before the first trains.

    Args:
        study: the study as configured.

    Example:
        >>> from funclens.config import CustomCfg, preset_study
        >>> check_code(preset_study("quick").replace(custom=(CustomCfg("mine", "nosuchmod:squeeze"),)))
        Traceback (most recent call last):
        funclens.errors.ConfigError: custom compressor 'mine' (nosuchmod:squeeze): cannot import nosuchmod ...
    """
    from funclens.compress import require_libraries
    from funclens.compress.custom import pin_custom
    from funclens.models import check_arch

    check_arch(study.model.arch)
    require_libraries(study)
    return study.replace(custom=pin_custom(study.custom))


def pin_data(study: StudyCfg, ctx: RunContext) -> StudyCfg:
    """``study`` as `funclens study` plans it: its data, any given checkpoints and the source files of its
    custom compressors pinned to their content.

    Runs are named by the content of the data they train on, so a rerun on other (repaired) files never
    reuses runs trained on the old ones; likewise a compressor whose file changed names other runs. A custom
    compressor that cannot be imported, or a library the study's compressors need and that is missing, is
    refused first, before the data are read. The data are read once
    here: a missing or damaged file, or a model that cannot take the images, is one clear error before any
    run starts (and the in-process backend reuses the loaded set).

    Args:
        study: the study as configured.
        ctx: where the data files are, and whether downloading is allowed.

    Example:
        >>> from funclens.config import preset_study
        >>> pinned = pin_data(preset_study("quick"), RunContext(out="."))
        >>> len(pinned.data.content) == 64
        True
    """
    from funclens.checkpoints import pin_checkpoints

    study = check_code(study)
    data = preload_dataset(study.data, ctx)
    check_model_fits(study.model.arch, data)
    study = study.replace(data=identified(study.data, data))
    # A given base or yardstick is named by its files' bytes: a changed file is another run.
    return study.replace(base=pin_checkpoints(study.base, study.model.arch, data))


def run_study(study: StudyCfg, ctx: RunContext, *, jobs: int | None = None, executor: str = "local",
              ray_address: str | None = None, wait: bool = False, report: bool = True,
              reuse: tuple[Path, ...] = ()) -> PlanResult:
    """Compute every run of ``study`` not yet DONE into ``ctx.out``, then write its report.

    Args:
        study: the study.
        ctx: the store's folder, the data, the device.
        jobs: runs at once; None: the number of cores (``local``), or every ready run (``ray``,
            which places them on the cluster's CPUs itself).
        executor: ``local`` (in this process with ``jobs`` 1, else a process pool) or ``ray``.
        ray_address: the Ray cluster (see :class:`funclens.backends.ray.RayBackend`).
        wait: wait for another study holding the store rather than refuse.
        report: write the report once every run is DONE.
        reuse: other studies' output folders (or folders of them: a sweep's, a preset's architectures) whose
            finished runs of this study are copied in, checked, instead of computed again.

    Raises:
        FunclensError: a run failed on its input (exit 2); RuntimeError: a run failed on a fault of
            funclens (exit 1). Finished runs are kept either way.
    """
    # Read the data before any folder is made: a missing or damaged file is one clear error that leaves
    # nothing behind.
    study = pin_data(study, ctx)
    sources = _reuse_sources(reuse, Path(ctx.out))
    store = Store(Path(ctx.out))
    store.ensure_writable()
    console = Console(stderr=True)
    if study.base.checkpoint and study.distill.init == "base-init":
        # as plan() does it; recorded in the study too, so that its report says how students started
        study = study.replace(distill=dataclasses.replace(study.distill, init="fresh"))
        if study.distill.alphas:
            console.print("note: students start fresh: a given base has no initial weights to start them from",
                          highlight=False, soft_wrap=True)
    planned = plan(study)
    specs = [p.spec for p in planned]
    jobs = jobs or (len(specs) if executor == "ray" else os.cpu_count() or 1)
    with store.lock(wait=wait):
        store.write_study(study_record(study, planned))
        if reuse:
            _adopt(store, specs, sources, reuse, console)
        # No refresh thread: the pool backend forks its workers, and a thread caught holding the
        # terminal's lock at that moment would leave it locked in every worker. Bars redraw on events.
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, auto_refresh=False) as bar:
            bars = _Bars(bar, console, study.name, planned)
            result = run_plan(specs, _backend(executor, ctx, jobs, ray_address), store=store, jobs=jobs,
                              on_done=bars.on_done, progress=bars.progress)
        _raise_for_failures(result, store, console)
        if report:
            from funclens.report import build_report

            html = build_report(store.root)
            print(f"report: {html}")
    return result


def _reuse_sources(reuse: tuple[Path, ...], out: Path) -> list[Store]:
    """The stores the ``reuse`` folders hold (a folder of studies gives each), ``out`` itself left out; a
    folder with none is refused before anything is written."""
    sources = []
    for folder in reuse:
        found = [folder] if paths.runs_dir(folder).is_dir() else sorted(
            p.parent for p in folder.glob("*/runs") if p.is_dir())
        if not found:
            raise FunclensError(f"--reuse {folder}: holds no study's runs")
        sources += [Store(f) for f in found if f.resolve() != out.resolve()]
    return sources


def _adopt(store: Store, specs: list, sources: list[Store], reuse: tuple[Path, ...], console: Console) -> None:
    """Copy in the finished runs of ``specs`` that the ``sources`` hold and that pass their checks."""
    adopted, refused = 0, []
    for spec in specs:
        for src in sources:
            if store.is_done(spec.run_id) or not src.is_done(spec.run_id):
                continue
            why = store.adopt_run(src, spec.run_id)
            if why is None:
                adopted += 1
            else:
                refused.append(f"{src.root}: {why}")
    console.print(f"reused {adopted} finished run(s) of {', '.join(map(str, reuse))}", highlight=False,
                  soft_wrap=True)
    for line in refused:
        console.print(f"not reused (computed here): {line}", highlight=False, soft_wrap=True)


def _backend(executor: str, ctx: RunContext, jobs: int, ray_address: str | None) -> Backend:
    if executor == "ray":
        from funclens.backends.ray import RayBackend

        return RayBackend(ctx, address=ray_address)
    if jobs <= 1:
        from funclens.backends.inprocess import InProcessBackend

        return InProcessBackend(ctx)
    from funclens.backends.pool import PoolBackend

    return PoolBackend(ctx)


class _Bars:
    """A bar for the whole study and one per running run; in a log, one line per finished run."""

    def __init__(self, bar: Progress, console: Console, name: str, planned: list[PlannedRun]) -> None:
        self.bar, self.console, self.name = bar, console, name
        self.by_id = {p.run_id: p for p in planned}
        self.total = bar.add_task(f"{name}: runs", total=len(planned))
        self.tasks: dict[str, int] = {}
        self.finished = 0

    def label(self, rid: str) -> str:
        p = self.by_id.get(rid)
        return f"{p.role} {p.setting}" if p else rid

    def progress(self, rid: str, epoch: int, epochs: int, step: int, steps: int) -> None:
        if rid not in self.tasks:
            self.tasks[rid] = self.bar.add_task(f"  {self.label(rid)}", total=epochs * steps)
        self.bar.update(self.tasks[rid], completed=(epoch - 1) * steps + step,
                        description=f"  {self.label(rid)} epoch {epoch}/{epochs}", refresh=True)

    def on_done(self, rid: str) -> None:
        self.finished += 1
        self.bar.advance(self.total)
        if not self.console.is_terminal:  # logs get one line per finished run instead of bars
            self.console.print(f"{self.name}: finished {self.label(rid)} {rid} ({self.finished}/{len(self.by_id)})",
                               highlight=False, soft_wrap=True)
        if rid in self.tasks:
            self.bar.remove_task(self.tasks.pop(rid))
        self.bar.refresh()


def _raise_for_failures(result: PlanResult, store: Store, console: Console) -> None:
    """One line per failed run (its traceback too with --debug), then the error that sets the exit code."""
    if not result.failed:
        return
    debug = os.environ.get("FUNCLENS_DEBUG") == "1"
    for rid, outcome in result.failed.items():
        console.print(f"run {rid} failed: {outcome.message}", highlight=False, soft_wrap=True, markup=False)
        if debug and outcome.detail:
            console.print(outcome.detail, highlight=False, markup=False)
    msg = (f"{len(result.failed)} run(s) failed, {len(result.skipped)} skipped; "
           f"finished runs are kept in {store.root}: fix the cause and rerun")
    if any(o.fault == "internal" for o in result.failed.values()):
        raise RuntimeError(msg)  # a fault of funclens, not bad input: exit 1
    raise FunclensError(msg)
