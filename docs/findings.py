"""The paper's five findings under every recipe, precision and pruning scope our full studies ran.

Reads finished full studies (each a `funclens study` output folder with its summary.json) and writes, per data
set, one table: a column per study (its recipe and precision), a row per finding (finding 4 once per pruning
scope), each cell a verdict by the stated rules of docs/teacher_or_start.py (``FINDINGS``) with the RFD
behind it. The section goes between ``<!-- findings:start -->`` and ``<!-- findings:end -->`` of the document
(appended when the markers are missing), with the command, the commit and the runs' commits.

Usage (from the repository root):
    PYTHONPATH=src .venv/bin/python docs/findings.py results/paper-mnist results/paper-mnist-fit \\
        results/paper-cifar10-lenet results/paper-cifar10-lenet-fit --doc docs/REPRODUCTION.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from funclens.errors import FunclensError
from funclens.store import describe_commit, short_commit

BEGIN, END = "<!-- findings:start -->", "<!-- findings:end -->"


# one set of rules for the findings, whether read off the sweeps or off the full studies
sys.path.insert(0, str(Path(__file__).resolve().parent))
import teacher_or_start as TOS  # noqa: E402


def column_label(e) -> str:
    """The recipe, its precision when not fp32, and the pruning scopes its rows hold."""
    scopes = {"globally" if r["setting"].startswith("global ") else "per layer" for r in e.summary["rows"]
              if r["method"] == "prune" and r["setting"].split()[-1].rstrip("%").isdigit()}
    precision = e.setup.get("precision", "fp32")
    return (e.label + ("" if precision == "fp32" else f", {precision}")
            + (f", pruned {' and '.join(sorted(scopes, reverse=True))}" if scopes else ""))


def section(folders: list[Path], command: str) -> str:
    """The document's section, markers included."""
    by_data = TOS.load_entries(folders)
    commits = sorted({short_commit(c) for es in by_data.values() for e in es for c in e.setup.get("git_commits", [])})
    out = [BEGIN, "", f"Made by `{command}` at commit {describe_commit(Path(__file__).resolve().parent)}; the "
           f"studies' runs were trained at commit(s) {', '.join(commits) or 'unknown'}. A cell reads `–` where "
           "the study has none of the rows the finding needs.", ""]
    for dataset, entries in by_data.items():
        table = TOS.findings_md(dataset, entries, labels=[column_label(e) for e in entries])
        folders_line = "Columns, left to right: " + ", ".join(f"`{e.view.out}`" for e in entries) + "."
        out += [table, folders_line, ""]
    return "\n".join(out + [END]) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("studies", nargs="+", type=Path, help="finished `funclens study` output folders")
    p.add_argument("--doc", type=Path, default=Path("docs/REPRODUCTION.md"), help="the document to write into")
    args = p.parse_args(argv)
    try:
        body = section(args.studies, shlex.join(["docs/findings.py", *argv]))
        TOS.write_doc(args.doc, body, begin=BEGIN, end=END)
    except FunclensError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(body, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
