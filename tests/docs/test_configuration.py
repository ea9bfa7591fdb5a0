"""docs/configuration.md against the config's msgspec structs: every key, its type and its default."""

from __future__ import annotations

import enum
import types
import typing
from typing import Any

import msgspec
import pytest

import node_init as config_module
from node_init import parse_config

from ._markdown import DOCS, code_spans, table_rows

PAGE = DOCS / "configuration.md"
#: The sections of the config, as the page names their keys ("[]": an item of a list).
SECTIONS: list[tuple[str, type[msgspec.Struct]]] = [
    ("", config_module.NodeInitConfig),
    ("download.", config_module.DownloadConfig),
    ("download.s3.", config_module.S3Config),
    ("download.gcs.", config_module.GCSConfig),
    ("download.azure.", config_module.AzureConfig),
    ("download.hf.", config_module.HFConfig),
    ("placement.", config_module.PlacementConfig),
    ("engine.", config_module.EngineConfig),
    ("extra_files[].", config_module.ExtraFiles),
    ("model_source.", config_module.MirrorConfig),
]


def _alternatives(tp: Any) -> list[str]:
    """The words a type's cell must hold: ``float``, ``null``, each enum or literal value..."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return [str(a) for a in typing.get_args(tp)]
    if origin in (typing.Union, types.UnionType):
        return [w for a in typing.get_args(tp) for w in (["null"] if a is type(None) else _alternatives(a))]
    if origin is list:
        return ["list"]
    if origin is dict or (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
        return ["mapping"]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [m.name for m in tp]
    return [getattr(tp, "__name__", str(tp))]


def _code_keys() -> dict[str, tuple[Any, Any]]:
    """Every key the parser accepts: dotted path -> (type, default or ``msgspec.NODEFAULT``)."""
    keys: dict[str, tuple[Any, Any]] = {}
    for prefix, struct in SECTIONS:
        hints = typing.get_type_hints(struct)
        for field in msgspec.structs.fields(struct):
            if field.default is not msgspec.NODEFAULT:
                default = field.default
            elif field.default_factory is not msgspec.NODEFAULT:
                default = field.default_factory()
            else:
                default = msgspec.NODEFAULT
            keys[prefix + field.name] = (hints[field.name], default)
    return keys


def _doc_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for cells in table_rows(PAGE.read_text()):
        spans = code_spans(cells[0])
        if len(cells) == 4 and spans and cells[0] == f"`{spans[0]}`":
            assert spans[0] not in rows, f"{spans[0]} has two rows in {PAGE.name}"
            rows[spans[0]] = cells
    return rows


def test_every_key_the_parser_accepts_is_documented_and_no_other() -> None:
    code, doc = set(_code_keys()), set(_doc_rows())
    assert not code - doc, f"keys the parser accepts that {PAGE.name} does not list: {sorted(code - doc)}"
    assert not doc - code, f"keys {PAGE.name} lists that the parser refuses: {sorted(doc - code)}"


@pytest.mark.parametrize("key", sorted(_code_keys()))
def test_each_key_s_type_and_default_are_the_code_s(key: str) -> None:
    tp, default = _code_keys()[key]
    cells = _doc_rows().get(key)
    if cells is None:
        pytest.fail(f"{key} is not in {PAGE.name}")
    _, type_cell, default_cell, what = cells
    for word in _alternatives(tp):
        assert word in type_cell, f"{key}: the type cell {type_cell!r} does not say {word!r}"
    assert what, f"{key}: no description"
    if default is msgspec.NODEFAULT:
        assert default_cell == "required", f"{key}: required in the code, the page says {default_cell!r}"
    elif isinstance(default, msgspec.Struct):
        assert default_cell == "(section)", f"{key}: a section, the page says {default_cell!r}"
    else:
        spans = code_spans(default_cell)
        assert spans, f"{key}: no default in {default_cell!r}"
        documented = msgspec.yaml.decode(spans[0])
        assert documented == msgspec.to_builtins(default), (
            f"{key}: the page gives the default {spans[0]!r}, the code has {default!r}")


def test_every_documented_key_is_accepted_by_the_parser() -> None:
    """Each documented key, given its documented default (a section: ``{}``), parses: the parser takes the name."""
    for key, cells in _doc_rows().items():
        if key == "model_id" or key.startswith("model_source."):
            continue
        data: dict[str, Any] = {"model_id": "m"}
        if key.startswith("extra_files[]."):
            data["extra_files"] = [{"bucket_uri": "/tmp/x", "destination_path": "/tmp/y", key.split(".")[-1]: "/tmp/z"}]
            parse_config(data)
            continue
        spans = code_spans(cells[2])
        value: Any = {} if cells[2] == "(section)" else msgspec.yaml.decode(spans[0])
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        parse_config(data)
    parse_config({"model_id": "m", "model_source": {"bucket_uri": "/tmp/x", "extra_files": []}})
