"""Reading the docs as data: table rows, fenced blocks (with the marker before each) and links.

A block's marker is an HTML comment on the line before its fence, ``<!-- doc: KIND -->``:
``config`` (a node-init config: our parser must accept it), ``config-part`` (a fragment of one: it is
parsed merged into ``{model_id: x}``), ``serve`` (a Serve config file: Ray's ``LLMConfig`` and our build
check must accept each of its ``llm_configs``), ``run`` (a Python block that needs nothing but the
package: it is executed), ``file NAME`` (a Python block saved as ``NAME`` for the blocks after it),
``skip`` (shown, not checked: say why beside it). Unmarked Python blocks must compile and their
imports resolve; unmarked YAML blocks must parse as YAML.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
_MARK = re.compile(r"<!--\s*doc:\s*(.*?)\s*-->")
_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def pages() -> list[Path]:
    """Every page the docs tests read: the README, docs/, benchmarks/README.md."""
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md")), ROOT / "benchmarks" / "README.md"]


@attrs.frozen
class Block:
    """A fenced code block."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    mark: str  # the marker before it ("" if none)
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> Iterator[Block]:
    """The fenced blocks of a page, in order."""
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, lang = fence.groups()
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = _MARK.search(prev)
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        yield Block(page, start + 1, lang, mark.group(1) if mark else "", "\n".join(body) + "\n")
        i += 1


def table_rows(text: str) -> Iterator[list[str]]:
    """Cells of every markdown table row (header and separator rows included), ``\\|`` kept in a cell."""
    for line in text.splitlines():
        if line.startswith("|") and line.rstrip().endswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
            yield [c.strip() for c in cells]


def code_spans(cell: str) -> list[str]:
    """The inline code spans of a cell, in order."""
    return re.findall(r"`([^`]+)`", cell)


def links(page: Path) -> Iterator[tuple[int, str]]:
    """(line, target) of every markdown link and image of a page, outside fenced blocks."""
    inside = False
    for n, line in enumerate(page.read_text().splitlines(), 1):
        if _FENCE.match(line):
            inside = not inside
            continue
        if inside:
            continue
        for match in _LINK.finditer(line):
            yield n, match.group(1) or match.group(2)


def section(text: str, heading: str) -> str:
    """The text under a heading line (exactly as written, ``## x``) up to the next heading of its level or above."""
    lines = text.splitlines()
    level = len(heading) - len(heading.lstrip("#"))
    try:
        start = lines.index(heading)
    except ValueError:
        return ""
    out = []
    for line in lines[start + 1:]:
        m = re.match(r"^(#+) ", line)
        if m and len(m.group(1)) <= level:
            break
        out.append(line)
    return "\n".join(out)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    inside = False
    for line in page.read_text().splitlines():
        if _FENCE.match(line):
            inside = not inside
        if inside or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip()
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found
