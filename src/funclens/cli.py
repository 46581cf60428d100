"""The ``funclens`` command.

    funclens study [STUDY.toml] [--preset NAME] [--dataset D] [--arch A] [--epochs N] [--out DIR] ...
    funclens report OUT
    funclens compare A B [C ...] [--labels FILE] [--metric M] [--json] [--fail-if COND]     (indep:X marks the yardstick)
    funclens attribute RUN --compress 8-bit|4-bit|prune:0.5 --out DIR
    funclens datasets [--data-dir DIR] [--offline]
    funclens verify OUT
    funclens --version

``funclens`` alone and ``--help`` after any command print the help (exit 0).

Exit 0 on success, 2 on bad input, 1 on an internal failure, 3 when a `compare --fail-if` condition holds; errors are one line on stderr
(the traceback too with ``--debug``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import List, Optional

import typer

from funclens import paths
from funclens.config import (DATASETS, MAX_EPOCHS, PRESET_ARCHS, ConfigError, FunclensError, ModelCfg, StudyCfg,
                             StudySet, canonical_json, load_studies_toml,
                             preset_study)

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Is the compressed model still the same function as the original?")
_DEBUG = False


def _err(msg: str) -> None:
    sys.stderr.write(f"funclens: error: {' '.join(str(msg).split())}\n")


def _resolve_studies(toml: Optional[Path], preset: Optional[str], dataset: Optional[str], arch: Optional[str],
                     epochs: Optional[int], train_subset: Optional[int], test_subset: Optional[int],
                     allow_modified_data: bool = False) -> tuple[str, list[StudyCfg]]:
    """The studies one command runs (one per architecture of a multi-architecture preset, one per entry of a
    study file's ``[[sweep]]``), and the name of their default output folder: the preset's or study file's name,
    or, when a flag changed what the preset or file asks for, ``<name>-reduced-<8 hex of the changed studies'
    canonical config>``, so that a reduced run never mixes with the full one."""
    name, studies, _labels = _resolve(toml, preset, dataset, arch, epochs, train_subset, test_subset,
                                      allow_modified_data)
    return name, studies


def _resolve(toml: Optional[Path], preset: Optional[str], dataset: Optional[str], arch: Optional[str],
             epochs: Optional[int], train_subset: Optional[int], test_subset: Optional[int],
             allow_modified_data: bool = False) -> tuple[str, list[StudyCfg], tuple[str, ...]]:
    """:func:`_resolve_studies`, with a sweep's entry labels (empty for a preset or a file of one study)."""
    labels: tuple[str, ...] = ()
    if toml is not None:
        if preset:
            raise ConfigError("give a study file or --preset, not both")
        found = load_studies_toml(toml)
        bases, name, labels = list(found.studies), found.name, found.labels
    else:
        name = preset or "quick"
        if name not in PRESET_ARCHS:
            raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESET_ARCHS)}")
        archs = (arch,) if arch else PRESET_ARCHS[name]
        bases = [preset_study(name, a) for a in archs]
    # a preset asks for its own architectures only: any other one is a change
    changed = toml is None and arch is not None and arch not in PRESET_ARCHS[name]
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
        if allow_modified_data:   # which files may be read, not what is computed: no reduction
            data = dataclasses.replace(data, allow_modified=True)
        model = ModelCfg(arch) if arch else s.model
        train = s.train
        if epochs is not None:
            if not 1 <= epochs <= MAX_EPOCHS:
                raise ConfigError(f"--epochs must be in 1..{MAX_EPOCHS}, got {epochs}")
            train = dataclasses.replace(train, epochs=epochs)
        studies.append(s.replace(data=data, model=model, train=train))
    changed = changed or any(s.replace(data=dataclasses.replace(s.data, allow_modified=b.data.allow_modified)) != b
                             for s, b in zip(studies, bases))
    if changed:
        digest = hashlib.sha256("\n".join(canonical_json(s) for s in studies).encode()).hexdigest()[:8]
        name = f"{name}-reduced-{digest}"
    return name, studies, labels


# The architectures funclens registers itself, for the help text: listing the registry there would import torch
# on every start of the command (seconds). tests/test_cli.py holds this to funclens.models.list_models().
BUILTIN_ARCHS = ("lenet", "mobilenet_v1", "resnet50")


