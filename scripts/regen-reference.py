"""Rewrite README.md's study-file reference from the config's field help (tests/test_readme.py holds them equal)."""
from pathlib import Path

from funclens.config import reference_markdown

BEGIN, END = "<!-- study-file reference: generated, do not edit by hand -->\n", "<!-- end of study-file reference -->"
readme = Path(__file__).resolve().parent.parent / "README.md"
head, rest = readme.read_text().split(BEGIN)
readme.write_text(head + BEGIN + reference_markdown() + END + rest.split(END, 1)[1])
