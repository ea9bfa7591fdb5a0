"""docs/failures.md against the code: every bound of ``Bounds`` with its default, every error class."""

from __future__ import annotations

import inspect
import re

import attrs

import node_init
from node_init import Bounds

from ._markdown import DOCS, blocks, code_spans, section, table_rows

PAGE = DOCS / "failures.md"


def _bound_names() -> set[str]:
    names = {f.name for f in attrs.fields(Bounds)}
    for name, member in inspect.getmembers(Bounds):
        if name.startswith("_") or name in ("of", "of_download") or name.isupper():
            continue
        if isinstance(member, property) or inspect.isfunction(member):
            names.add(name)
    return names


def _rows() -> dict[str, list[str]]:
    rows = {}
    for cells in table_rows(section(PAGE.read_text(), "## Bounds")):
        spans = code_spans(cells[0])
        if len(cells) == 4 and spans:
            rows[spans[0].split("(")[0]] = cells
    return rows


def test_every_bound_is_in_the_table_and_no_other() -> None:
    code, documented = _bound_names(), set(_rows())
    assert code == documented, (f"Bounds has {sorted(code - documented)} that failures.md lacks; "
                                f"failures.md lists {sorted(documented - code)} that Bounds lacks")


def test_each_bound_s_default_is_the_code_s() -> None:
    defaults = Bounds()
    for name, (_, _, default, _) in _rows().items():
        value = getattr(defaults, name)
        if callable(value):
            continue
        number = re.match(r"([0-9.]+)", default)
        assert number, f"{name}: no default in {default!r}"
        assert float(number.group(1)) == round(float(value), 1), f"{name}: the page says {default}, the code {value}"


def test_every_error_class_is_in_the_tree() -> None:
    tree = next(b.text for b in blocks(PAGE) if b.lang == "")  # the page's first unlabelled block: the tree
    errors = [n for n in node_init.__all__ if isinstance(getattr(node_init, n), type)
              and issubclass(getattr(node_init, n), node_init.NodeInitError)]
    assert errors, "no error classes exported?"
    missing = [e for e in errors if not re.search(rf"\b{e}\b", tree)]
    assert not missing, f"error classes failures.md's tree lacks: {missing}"
