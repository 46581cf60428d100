"""The ``funclens`` command.

    funclens study [STUDY.toml] [--preset NAME] [--dataset D] [--arch A] [--epochs N] [--out DIR]
    funclens report OUT
    funclens compare A B [C ...] [--labels FILE]
    funclens attribute RUN --compress 8-bit|4-bit|prune:0.5 --out DIR
    funclens datasets
    funclens verify OUT

Exit 0 on success, 2 on bad input, 1 on an internal failure; errors are one line on stderr
(the traceback too with ``--debug``).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import List, Optional

import typer

from funclens import paths
from funclens.config import (MAX_EPOCHS, PRESET_ARCHS, ConfigError, FunclensError, ModelCfg, StudyCfg,
                             load_study_toml, preset_study)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Is the compressed model still the same function as the original?")
_DEBUG = False


def _err(msg: str) -> None:
    sys.stderr.write(f"funclens: error: {' '.join(str(msg).split())}\n")


def _resolve_studies(toml: Optional[Path], preset: Optional[str], dataset: Optional[str], arch: Optional[str],
                     epochs: Optional[int], train_subset: Optional[int], test_subset: Optional[int],
                     allow_modified_data: bool = False) -> tuple[str, list[StudyCfg]]:
    """The studies one command runs: one per architecture of a multi-architecture preset."""
    if toml is not None:
        if preset:
            raise ConfigError("give a study file or --preset, not both")
        bases = [load_study_toml(toml)]
        name = bases[0].name
    else:
        name = preset or "quick"
        if name not in PRESET_ARCHS:
            raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESET_ARCHS)}")
        archs = (arch,) if arch else PRESET_ARCHS[name]
        bases = [preset_study(name, a) for a in archs]
    studies = []
    for s in bases:
        data = s.data
        if dataset is not None:
            data = dataclasses.replace(data, dataset=dataset)
        if train_subset is not None:
            data = dataclasses.replace(data, train_subset=train_subset)
        if test_subset is not None:
            data = dataclasses.replace(data, test_subset=test_subset)
        if data != s.data:
            data = dataclasses.replace(data, content="")  # a pinned content holds for the study's own data only
        if allow_modified_data:
            data = dataclasses.replace(data, allow_modified=True)
        model = ModelCfg(arch) if arch else s.model
        train = s.train
        if epochs is not None:
            if not 1 <= epochs <= MAX_EPOCHS:
                raise ConfigError(f"--epochs must be in 1..{MAX_EPOCHS}, got {epochs}")
            train = dataclasses.replace(train, epochs=epochs)
        studies.append(s.replace(data=data, model=model, train=train))
    return name, studies


@app.command()
def study(
    study_file: Optional[Path] = typer.Argument(None, help="study config (TOML); default: --preset"),
    preset: Optional[str] = typer.Option(None, help=f"one of {', '.join(PRESET_ARCHS)} (default quick)"),
    dataset: Optional[str] = typer.Option(None, help="override the data set"),
    arch: Optional[str] = typer.Option(None, help="override the architecture"),
    epochs: Optional[int] = typer.Option(None, help="override the number of epochs"),
    train_subset: Optional[int] = typer.Option(None, help="use the first N training images"),
    test_subset: Optional[int] = typer.Option(None, help="use the first N test images"),
    out: Optional[Path] = typer.Option(None, help="output folder (default results/<preset>)"),
    data_dir: Optional[Path] = typer.Option(None, help="canonical data files (default $FUNCLENS_DATA or ~/.cache/funclens)"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    executor: str = typer.Option("local", help="local or ray"),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address (default: start or join a local one)"),
    jobs: int = typer.Option(0, help="runs at once (default: the number of cores; with ray, every ready run), "
                                     "one thread each"),
    channels_last: bool = typer.Option(True, help="channels-last memory layout (pays for conv nets on CPU and CUDA)"),
    offline: bool = typer.Option(False, help="never download data"),
    wait: bool = typer.Option(False, help="wait for another study holding --out instead of exiting"),
    no_report: bool = typer.Option(False, help="train and compress only"),
    allow_modified_data: bool = typer.Option(
        False, help="use data files that match neither the published checksums nor the canonical content "
                    "(runs are named by the content they hold)"),
) -> None:
    """Train, compress and compare the models of a study, then write its report."""
    from funclens.execute import RunContext, resolve_device
    from funclens.study import run_study

    name, studies = _resolve_studies(study_file, preset, dataset, arch, epochs, train_subset, test_subset,
                                     allow_modified_data)
    if executor not in ("local", "ray"):
        raise ConfigError(f"--executor must be local or ray, got {executor!r}")
    if jobs < 0:
        raise ConfigError("--jobs must be >= 0")
    out = out or Path("results") / name
    # A Ray driver may have no GPU while its workers do: there `cuda` is checked by each task instead.
    dev = "cuda" if (executor == "ray" and device == "cuda") else resolve_device(device)
    outs = [out] if len(studies) == 1 else [out / s.model.arch for s in studies]
    for s, o in zip(studies, outs):
        ctx = RunContext(out=str(o), data_dir=str(data_dir) if data_dir else None, offline=offline, device=dev,
                         channels_last=channels_last)
        run_study(s, ctx, jobs=jobs or None, executor=executor, ray_address=ray_address, wait=wait,
                  report=not no_report)
    if len(studies) > 1 and not no_report:
        from funclens.report import build_combined_report

        html = build_combined_report(out, outs)
        typer.echo(f"combined report: {html}")


@app.command()
def report(out: Path = typer.Argument(..., help="a study's output folder")) -> None:
    """Rebuild a study's report from its store alone."""
    from funclens.report import build_report, build_combined_report

    if paths.study_file(out).is_file():
        html = build_report(out)
    else:
        subs = sorted(p.parent for p in Path(out).glob("*/study.json"))
        if not subs:
            raise FunclensError(f"{out} holds no study (no study.json)")
        for s in subs:
            build_report(s)
        html = build_combined_report(out, subs)
    typer.echo(f"report: {html}")


