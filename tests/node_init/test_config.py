"""NodeInitConfig and load_config: formats, defaults, and typed errors naming file and field."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from node_init import ConfigError, DownloadMode, NodeInitConfig, load_config, parse_config

EXAMPLE = """\
model_id: tiny-llama
model_source: s3://models/tiny-llama        # or /a/local/dir or file:///a/local/dir
callback: my_pkg.hooks:MyCallback           # optional, class-style
callback_kwargs: {threshold: 3}
handlers: [my_pkg.hooks:handlers]           # HandlerSets
download: {cache_dir: ~/.cache/node-init, timeout_s: 600, retries: 3,
           local_node: MODEL_AND_TOKENIZER, worker_nodes: MODEL_AND_TOKENIZER,
           s3: {endpoint_url: "http://127.0.0.1:9000", region: us-east-1}}
placement: {bundles: [{CPU: 1}], strategy: PACK, ready_timeout_s: 60}
engine: {kind: vllm, overlap: auto, kwargs: {dtype: float32, max_model_len: 256, enforce_eager: true}}
"""


def test_design_example_loads_as_is(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(EXAMPLE)
    c = load_config(path)
    assert c.model_source == "s3://models/tiny-llama"
    assert c.callback_kwargs == {"threshold": 3}
    assert c.download.s3.endpoint_url == "http://127.0.0.1:9000"
    assert c.download.worker_nodes is DownloadMode.MODEL_AND_TOKENIZER
    assert c.placement is not None and c.placement.bundles == [{"CPU": 1.0}]
    assert c.engine.kwargs["max_model_len"] == 256 and c.engine.overlap == "auto"


def test_json_and_toml_give_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(
        '{"model_id": "m", "model_source": "/x", "download": {"retries": 5, "worker_nodes": "TOKENIZER_ONLY"}}'
    )
    (tmp_path / "c.toml").write_text(
        'model_id = "m"\nmodel_source = "/x"\n[download]\nretries = 5\nworker_nodes = "TOKENIZER_ONLY"\n'
    )
    a, b = load_config(tmp_path / "c.json"), load_config(tmp_path / "c.toml")
    assert a == b and a.download.retries == 5


def test_streaming_load_format_defaults_modes_to_none() -> None:
    c = parse_config({"model_id": "m", "engine": {"kwargs": {"load_format": "runai_streamer"}}})
    assert c.default_mode(local=True) is DownloadMode.NONE
    assert c.default_mode(local=False) is DownloadMode.NONE
    assert parse_config({"model_id": "m"}).default_mode(local=False) is DownloadMode.MODEL_AND_TOKENIZER


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("model_id: m\nbogus: 1\n", None, "bogus"),
        ("model_id: m\ndownload: {retriez: 3}\n", "download", "retriez"),
        ("model_id: m\ndownload: {retries: many}\n", "download.retries", "int"),
        ("model_id: m\ndownload: {retries: -1}\n", "download.retries", ">= 0"),
        ("model_id: m\ndownload: {local_node: SOMETIMES}\n", "download.local_node", "SOMETIMES"),
        ("model_id: m\nplacement: {strategy: WHEREVER}\n", "placement.strategy", "WHEREVER"),
        ("model_id: m\nplacement: {bundles: []}\n", "placement.bundles", "bundle"),
        ("model_id: m\nengine: {kind: tgi}\n", "engine.kind", "tgi"),
        ("model_source: /x\n", None, "model_id"),
        ("model_id: m\ndownload: {timeout_s: 0}\n", "download.timeout_s", "> 0"),
    ],
)
def test_bad_values_name_file_and_field(tmp_path: Path, text: str, field: str | None, words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.file == str(path) and str(path) in str(err)
    if field is not None:
        assert err.field == field, str(err)
    assert words in str(err)
    back = pickle.loads(pickle.dumps(err))
    assert (back.file, back.field, str(back)) == (err.file, err.field, str(err))


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("c.yaml", "model_id: [unclosed\n", "malformed YAML"),
        ("c.json", "{nope", "malformed JSON"),
        ("c.toml", "model_id = \n", "malformed TOML"),
        ("c.yaml", "- just\n- a list\n", "mapping"),
        ("c.ini", "model_id=m", "unknown suffix"),
    ],
)
def test_malformed_files(tmp_path: Path, name: str, text: str, words: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=words) as info:
        load_config(path)
    assert info.value.file == str(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_engine_kwargs_must_be_json_encodable() -> None:
    with pytest.raises(ConfigError, match="engine.kwargs"):
        NodeInitConfig(model_id="m", engine=parse_config({"model_id": "m"}).engine.__class__(kwargs={"x": object()}))
