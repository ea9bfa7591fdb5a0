"""docs/events.md and docs/handlers.md against the code: every event and its fields, the report, the
metrics the package defines."""

from __future__ import annotations

import re

import msgspec
import pytest

import node_init
from node_init import EVENTS, ErrorInfo, NodeReport

from ._markdown import DOCS, ROOT, code_spans, section, table_rows

EVENTS_PAGE = DOCS / "events.md"
HANDLERS_PAGE = DOCS / "handlers.md"


def _field_names(text: str) -> set[str]:
    return {code_spans(cells[0])[0] for cells in table_rows(text)
            if len(cells) >= 2 and code_spans(cells[0]) and cells[0] == f"`{code_spans(cells[0])[0]}`"}


def test_the_event_table_is_the_registry() -> None:
    rows = {code_spans(c[0])[0]: c for c in table_rows(section(EVENTS_PAGE.read_text(), "## Every event"))
            if len(c) == 5 and code_spans(c[0])}
    names = {cls.__name__ for cls in EVENTS}
    assert set(rows) == names, f"events.md's table lists {sorted(rows)}, node_init.EVENTS has {sorted(names)}"
    for cls, spec in EVENTS.items():
        _, phase, where, veto, hook = rows[cls.__name__]
        assert phase == f"`{spec.phase.value}`", (cls.__name__, phase, spec.phase)
        assert where == spec.where, (cls.__name__, where, spec.where)
        assert veto.startswith("nothing") != spec.vetoable, (cls.__name__, "vetoable", spec.vetoable, veto)
        assert hook == (f"`{spec.hook}`" if spec.hook else ""), (cls.__name__, hook, spec.hook)


@pytest.mark.parametrize("cls", [*list(EVENTS), NodeReport, ErrorInfo], ids=lambda c: c.__name__)
def test_every_field_is_documented_under_its_own_heading(cls: type[msgspec.Struct]) -> None:
    text = section(EVENTS_PAGE.read_text(), f"### `{cls.__name__}`") or section(
        EVENTS_PAGE.read_text(), f"## `{cls.__name__}`")
    assert text, f"events.md has no heading for {cls.__name__}"
    documented = _field_names(text)
    fields = set(cls.__struct_fields__)
    assert fields == documented, (
        f"{cls.__name__}: fields {sorted(fields)}, documented {sorted(documented)}")


def test_every_ctx_field_is_documented() -> None:
    import attrs

    fields = {f.name for f in attrs.fields(node_init.CallbackCtx)}
    assert fields == _field_names(section(EVENTS_PAGE.read_text(), "## `CallbackCtx`"))


def _defined_metrics() -> set[str]:
    """Metric names passed to a Ray metric's constructor in handlers/ and node_init/cluster/_metrics.py."""
    names: set[str] = set()
    for path in [*(ROOT / "handlers").glob("*.py"), ROOT / "node_init" / "cluster" / "_metrics.py"]:
        code = path.read_text()
        names |= set(re.findall(r"""(?:Histogram|Counter|Gauge|_metric)\(\s*(?:"\w+",\s*)?"(node_init_\w+)\"""", code))
    return names


def test_every_metric_the_package_defines_is_listed() -> None:
    defined = _defined_metrics()
    assert len(defined) >= 10, f"found only {sorted(defined)}: has the way metrics are made changed?"
    listed = {m for cells in table_rows(section(HANDLERS_PAGE.read_text(), "## Metrics"))
              for m in code_spans(cells[0])}
    assert not defined - listed, f"metrics handlers.md does not list: {sorted(defined - listed)}"
    extra = listed - defined - {"metric"}
    assert not extra, f"metrics handlers.md lists that nothing defines: {sorted(extra)}"