@app.command()
def compare(
    items: List[Path] = typer.Argument(..., help="run folders, or .npy/.npz prediction files [N, C]"),
    labels: Optional[Path] = typer.Option(None, help=".npy file of test labels [N], for accuracy"),
    metric: str = typer.Option("disagreement", help="disagreement, js, kl or tv"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    fail_if: Optional[List[str]] = typer.Option(
        None, "--fail-if", help="exit 3 when a compared model meets this condition, e.g. 'rfd_hi>0.5' or "
                                "'flips>0.01' (rfd, rfd_hi, flips, disagreement, kl; <, <=, >, >=); repeatable"),
) -> None:
    """Distances and RFD between models: the first is the base, the rest are compared with it.

    Independent models (for RFD's denominator) are passed with an ``indep:`` prefix, e.g.
    ``funclens compare base.npy q8.npy indep:seed1.npy indep:seed2.npy``.
    """
    from funclens.compare import compare_items, gate, parse_condition, render

    conditions = [parse_condition(c) for c in fail_if or []]   # before reading any file
    result = compare_items(items, labels=labels, metric=metric)
    tripped = gate(result, conditions)
    typer.echo(render(result, as_json=as_json))
    if tripped:
        sys.stderr.write(f"funclens: fail-if: {tripped}\n")
        raise typer.Exit(3)


@app.command()
def attribute(
    run: Path = typer.Argument(..., help="a finished training run's folder, STUDY/runs/<id>"),
    compress: str = typer.Option(..., help="8-bit, 4-bit, 16-bit, bf16, prune:AMOUNT or prune:global:AMOUNT"),
    out: Path = typer.Option(..., help="folder for attribution.csv and attribution.png"),
    data_dir: Optional[Path] = typer.Option(None, help="canonical data files (default $FUNCLENS_DATA)"),
    offline: bool = typer.Option(False, help="never download data"),
) -> None:
    """Which layer's compression moves the function: each layer compressed alone, and all but one, ranked."""
    from funclens.attribute import attribute_run, parse_compress

    rows, rel = attribute_run(run, parse_compress(compress), out, data_dir=data_dir, offline=offline)
    top = rows[0]
    typer.echo(f"most harmful layer: {top.layer} (alone: KL {top.kl:.4g} nats, disagreement {top.disagreement:.4f}"
               + (f", {top.kl_rel:.3g}x the independent models' KL" if rel and top.kl_rel is not None else "")
               + f"); {paths.attribution_table(out)}")


@app.command()
def datasets(data_dir: Optional[Path] = typer.Option(None, help="canonical data files folder")) -> None:
    """List the known data sets, where their files are, and whether they are present."""
    from rich.console import Console
    from rich.table import Table

    from funclens.data import dataset_status

    t = Table("dataset", "where", "state")
    for row in dataset_status(data_dir):
        t.add_row(*row)
    Console().print(t)


@app.command()
def verify(out: Path = typer.Argument(..., help="a study's output folder")) -> None:
    """Check a study's store: every run against its DONE, the plan's unfinished runs, the report's files."""
    from funclens.store import Store

    stores = [out] if paths.runs_dir(out).is_dir() else sorted(p.parent.parent for p in Path(out).glob("*/runs/"))
    if not stores:
        raise FunclensError(f"{out} holds no runs")
    problems, checked = [], 0
    for s in stores:
        found, n = Store(s).verify()
        problems += found
        checked += n
    for p in problems:
        typer.echo(p, err=True)
    if problems:
        raise FunclensError(f"{len(problems)} problem(s) in {checked} finished runs under {out}")
    typer.echo(f"ok: {checked} finished runs verified under {out}")


INTERRUPTED = "interrupted; finished epochs and runs are kept, run the same command again to resume"


def main(argv: list[str] | None = None) -> int:
    """Entry point: maps errors to exit codes and one-line messages; Ctrl-C exits 130.

    Args:
        argv: the arguments after ``funclens`` (default ``sys.argv[1:]``).

    Example:
        >>> main(["study", "--epochs", "0"])
        2
    """
    global _DEBUG
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        _DEBUG = True
        args.remove("--debug")
        os.environ["FUNCLENS_DEBUG"] = "1"  # worker processes report tracebacks too
    # typer turns KeyboardInterrupt into a silent exit 130, and code between here and the signal may
    # turn it into another error: the handler notes the signal, so the promised line always comes.
    interrupted: list[int] = []

    def on_sigint(signum: int, frame: object) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    in_main = threading.current_thread() is threading.main_thread()  # signals reach the main thread only
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main else None
    try:
        rc = _run(args)
    except KeyboardInterrupt:
        rc = 130
        interrupted.append(signal.SIGINT)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
    if interrupted:
        _err(INTERRUPTED)
        return 130
    return rc


def _run(args: list[str]) -> int:
    cmd = typer.main.get_command(app)
    try:
        rc = cmd.main(args=args, prog_name="funclens", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except (typer.Exit, typer.Abort) as e:
        return getattr(e, "exit_code", 1)
    except Exception as e:
        # typer vendors click: its usage errors (unknown option, bad value) carry format_message()
        if hasattr(e, "format_message") and hasattr(e, "exit_code") and not isinstance(e, FunclensError):
            if type(e).__name__ == "Abort":
                _err("aborted")
                return 130
            _err(e.format_message())
            return 2
        if _DEBUG:
            traceback.print_exc()
        if isinstance(e, FunclensError):
            _err(str(e))
            return 2
        _err(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
