"""README.md is tested, not trusted: its Python runs, its synopsis lists every option of every command, its
study-file reference is the one the config generates, and its parameter counts are what its command prints."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from funclens import paths
from funclens.config import reference_markdown

README = (REPO / "README.md").read_text()
BEGIN, END = "<!-- study-file reference: generated, do not edit by hand -->\n", "<!-- end of study-file reference -->"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", README, re.M | re.S)


def section(title: str) -> str:
    return README.split(f"## {title}\n")[1].split("\n## ")[0]


def test_study_file_reference_is_generated():
    assert README.count(BEGIN) == 1 and README.count(END) == 1
    held = README.split(BEGIN)[1].split(END)[0]
    assert held == reference_markdown(), (
        "README's study-file reference differs from the config's field help: replace the text between its "
        "markers with the output of\n  python -c 'from funclens.config import reference_markdown as r; "
        "print(r(), end=\"\")'")


@pytest.mark.parametrize("code", blocks("python"))
def test_python_examples_run(code):
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr


def test_there_is_a_python_example():
    assert blocks("python")


def synopsis() -> dict[str, str]:
    """command -> the synopsis text of its lines (continuation lines belong to the command above)."""
    text = section("Commands").split("```\n")[1]
    out: dict[str, str] = {}
    command = ""
    for line in text.splitlines():
        if line.startswith("funclens "):
            m = re.match(r"funclens (\w+)", line)
            command = m.group(1) if m else ""   # `funclens --version`, `funclens [COMMAND] --help`
        out[command] = out.get(command, "") + " " + line.split("#")[0]
    return out


def help_options(command: str) -> set[str]:
    r = run_cli(command, "--help")
    assert r.returncode == 0, r.stderr
    return set(re.findall(r"(--[a-z][a-z-]*)", r.stdout.split("Options:")[1])) - {"--help"}


@pytest.mark.parametrize("command", ["study", "report", "compare", "attribute", "datasets", "verify"])
def test_synopsis_lists_every_option(command):
    listed = set(re.findall(r"(--[a-z][a-z-]*)", synopsis()[command]))
    assert help_options(command) == listed


def test_version_and_help_lines_run():
    assert "funclens --version" in section("Commands")
    assert run_cli("--version").returncode == 0


def test_every_output_file_is_listed():
    out = Path("OUT")
    files = [paths.study_file(out), paths.summary_file(out), paths.report_md(out), paths.report_html(out),
             paths.outputs_file(out), paths.accuracy_table(out, "csv"), paths.distance_table(out, "csv"),
             paths.landscape_table(out), paths.landscape_figure(out), paths.accuracy_figure(out),
             paths.distances_figure(out)]
    listing = section("What a study writes")
    for f in files:
        assert str(f) in listing, f
    run = Path("R")
    for f in (paths.config_file(run), paths.init_file(run), paths.model_file(run), paths.metrics_file(run),
              paths.done_file(run), paths.packed_model_file(run), paths.checkpoint_file(run)):
        assert f.name in listing, f


def test_parameter_counts_are_what_the_command_prints():
    models = section("Models")
    (command,) = re.findall(r"^python -c (.*)$", models, re.M)
    r = subprocess.run([sys.executable, "-c", command.strip('"')], capture_output=True, text=True, check=True)
    for line in r.stdout.splitlines():
        arch, *counts = line.split()
        row = next(l for l in models.splitlines() if l.startswith(f"| `{arch}` |"))
        cells = [c.strip().replace(",", "") for c in row.split("|")[2:5]]
        assert cells == counts, (arch, cells, counts)


@pytest.mark.parametrize("name", ["mynets.py", "mycompress.py", "study.toml", "compare_models.py"])
def test_bring_your_own_examples_are_the_files_the_suite_runs(name):
    # tests/test_own.py runs examples/own/ as they are: the README shows exactly those files
    assert (REPO / "examples" / "own" / name).read_text() in section("Bring your own: models, data, checkpoints, a pipeline of your own")
