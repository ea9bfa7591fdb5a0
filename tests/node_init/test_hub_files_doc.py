"""docs/hub-files.md says what a Hub snapshot holds: its tables must equal the rule (``select_files``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from node_init.download import LOAD_FORMATS, EngineFileArgs, select_files

DOC = Path(__file__).resolve().parents[2] / "docs" / "hub-files.md"


def rows(header: str) -> list[list[str]]:
    """The cells of the table whose header row starts with ``| header |``."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    out = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        out.append([c.strip() for c in line.strip("|").split(" | ")])
    return out


def names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_the_load_format_table_is_the_rule() -> None:
    table = {names(r[0])[0]: (r[1], r[2]) for r in rows("load_format")}
    assert table == dict(LOAD_FORMATS)


LAYOUTS = rows("layout")


@pytest.mark.parametrize("row", LAYOUTS, ids=[f"{r[0]}-{'-'.join(names(r[2]))}" for r in LAYOUTS])
def test_each_layout_row_is_what_the_rule_fetches(row: list[str]) -> None:
    _, repo_cell, args_cell, fetched_cell = row
    repo = names(repo_cell)
    kwargs: dict[str, object] = {}
    for arg in names(args_cell):
        key, _, value = arg.partition(": ")
        kwargs[key] = {"true": True, "false": False}.get(value, value)
    shards = [p for p in repo if re.fullmatch(r"model-\d+-of-\d+\.safetensors", p)]
    modules = [{"path": "", "type": "sentence_transformers.models.Transformer"},
               {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"path": "2_Dense", "type": "sentence_transformers.models.Dense"},
               {"path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}]
    contents = {"model.safetensors.index.json": json.dumps({"weight_map": {s: s for s in shards}}),
                "modules.json": json.dumps(modules)}
    selection = select_files(repo, EngineFileArgs.of(kwargs), lambda key: contents[key].encode())
    assert list(selection.files) == names(fetched_cell)
