"""Every relative link in README.md, docs/ and benchmarks/README.md resolves, anchors included; every
docs page is linked from somewhere; every example is named in the docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._markdown import DOCS, ROOT, anchors, links, pages


def _relative_links() -> list[tuple[Path, int, str]]:
    return [(page, line, target) for page in pages() for line, target in links(page)
            if "://" not in target and not target.startswith("mailto:")]


@pytest.mark.parametrize("link", _relative_links(), ids=lambda link: f"{link[0].name}:{link[1]}:{link[2]}")
def test_relative_links_resolve(link: tuple[Path, int, str]) -> None:
    page, line, target = link
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    assert resolved.exists(), f"{page.relative_to(ROOT)}:{line}: {target} does not exist"
    if anchor:
        assert resolved.suffix == ".md", f"{page.relative_to(ROOT)}:{line}: an anchor into a non-page {target}"
        assert anchor in anchors(resolved), (
            f"{page.relative_to(ROOT)}:{line}: {resolved.name} has no heading for #{anchor}")


def test_every_docs_page_is_linked_from_the_readme_or_another_page() -> None:
    linked = {(page.parent / t.partition("#")[0]).resolve() for page, _, t in _relative_links()
              if t.partition("#")[0]}
    orphans = [p.name for p in DOCS.glob("*.md") if p.resolve() not in linked]
    assert not orphans, f"docs pages no page links to: {orphans}"


def test_every_example_is_named_in_the_docs() -> None:
    text = "\n".join(p.read_text() for p in pages())
    unnamed = [p.name for p in (ROOT / "examples").iterdir() if p.is_file() and p.name not in text]
    assert not unnamed, f"examples no page names: {unnamed}"