def _version(value: bool) -> None:
    if value:
        from funclens import __version__

        typer.echo(f"funclens {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="print the version and exit")) -> None:
    """Is the compressed model still the same function as the original?"""


@app.command(short_help="Train, compress and compare the models of a study, then write its report.")
def study(
    study_file: Optional[Path] = typer.Argument(None, metavar="STUDY.toml", show_default=False,
                                                help="study config (TOML); default: --preset"),
    preset: Optional[str] = typer.Option(None, metavar="NAME",
                                         help=f"one of {', '.join(PRESET_ARCHS)} (default: quick)"),
    dataset: Optional[str] = typer.Option(None, metavar="D",
                                          help=f"one of {', '.join(DATASETS)} (default: the preset's)"),
    arch: Optional[str] = typer.Option(None, metavar="A", help=f"a registered model: built in {', '.join(BUILTIN_ARCHS)}"
                                       " (default: the preset's)"),
    epochs: Optional[int] = typer.Option(None, metavar="N", help="training epochs (default: the preset's)"),
    train_subset: Optional[int] = typer.Option(None, metavar="N", help="use the first N training images (default: all)"),
    test_subset: Optional[int] = typer.Option(None, metavar="N", help="use the first N test images (default: all)"),
    out: Optional[Path] = typer.Option(None, metavar="DIR", help="output folder (default: results/<preset>; "
                                       "results/<preset>-reduced-<8 hex> when a flag changes the preset's study)"),
    data_dir: Optional[Path] = typer.Option(None, metavar="DIR",
                                            help="canonical data files (default: $FUNCLENS_DATA or ~/.cache/funclens)"),
    device: str = typer.Option("auto", metavar="auto|cpu|cuda", help="where to train and infer"),
    executor: str = typer.Option("local", metavar="local|ray", help="local processes, or a Ray cluster"),
    ray_address: Optional[str] = typer.Option(None, metavar="ADDR",
                                              help="Ray cluster address (default: start or join a local one)"),
    jobs: Optional[int] = typer.Option(None, metavar="N", help="runs at once, one thread each (default: the number "
                                       "of cores; with ray, every ready run)"),
    channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last",
                                       help="channels-last memory layout (pays for conv nets on CPU and CUDA)"),
    offline: bool = typer.Option(False, "--offline", help="never download data"),
    wait: bool = typer.Option(False, "--wait", help="wait for another study holding --out instead of exiting"),
    report: bool = typer.Option(True, "--report/--no-report", help="write the report (--no-report: train and "
                                "compress only)"),
    allow_modified_data: bool = typer.Option(
        False, "--allow-modified-data",
        help="use data files that match neither the published checksums nor the canonical content "
             "(runs are named by the content they hold)"),
    reuse: Optional[List[Path]] = typer.Option(
        None, "--reuse", metavar="DIR",
        help="copy in the finished runs of this study that another study's output folder holds, each checked "
             "as `funclens verify` checks it, instead of computing them again; repeatable"),
) -> None:
    """Train, compress and compare the models of a study, then write its report."""
    from funclens.execute import RunContext, resolve_device
    from funclens.study import check_code, run_study

    name, studies, labels = _resolve(study_file, preset, dataset, arch, epochs, train_subset, test_subset,
                                     allow_modified_data)
    if executor not in ("local", "ray"):
        raise ConfigError(f"--executor must be local or ray, got {executor!r}")
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    out = out or Path("results") / name
    # A Ray driver may have no GPU while its workers do: there `cuda` is checked by each task instead.
    dev = "cuda" if (executor == "ray" and device == "cuda") else resolve_device(device)
    # a sweep's entries go one folder each, by label, even when there is one; a preset's architectures by name
    outs = (StudySet(name, tuple(studies), labels).folders(out) if labels else [out] if len(studies) == 1
            else [out / s.model.arch for s in studies])
    for s in studies[1:]:
        check_code(s)  # a later study that cannot run is refused before the first one trains
    for s, o in zip(studies, outs):
        ctx = RunContext(out=str(o), data_dir=str(data_dir) if data_dir else None, offline=offline, device=dev,
                         channels_last=channels_last)
        run_study(s, ctx, jobs=jobs, executor=executor, ray_address=ray_address, wait=wait, report=report,
                  reuse=tuple(reuse or ()))
    if len(outs) > 1 and report:
        from funclens.report import build_combined_report

        html = build_combined_report(out, outs)
        typer.echo(f"combined report: {html}")


@app.command(short_help="Rebuild a study's report from its store alone.")
def report(out: Path = typer.Argument(..., metavar="OUT", show_default=False,
                                      help="a study's output folder")) -> None:
    """Rebuild a study's report from its store alone (no model is built: any architecture's study works)."""
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


