"""The README stays a front page, and its headline numbers are the benchmarks' own."""

from __future__ import annotations

import re

from ._markdown import ROOT

README = ROOT / "README.md"
BENCHMARKS = ROOT / "benchmarks" / "README.md"
#: The front page's budget (issue: about 250 lines); the reference belongs in docs/.
MAX_LINES = 275


def test_the_readme_is_a_front_page() -> None:
    lines = README.read_text().count("\n")
    assert lines <= MAX_LINES, f"README.md has {lines} lines; move reference material to docs/"


def test_every_ratio_the_readme_quotes_is_in_the_benchmark_tables() -> None:
    quoted = set(re.findall(r"\b\d+\.\d+x\b", README.read_text()))
    assert quoted, "the README quotes no measured ratio"
    measured = BENCHMARKS.read_text()
    missing = sorted(r for r in quoted if r not in measured)
    assert not missing, f"ratios the README quotes that benchmarks/README.md does not hold: {missing}"
