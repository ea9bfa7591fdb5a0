"""Bad input, tried with hypothesis: every case is a typed error naming what and where, never a crash."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node_init import (
    CallbackCtx,
    CallbackLoadError,
    ConfigError,
    NodeInitConfig,
    load_config,
    load_object,
    parse_config,
)
from node_init.download import UnsafeKeyError, check_key

pytestmark = pytest.mark.reliability
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
# What a JSON file can hold (no infinities: json.dumps would write a token JSON does not have).
finite_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
fields = st.sampled_from(["model_id", "model_source", "callback", "callback_kwargs", "handlers", "download",
                          "placement", "engine", "runtime_env", "bogus", "handler_options"])


@FAST
@given(st.dictionaries(fields, json_values, max_size=6))
def test_any_mapping_is_a_config_or_a_config_error(data: dict[str, Any]) -> None:
    try:
        config = parse_config(data, file="x.yaml")
    except ConfigError as exc:
        assert exc.file == "x.yaml" and str(exc).startswith("file x.yaml")
    else:
        assert isinstance(config, NodeInitConfig) and config.model_id


@FAST
@given(st.binary(max_size=200), st.sampled_from([".yaml", ".json", ".toml"]))
def test_any_file_bytes_load_or_raise_config_error(tmp_path: Path, raw: bytes, suffix: str) -> None:
    path = tmp_path / f"c{suffix}"
    path.write_bytes(raw)
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.file == str(path)


@FAST
@given(st.dictionaries(st.sampled_from(["retries", "timeout_s", "local_node", "concurrency", "s3"]),
                       finite_json_values, min_size=1, max_size=3))
def test_wrong_typed_download_sections_name_the_field(tmp_path: Path, section: dict[str, Any]) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model_id": "m", "download": section}))
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.field is not None and exc.field.startswith("download"), exc


@FAST
@given(st.text(max_size=40))
def test_any_import_path_loads_or_raises_callback_load_error(path: str) -> None:
    try:
        load_object(path, node_id="n")
    except CallbackLoadError as exc:
        assert exc.path == path and exc.node_id == "n"


@FAST
@given(st.sampled_from(["local_node_download_model", "worker_node_download_model", "custom_data",
                        "extra_init_kwargs", "runtime_env", "llm_config", "ray_llm_config"]),
       json_values | st.builds(object) | st.sets(st.integers(), max_size=2))
def test_any_ctx_assignment_is_accepted_or_a_typed_error(field: str, value: Any) -> None:
    ctx = CallbackCtx.for_config(NodeInitConfig(model_id="m"))
    try:
        setattr(ctx, field, value)
    except (ValueError, TypeError, attrs.exceptions.FrozenAttributeError) as exc:
        assert field.split("_")[0] in str(exc) or "mode" in str(exc) or "frozen" in repr(exc).lower() \
            or isinstance(exc, attrs.exceptions.FrozenAttributeError)


@FAST
@given(st.lists(st.sampled_from(["a", "b", "..", ".", "", "/", "\\", "c:", "x.bin"]), min_size=1, max_size=6))
def test_a_key_is_refused_or_stays_inside_the_destination(parts: list[str]) -> None:
    key = "/".join(parts)
    try:
        checked = check_key(key)
    except UnsafeKeyError:
        return
    root = PurePosixPath("/dest")
    resolved = PurePosixPath(posixpath.normpath(str(root / checked)))
    assert resolved.is_relative_to(root) and resolved != root