@app.command(short_help="Distances and RFD of models against a base: run folders or prediction files.")
def compare(
    items: List[Path] = typer.Argument(..., metavar="A B [C ...]", show_default=False,
                                       help="the base, then the models compared with it: run folders, or .npy/.npz "
                                            "prediction files [N, C]; indep:X marks an independent model"),
    labels: Optional[Path] = typer.Option(None, metavar="Y.npy", help=".npy file of test labels [N], for accuracy"),
    metric: str = typer.Option("disagreement", metavar="disagreement|js|kl|tv", help="the distance behind RFD"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    fail_if: Optional[List[str]] = typer.Option(
        None, "--fail-if", metavar="COND", help="exit 3 when a compared model meets this condition, e.g. 'rfd_hi>0.5' or "
                                "'flips>0.01' (rfd, rfd_hi, flips, disagreement, kl; <, <=, >, >=); repeatable"),
) -> None:
    """Distances and RFD between models: the first is the base, the rest are compared with it.

    Independent models (for RFD's denominator) are passed with an indep: prefix, e.g.

        funclens compare base.npy q8.npy indep:seed1.npy indep:seed2.npy
    """
    from funclens.compare import compare_items, gate, parse_condition, render

    conditions = [parse_condition(c) for c in fail_if or []]   # before reading any file
    result = compare_items(items, labels=labels, metric=metric)
    tripped = gate(result, conditions)
    typer.echo(render(result, as_json=as_json))
    if tripped:
        sys.stderr.write(f"funclens: fail-if: {tripped}\n")
        raise typer.Exit(3)


@app.command(short_help="Which layer's compression moves the function, layer by layer.")
def attribute(
    run: Path = typer.Argument(..., help="a finished training run's folder, STUDY/runs/<id>"),
    compress: str = typer.Option(..., help="8-bit, 4-bit, 16-bit, bf16, prune:AMOUNT or prune:global:AMOUNT"),
    out: Path = typer.Option(..., help="folder for attribution.csv and attribution.png"),
    data_dir: Optional[Path] = typer.Option(None, help="canonical data files (default $FUNCLENS_DATA)"),
    offline: bool = typer.Option(False, "--offline", help="never download data"),
) -> None:
    """Which layer's compression moves the function: each layer compressed alone, and all but one, ranked."""
    from funclens.attribute import attribute_run, parse_compress

    rows, rel = attribute_run(run, parse_compress(compress), out, data_dir=data_dir, offline=offline)
    top = rows[0]
    typer.echo(f"most harmful layer: {top.layer} (alone: KL {top.kl:.4g} nats, disagreement {top.disagreement:.4f}"
               + (f", {top.kl_rel:.3g}x the independent models' KL" if rel and top.kl_rel is not None else "")
               + f"); {paths.attribution_table(out)}")


@app.command(short_help="List the known data sets, where their files are, and whether they are present.")
def datasets(data_dir: Optional[Path] = typer.Option(None, metavar="DIR", help="canonical data files (default: "
                                                     "$FUNCLENS_DATA or ~/.cache/funclens)"),
             offline: bool = typer.Option(False, "--offline",
                                          help="as a study with --offline would see them: nothing is downloaded")
             ) -> None:
    """List the known data sets, where their files are, and whether they are present.

    On a terminal, a table; otherwise (piped, redirected) one tab-separated line per data set, nothing cut.
    """
    from funclens.data import dataset_status

    rows = dataset_status(data_dir, offline=offline)
    if not sys.stdout.isatty():
        for row in rows:
            typer.echo("\t".join(row))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("dataset", "where", "state")
    for row in rows:
        t.add_row(*row)
    Console().print(t)


@app.command(short_help="Check every finished run of a study against the checksums it recorded.")
def verify(out: Path = typer.Argument(..., metavar="OUT", show_default=False,
                                      help="a study's output folder")) -> None:
    """Check a study's store: every run against its DONE, the plan's unfinished runs, the report's files."""
    from funclens.store import Store

    # a study's folder, or one holding several (a sweep's entries, a preset's architectures): OUT/*/runs
    stores = [out] if paths.runs_dir(out).is_dir() else sorted(p.parent for p in Path(out).glob("*/runs/"))
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


def _command() -> typer.core.TyperGroup:
    """The click command of ``app``, with arguments shown by their metavar alone (``OUT``, ``[STUDY.toml]``,
    ``A B [C ...]``): typer would add the Python type (``<list[Path]>``) and braces, which tell a user nothing."""
    cmd = typer.main.get_command(app)
    for sub in cmd.commands.values():
        for p in sub.params:
            if isinstance(p, typer.core.TyperArgument):
                p.display_type = lambda ctx: ""
                name = p.metavar or (p.name or "").upper()   # an argument without a metavar shows its name
                shown = name if p.required else f"[{name}]"
                p._usage_display_name = lambda shown=shown: shown
    return cmd


def _run(args: list[str]) -> int:
    cmd = _command()
    if not args:   # bare `funclens`: the help, as asked for, not an error
        with cmd.make_context("funclens", ["--help"], resilient_parsing=True) as ctx:
            typer.echo(cmd.get_help(ctx))
        return 0
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
            # an unknown option alone: click's guesses ("Possible options: ...") list any option sharing a
            # few letters, which misleads more than it helps
            _err(f"No such option: {e.option_name}" if type(e).__name__ == "NoSuchOption" else e.format_message())
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
