"""One study end to end: lock the store, record the plan, run it with progress bars, write the report."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from funclens import __version__, paths
from funclens.config import FunclensError, StudyCfg, to_dict
from funclens.data import check_model_fits, identified
from funclens.execute import ExecResult, RunContext, preload_dataset, run_local
from funclens.plan import PlannedRun, plan
from funclens.store import Store, atomic_write_text


def study_record(study: StudyCfg, planned: list[PlannedRun]) -> dict:
    return {"funclens_version": __version__, "study": to_dict(study), "runs": [p.to_json() for p in planned]}


def write_study_file(store: Store, study: StudyCfg, planned: list[PlannedRun]) -> None:
    """Record the study beside its runs; a folder holding a different study is refused, not overwritten."""
    f = paths.study_file(store.root)
    rec = study_record(study, planned)
    if f.exists():
        try:
            old = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = None
        # The same study may grow (a method added, runs are shared by id); another study may not
        # take over the folder, since its report would silently replace this one's.
        if old is not None and old.get("study", {}).get("name") != study.name:
            raise FunclensError(f"{store.root} holds another study ({old.get('study', {}).get('name')}); "
                                "choose another --out")
    atomic_write_text(f, json.dumps(rec, indent=2, sort_keys=True))


def run_study(study: StudyCfg, ctx: RunContext, *, jobs: int = 1, executor: str = "local",
              ray_address: str | None = None, wait: bool = False, report: bool = True) -> ExecResult:
    if study.train.precision == "bf16" and ctx.device != "cuda":
        raise FunclensError("precision bf16 (autocast) runs on CUDA only; use --device cuda or precision fp32")
    store = Store(Path(ctx.out))
    store.ensure_writable()
    # Read the data once here: a missing or damaged file is one clear error before any run starts,
    # and the in-process executor reuses the loaded set.
    data = preload_dataset(study.data, ctx)
    # Runs are named by the content of the data they train on: a rerun on other (repaired) files
    # never reuses runs trained on the old ones. A model that cannot take the images fails here once.
    study = study.replace(data=identified(study.data, data))
    check_model_fits(study.model.arch, data)
    planned = plan(study)
    by_id = {p.run_id: p for p in planned}
    console = Console(stderr=True)
    with store.lock(wait=wait):
        write_study_file(store, study, planned)
        specs = [p.spec for p in planned]
        # No refresh thread: the local executor forks its workers, and a thread caught holding the
        # terminal's lock at that moment would leave it locked in every worker. Bars redraw on events.
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, auto_refresh=False) as bar:
            total = bar.add_task(f"{study.name}: runs", total=len(specs))
            tasks: dict[str, int] = {}
            tasks_done: set[str] = set()

            def progress(rid: str, epoch: int, epochs: int, step: int, steps: int) -> None:
                if rid in tasks_done:
                    return  # a worker's last event can arrive after its run was reported done
                p = by_id.get(rid)
                if rid not in tasks:
                    label = f"  {p.role} {p.setting}" if p else f"  {rid}"
                    tasks[rid] = bar.add_task(label, total=epochs * steps)
                bar.update(tasks[rid], completed=(epoch - 1) * steps + step,
                           description=f"  {p.role if p else rid} {p.setting if p else ''} epoch {epoch}/{epochs}",
                           refresh=True)

            def on_done(rid: str) -> None:
                bar.advance(total)
                if not console.is_terminal:  # logs get one line per finished run instead of bars
                    p = by_id.get(rid)
                    console.print(f"{study.name}: finished {p.role if p else ''} {p.setting if p else ''} "
                                  f"{rid} ({len(tasks_done) + 1}/{len(specs)})", highlight=False, soft_wrap=True)
                tasks_done.add(rid)
                if rid in tasks:
                    bar.remove_task(tasks.pop(rid))
                bar.refresh()

            if executor == "ray":
                from funclens.execute_ray import run_ray

                result = run_ray(specs, ctx, address=ray_address, progress=progress, on_done=on_done)
            else:
                result = run_local(specs, ctx, jobs=jobs, progress=progress, on_done=on_done)
        if result.failed:
            debug = os.environ.get("FUNCLENS_DEBUG") == "1"
            for rid, err in result.failed.items():
                console.print(f"run {rid} failed: {err.splitlines()[0]}", highlight=False, soft_wrap=True)
                if debug and "\n" in err:
                    console.print(err, highlight=False, markup=False)
            msg = (f"{len(result.failed)} run(s) failed, {len(result.skipped)} skipped; "
                   f"finished runs are kept in {store.root}: fix the cause and rerun")
            if any("Traceback" in e for e in result.failed.values()):
                raise RuntimeError(msg)  # a bug, not bad input: exit 1
            raise FunclensError(msg)
        if report:
            from funclens.report import build_report

            html = build_report(store.root)
            print(f"report: {html}")
    return result
