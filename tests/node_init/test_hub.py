"""The Hugging Face Hub as a source, against ``node_init.testing.HubServer`` (proved honest here with the
official ``huggingface_hub`` client): ids, revisions pinned to a commit, vLLM's file choice, every byte
checked against the Hub's SHA-256 or git blob SHA-1, a gated repo, a 429, offline."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from node_init import Bounds, ConfigError, DownloadConfig, DownloadError, HFConfig, parse_config
from node_init.download import Downloader, hub_or_path, list_source, pin_hub_source
from node_init.testing import HubServer, write_model_files

MB = 1 << 20
REPO = "org/tiny"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = HubServer().start()
    local = tmp_path_factory.mktemp("hub") / "m"
    write_model_files(local, {"model-00001-of-00002.safetensors": 2 * MB + 5, "model-00002-of-00002.safetensors": MB})
    (local / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (local / "pytorch_model.bin").write_bytes(os.urandom(1000))  # another format: vLLM takes safetensors
    (local / "original").mkdir()
    (local / "original" / "consolidated.pth").write_bytes(os.urandom(1000))  # skipped, as vLLM skips it
    (local / "stale-shard.safetensors").write_bytes(os.urandom(300))  # not in the index: not loaded
    commit = server.push_dir(REPO, local)
    try:
        yield {"server": server, "local": local, "commit": commit}
    finally:
        server.stop()


def cfg(hub: dict[str, Any], **over: Any) -> DownloadConfig:
    return DownloadConfig(**{"hf": HFConfig(endpoint_url=hub["server"].endpoint), "part_size_mb": 1,
                             "timeout_s": 60, "stall_timeout_s": 5, "retries": 2, **over})


WANTED = {"config.json", "generation_config.json", "model-00001-of-00002.safetensors",
          "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"}


def test_the_hub_server_is_honest_the_official_client_gets_the_same_bytes(hub: dict[str, Any], tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    import huggingface_hub

    path = Path(huggingface_hub.snapshot_download(REPO, cache_dir=tmp_path / "hf", endpoint=hub["server"].endpoint))
    assert path.name == hub["commit"]
    for p in hub["local"].rglob("*"):
        if p.is_file():
            assert (path / p.relative_to(hub["local"])).read_bytes() == p.read_bytes()


def test_a_hub_model_downloads_pinned_and_checked_by_the_hubs_digests(hub: dict[str, Any], tmp_path: Path) -> None:
    config = cfg(hub)
    source, files = list_source("hf://org/tiny", config)
    assert source.uri == f"hf://org/tiny@{hub['commit']}"
    assert {f.key for f in files} == WANTED  # the index's shards, no .bin, no original/, no stale shard
    result = Downloader(source, tmp_path / "m", config).run(files)
    for key in WANTED:
        assert (Path(result.path) / key).read_bytes() == (hub["local"] / key).read_bytes()
    assert result.verified["model-00001-of-00002.safetensors"] == "sha256"
    assert result.verified["config.json"] == "git-sha1"


@pytest.mark.parametrize(("count", "healed"), [(1, True), (100, False)], ids=["once", "always"])
def test_a_flipped_byte_under_true_headers_is_caught(hub: dict[str, Any], tmp_path: Path, count: int,
                                                     healed: bool) -> None:
    config = cfg(hub)
    source, files = list_source("hf://org/tiny", config)
    for name in ("model-00002-of-00002.safetensors", "tokenizer.json"):
        hub["server"].flip(name, count)
        try:
            if healed:
                result = Downloader(source, tmp_path / name, config).run(files)
                assert (Path(result.path) / name).read_bytes() == (hub["local"] / name).read_bytes()
                assert result.rereads == (name,)
            else:
                with pytest.raises(DownloadError) as info:
                    Downloader(source, tmp_path / name, config).run(files)
                assert info.value.checksum_mismatch and info.value.file == name
                assert ("sha256" if name.endswith("safetensors") else "git-sha1") in str(info.value)
        finally:
            hub["server"].flip(name, -hub["server"]._flips.get(name, 0))


def test_a_branch_that_moves_mid_download_does_not_tear_the_snapshot(hub: dict[str, Any], tmp_path: Path) -> None:
    server = hub["server"]
    first = server.push("org/moving", {"config.json": b"{}", "w.safetensors": os.urandom(3 * MB)})
    pinned = pin_hub_source("hf://org/moving", HFConfig(endpoint_url=server.endpoint),
                            bounds=Bounds(stall_s=5, retries=0))
    assert pinned == f"hf://org/moving@{first}"
    config = cfg(hub)
    source, files = list_source(pinned, config)
    old = {f.key: f for f in files}
    server.push("org/moving", {"config.json": b"{\"v\": 2}", "w.safetensors": os.urandom(3 * MB)})  # main moves
    result = Downloader(source, tmp_path / "m", config).run(files)
    assert (Path(result.path) / "w.safetensors").stat().st_size == old["w.safetensors"].size
    assert hashlib.sha256((Path(result.path) / "w.safetensors").read_bytes()).hexdigest() == old["w.safetensors"].etag
    assert (Path(result.path) / "config.json").read_bytes() == b"{}"  # the first commit's, not a mix


def test_a_gated_repo_without_a_token_names_where_the_token_was_looked_for(
        hub: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = hub["server"]
    server.push("org/gated", {"config.json": b"{}", "w.safetensors": b"w"}, gated=True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no token file
    with pytest.raises(DownloadError) as info:
        list_source("hf://org/gated", cfg(hub))
    text = str(info.value)
    assert "gated" in text and "HF_TOKEN" in text and "download.hf.token" in text
    (tmp_path / "token").write_text(server.token)  # the file the Hugging Face CLI writes
    source, files = list_source("hf://org/gated", cfg(hub))
    assert [f.key for f in files] == ["config.json", "w.safetensors"] and "token file" in repr(source)
    assert server.token not in repr(source)


def test_a_429_is_waited_out_as_the_hub_asks(hub: dict[str, Any], tmp_path: Path) -> None:
    import time

    server = hub["server"]
    server.throttle("/tree/", count=1, retry_after=1.5)
    server.throttle("tokenizer.json", count=1, retry_after=1.5)
    config = cfg(hub)
    t = time.monotonic()
    source, files = list_source("hf://org/tiny", config)
    assert time.monotonic() - t >= 1.5  # the listing waited as long as the Hub asked (the backoff is shorter)
    t = time.monotonic()
    result = Downloader(source, tmp_path / "m", config).run(files)
    assert time.monotonic() - t >= 1.5
    assert (Path(result.path) / "tokenizer.json").read_bytes() == (hub["local"] / "tokenizer.json").read_bytes()
    assert not server._throttled  # both were answered 429, and both asked again


def test_a_bare_id_is_a_hub_id_unless_it_is_a_path_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert hub_or_path("Qwen/Qwen2.5-0.5B-Instruct") == "hf://Qwen/Qwen2.5-0.5B-Instruct"
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    assert hub_or_path("models/tiny") == "models/tiny"  # a directory here: a path
    assert hub_or_path("/abs/models") == "/abs/models" and hub_or_path("s3://b/m") == "s3://b/m"


@pytest.mark.parametrize(("source", "words"), [
    ("org/na me", "neither a local path"),
    ("hf://org/na me", "not a Hugging Face Hub repo id"),
    ("hf://org--x/name", "not a Hugging Face Hub repo id"),
    ("hf://org/name@bad..rev", "not a revision"),
    ("hf://org/name@has space", "not a revision"),
])
def test_bad_hub_sources_are_refused_at_parse_time(source: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        parse_config({"model_id": "m", "model_source": source})
    assert info.value.field == "model_source"


def test_a_hub_endpoint_that_is_not_a_url_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"model_id": "m", "model_source": "hf://org/x", "download": {"hf": {"endpoint_url": "nope"}}})
    assert info.value.field == "download.hf.endpoint_url"


def test_offline_reads_a_warm_cache_with_the_hub_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = HubServer().start()
    commit = server.push("org/off", {"config.json": b"{}", "w.safetensors": os.urandom(1000)})
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    import huggingface_hub

    huggingface_hub.snapshot_download("org/off", cache_dir=tmp_path / "hub", endpoint=server.endpoint)
    server.stop()  # the Hub is down from here on
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    source, files = list_source("hf://org/off", DownloadConfig())
    assert source.in_place is not None and source.in_place.name == commit
    assert sorted(f.key for f in files) == ["config.json", "w.safetensors"]


@pytest.mark.ray
@pytest.mark.anyio
async def test_three_nodes_read_one_commit_while_main_moves(ray_cluster: Any, tmp_path: Path) -> None:
    """The replica pins ``org/moving3`` (a bare id, as Ray writes it) to main's commit; main moves while
    the three nodes download (slowly, through a capped Hub): every node's snapshot is the first commit's,
    byte for byte, and the nodes shared one fetch."""
    import anyio

    from node_init import initialize_node
    from tests._configs import node_config

    server = HubServer(rate_mb_s=4.0).start()
    try:
        old = {"config.json": b"{}", "model.safetensors": os.urandom(6 * MB)}
        server.push("org/moving3", old)
        config = node_config("org/moving3", placement={"bundles": [{"CPU": 1}] * 3, "strategy": "STRICT_SPREAD"},
                             download={"hf": {"endpoint_url": server.endpoint}, "share": "auto", "part_size_mb": 1,
                                       "timeout_s": 60})

        async def move_main_once_bytes_flow() -> None:
            while server.bytes_sent < MB:
                await anyio.sleep(0.02)
            server.push("org/moving3", {"config.json": b"{\"v\": 2}", "model.safetensors": os.urandom(6 * MB)})

        async with anyio.create_task_group() as tg:
            tg.start_soon(move_main_once_bytes_flow)
            result = await initialize_node(config)
        try:
            assert len(result.reports) == 3 and sum(r.peer_bytes for r in result.reports) > 0
            # The replica resolved main and listed the commit once; no node asked the Hub for either.
            assert [kind for kind, _ in server.requests if kind in ("info", "tree")] == ["info", "tree"]
            for report in result.reports:
                for name, data in old.items():
                    assert (Path(report.path) / name).read_bytes() == data
                assert report.verified == {"config.json": "git-sha1", "model.safetensors": "sha256"}
        finally:
            await result.close()
    finally:
        server.stop()


def test_a_bare_id_that_is_neither_a_path_nor_on_the_hub_names_both(hub: dict[str, Any], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from node_init import pin_model_source
    from tests._configs import node_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    config = node_config("org/nowhere", download={"hf": {"endpoint_url": hub["server"].endpoint}, "retries": 0})
    with pytest.raises(DownloadError) as info:
        pin_model_source(config)
    text = str(info.value)
    assert "no path on the replica" in text and str(tmp_path) in text and "org/nowhere" in text
    assert "HF_TOKEN" in text  # where the token was looked for: a private repo looks missing without one
    pinned = pin_model_source(node_config("org/tiny", download={"hf": {"endpoint_url": hub["server"].endpoint}}))
    assert pinned.model_source == f"hf://org/tiny@{hub['commit']}"


def test_a_tokenizer_from_another_repo_is_fetched_at_its_revision_and_checked(
        hub: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``tokenizer`` / ``tokenizer_revision`` naming another Hub repo: every file but the weights, at the
    revision's commit, each byte checked (a flipped one is caught and read again); a path stays vLLM's."""
    from node_init.download import fetch_tokenizer, hub_tokenizer_uri

    server = hub["server"]
    files = {"tokenizer.json": b'{"v": 1}', "tokenizer_config.json": b"{}", "special_tokens_map.json": b"{}",
             "vocab.json": b"{}", "merges.txt": b"#", "model.safetensors": os.urandom(2000)}
    tag = server.push("org/tok", files, branch="v1")
    server.push("org/tok", {"tokenizer.json": b'{"v": 2}'})  # main moved on: v1 is what is asked for
    uri = hub_tokenizer_uri({"tokenizer": "org/tok", "tokenizer_revision": "v1"})
    assert uri == "hf://org/tok@v1"
    server.flip("tokenizer.json")
    monkeypatch.setenv("NODE_INIT_CACHE_DIR", str(tmp_path))
    fetched, mode = fetch_tokenizer(uri, cfg(hub))
    path = Path(fetched)
    assert mode == "hf"  # no Mistral tokenizer in it
    wanted = {k: v for k, v in files.items() if "safetensors" not in k}
    assert {p.name: p.read_bytes() for p in path.iterdir()} == wanted
    reads = [p for _, p in server.requests].count(f"/org/tok/resolve/{tag}/tokenizer.json")
    assert reads == 2  # the flipped read, then the good one
    assert path.is_relative_to(tmp_path / ".tokenizers")  # beside the models, no model id can name it
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "tok").mkdir()
    monkeypatch.chdir(tmp_path)
    assert hub_tokenizer_uri({"tokenizer": "org/tok"}) is None  # a path here: vLLM's to read
    assert hub_tokenizer_uri({}) is None
    monkeypatch.chdir(hub["local"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_tokenizer_uri({"tokenizer": "org/tok"}) is None  # offline: vLLM reads its cache


def test_a_tokenizer_missing_from_the_hub_is_a_typed_error_naming_it(hub: dict[str, Any], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from node_init.download import fetch_tokenizer

    monkeypatch.setenv("NODE_INIT_CACHE_DIR", str(tmp_path))
    with pytest.raises(DownloadError) as info:
        fetch_tokenizer("hf://org/no-such-tokenizer@v1", cfg(hub, retries=0))
    assert "org/no-such-tokenizer" in str(info.value) and info.value.source == "hf://org/no-such-tokenizer@v1"
    hub["server"].push("org/weights-only", {"model.safetensors": os.urandom(100)})
    with pytest.raises(DownloadError, match="holds no tokenizer files"):
        fetch_tokenizer("hf://org/weights-only", cfg(hub, retries=0))
    assert not any((tmp_path / ".tokenizers").rglob("*.*"))  # nothing half-written


@pytest.mark.parametrize(("kwargs", "field", "words"), [
    ({"tokenizer": "org/tok", "tokenizer_revision": "a..b"}, "engine.kwargs.tokenizer_revision", "not a revision"),
    ({"tokenizer": "org/tok", "tokenizer_revision": 3}, "engine.kwargs.tokenizer_revision", "branch, tag or commit"),
    ({"tokenizer": "hf://org/tok@v1", "tokenizer_revision": "v2"}, "engine.kwargs.tokenizer_revision",
     "names a revision already"),
    ({"tokenizer": "hf://not an id"}, "engine.kwargs.tokenizer", "not a Hugging Face Hub repo id"),
    ({"tokenizer": ""}, "engine.kwargs.tokenizer", "Hub id or a path"),
])
def test_bad_tokenizer_arguments_are_refused_at_parse_time(kwargs: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"model_id": "m", "model_source": "org/m", "engine": {"kwargs": kwargs}})
    assert info.value.field == field and words in str(info.value)


@pytest.mark.ray
@pytest.mark.anyio
async def test_the_files_follow_before_init_and_a_late_change_is_refused_naming_it(ray_cluster: Any) -> None:
    """A BeforeInit handler's ``load_format`` decides which weights the snapshot holds; a BeforeEngineInit
    handler, which runs while the download does, that changes it fails the init naming the setting."""
    from eventbus import EventBus
    from node_init import BeforeEngineInit, BeforeInit, CallbackCtx, NodeInitError, initialize_node
    from tests._configs import node_config

    server = HubServer().start()
    try:
        server.push("org/formats", {"config.json": b"{}", "tokenizer.json": b"{}", "w.safetensors": b"s" * 100,
                                    "w.pt": b"p" * 100, "tf_model.h5": b"h" * 100})
        config = node_config("org/formats", download={"hf": {"endpoint_url": server.endpoint}})
        bus = EventBus()

        @bus.on(BeforeInit)
        def pt_weights(event: BeforeInit, ctx: CallbackCtx) -> None:
            ctx.extra_init_kwargs["load_format"] = "pt"

        result = await initialize_node(config, bus=bus)
        try:
            (report,) = result.reports
            assert sorted(p.name for p in Path(report.path).iterdir()) == ["config.json", "tokenizer.json", "w.pt"]
        finally:
            await result.close()

        late = EventBus()

        @late.on(BeforeEngineInit)
        def too_late(event: BeforeEngineInit, ctx: CallbackCtx) -> None:
            ctx.extra_init_kwargs["load_format"] = "safetensors"

        with pytest.raises(NodeInitError) as info:
            await initialize_node(node_config("org/formats", download={"hf": {"endpoint_url": server.endpoint}}),
                                  bus=late)
        assert "load_format" in str(info.value) and "BeforeEngineInit" in str(info.value)
        assert isinstance(info.value, ConfigError) and info.value.field == "ctx.extra_init_kwargs.load_format"
    finally:
        server.stop()


@pytest.mark.parametrize(("files", "words"), [
    ({".gitattributes": b"*.safetensors filter=lfs"}, "no weight files vLLM would load"),
    ({"model.safetensors": b"w" * 100}, "no config.json"),
    ({"config.json": b"{}", "model-1.safetensors": b"w",
      "model.safetensors.index.json": json.dumps({"weight_map": {"a": "model-1.safetensors",
                                                                 "b": "model-2.safetensors"}}).encode()},
     "model.safetensors.index.json names model-2.safetensors, which the repo does not hold"),
], ids=["gitattributes-only", "weights-only", "index-names-a-missing-shard"])
def test_a_repo_vllm_could_not_load_is_a_typed_error_naming_why(hub: dict[str, Any], files: dict[str, bytes],
                                                                  words: str) -> None:
    repo = f"org/broken-{len(files)}-{sorted(files)[0].strip('.')}"
    hub["server"].push(repo, files)
    with pytest.raises(DownloadError, match=words) as info:
        list_source(f"hf://{repo}", cfg(hub, retries=0))
    assert info.value.source.startswith(f"hf://{repo}")


def test_a_429_on_the_revision_call_is_retried_by_our_loop(hub: dict[str, Any]) -> None:
    """The commit is resolved through huggingface_hub's model_info, which does not retry: ours does."""
    server = hub["server"]
    server.throttle("/revision/", count=2, retry_after=0.2)
    source, _ = list_source("hf://org/tiny", cfg(hub))
    assert source.uri == f"hf://org/tiny@{hub['commit']}" and not server._throttled
    server.throttle("/revision/", count=10, retry_after=0.1)
    with pytest.raises(DownloadError, match="429"):
        list_source("hf://org/tiny", cfg(hub, retries=1))
    server._throttled.clear()


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_and_the_endpoint_are_read_at_call_time(var: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from node_init.download import is_remote_source, open_source

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    source = open_source("hf://org/x@" + "0" * 40, DownloadConfig(hf=HFConfig(endpoint_url="http://elsewhere:1")))
    assert source.client.endpoint == "http://127.0.0.1:9"  # type: ignore[attr-defined]
    assert is_remote_source("hf://org/x")
    monkeypatch.setenv(var, "1")
    assert not is_remote_source("hf://org/x")  # offline: this node's Hugging Face cache
