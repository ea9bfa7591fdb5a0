"""A real vLLM engine on CPU: overlapped boot vs normal boot, and failures that leave nothing behind."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from eventbus import Event, EventBus
from node_init import (
    BeforeEngineInit,
    CallbackCtx,
    DownloadError,
    EngineError,
    InitFailed,
    initialize_node,
)
from node_init.testing import Fault, FaultProxy, S3Server, build_tiny_llama
from tests._configs import node_config

pytestmark = [pytest.mark.engine, pytest.mark.ray, pytest.mark.anyio]
PROMPTS = ["the quick brown fox", "ray serve runs large"]
ENGINE_KWARGS = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> dict[bool, str]:
    """A tiny random Llama, untied and tied, uploaded to the session's S3 server."""
    root = tmp_path_factory.mktemp("tiny")
    uris = {}
    for tied in (False, True):
        path = build_tiny_llama(root / f"tiny-{tied}", tie_word_embeddings=tied)
        s3_server.upload_dir(path, "models", f"tiny-{tied}")
        uris[tied] = f"s3://models/tiny-{tied}"
    return uris


def config(uri: str, endpoint: str, *, overlap: str, **engine: Any) -> Any:
    s3 = {"endpoint_url": endpoint, "access_key_id": "testing", "secret_access_key": "testing"}
    return node_config(uri, prefix="tiny", placement=None, download={"timeout_s": 60, "retries": 0, "s3": s3},
                       engine={"kind": "vllm", "overlap": overlap, "kwargs": {**ENGINE_KWARGS, **engine}})


def engine_processes() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


def wait_no_engine_process(bound: float = 60.0) -> None:
    deadline = time.monotonic() + bound
    while engine_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert engine_processes() == []


async def greedy(result: Any) -> list[list[int]]:
    return [await result.engine.generate_ids(p, max_tokens=12) for p in PROMPTS]


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
async def test_overlapped_load_gives_the_same_greedy_tokens_as_a_normal_load(
        ray_cluster: Any, s3_server: S3Server, tiny_models: dict[bool, str], tied: bool) -> None:
    normal = await initialize_node(config(tiny_models[tied], s3_server.endpoint, overlap="off"))
    try:
        assert not normal.engine.on_dummy_weights and "weights_load" not in normal.timings
        expected = await greedy(normal)
    finally:
        await normal.close()
    overlapped = await initialize_node(config(tiny_models[tied], s3_server.endpoint, overlap="on"))
    try:
        assert not overlapped.engine.on_dummy_weights
        assert {"weights_load", "tokenizer_fetch", "overlap"} <= set(overlapped.timings)
        assert overlapped.engine.model_path == overlapped.model_path  # real weights, from the node's cache
        hold = overlapped.snapshot_hold  # the engine's snapshot is never collected under it
        assert hold is not None and str(hold.path) == overlapped.model_path
        assert await greedy(overlapped) == expected
    finally:
        await overlapped.close()
    wait_no_engine_process()


async def test_before_engine_init_changes_kwargs_or_vetoes(ray_cluster: Any, s3_server: S3Server,
                                                           tiny_models: dict[bool, str]) -> None:
    bus = EventBus()
    seen: list[Event] = []

    def veto(event: BeforeEngineInit, ctx: CallbackCtx) -> bool:
        seen.append(event)
        ctx.extra_init_kwargs["max_model_len"] = 128
        return False

    bus.subscribe(BeforeEngineInit, veto)
    result = await initialize_node(config(tiny_models[False], s3_server.endpoint, overlap="on"), bus=bus)
    assert result.engine is None and engine_processes() == []
    assert seen[0].engine_kwargs["max_model_len"] == 256  # the configured kwargs, before the handler's change
    assert result.ctx.extra_init_kwargs["max_model_len"] == 128


async def test_a_failed_boot_is_an_engine_error_and_leaves_no_process(ray_cluster: Any, s3_server: S3Server,
                                                                      tiny_models: dict[bool, str]) -> None:
    bus = EventBus()
    failed: list[InitFailed] = []
    bus.subscribe(InitFailed, lambda e, c: failed.append(e))
    cfg = config(tiny_models[False], s3_server.endpoint, overlap="off", max_model_len=100_000)
    with pytest.raises(EngineError) as info:
        await initialize_node(cfg, bus=bus)
    assert info.value.phase == "engine" and "max_model_len" in str(info.value)
    assert failed and failed[0].phase == "engine"
    wait_no_engine_process()


async def test_a_failed_download_shuts_the_overlapped_engine_down(ray_cluster: Any, s3_server: S3Server,
                                                                  tiny_models: dict[bool, str],
                                                                  tmp_path: Path) -> None:
    proxy = FaultProxy(s3_server.endpoint, rate_mb_s=0.5).start()  # slow: the boot starts first
    proxy.add(Fault(kind="status", status=500, match="model.safetensors", count=1000))
    try:
        cfg = config(tiny_models[False], proxy.endpoint, overlap="on")
        with pytest.raises(DownloadError) as info:
            await initialize_node(cfg)
        assert "model.safetensors" in str(info.value)
    finally:
        proxy.stop()
    wait_no_engine_process()
    cache = Path(os.environ["NODE_INIT_CACHE_DIR"]) / cfg.model_id
    assert not (cache / "model.safetensors").exists()


@pytest.mark.parametrize("source", ["gs", "azure", "abfss-mirror-dict"])
async def test_every_remote_store_boots_the_engine_overlapped_on_three_sharing_nodes(
        ray_cluster: Any, gcs_server: Any, azure_server: Any, tmp_path: Path, source: str) -> None:
    """gs:// (fake-gcs-server), azure:// and Ray's CloudMirrorConfig mapping with an abfss:// bucket
    (Azurite): three nodes share one fetch (``share: auto``), the engine boots on dummy weights while
    they download and then loads the real ones; every node's snapshot is the origin's bytes."""
    from node_init.testing import AZURITE_KEY

    local = build_tiny_llama(tmp_path / "tiny", tie_word_embeddings=False)
    prefix = f"tiny-{source}"
    if source == "gs":
        gcs_server.upload_dir(local, "models", prefix)
        model_source: Any = f"gs://models/{prefix}"
        store = {"gcs": {"endpoint_url": gcs_server.endpoint, "anonymous": True}}
        checked = "crc32c"
    else:
        azure_server.upload_dir(local, "models", prefix)
        host = f"devstoreaccount1.{'dfs' if 'abfss' in source else 'blob'}.core.windows.net"
        uri = f"{'abfss' if 'abfss' in source else 'azure'}://models@{host}/{prefix}"
        model_source = {"bucket_uri": uri} if "dict" in source else uri
        store = {"azure": {"endpoint_url": azure_server.endpoint, "account_key": AZURITE_KEY}}
        checked = "md5"
    cfg = node_config(model_source, prefix="tiny", placement={"bundles": [{"CPU": 1}] * 3, "strategy": "STRICT_SPREAD"},
                      download={"timeout_s": 60, "retries": 0, "share": "auto", "part_size_mb": 1, **store},
                      engine={"kind": "vllm", "overlap": "on", "kwargs": ENGINE_KWARGS})
    result = await initialize_node(cfg)
    try:
        assert not result.engine.on_dummy_weights and "weights_load" in result.timings
        assert result.engine.model_path == result.model_path
        assert len(result.reports) == 3 and sum(r.peer_bytes for r in result.reports) > 0
        for report in result.reports:
            assert report.verified["model.safetensors"] == checked
            assert all((Path(report.path) / p.name).read_bytes() == p.read_bytes() for p in local.iterdir())
        assert len(await result.engine.generate_ids(PROMPTS[0], max_tokens=4)) == 4
    finally:
        await result.close()
    wait_no_engine_process()


async def test_a_hub_model_boots_from_the_snapshot_with_the_hub_gone(ray_cluster: Any, tmp_path: Path) -> None:
    """A bare Hub id, its tokenizer from another repo at a branch (``tokenizer``, ``tokenizer_revision``):
    both are downloaded (verified), then the Hub server stops before the engine boots: the engine loads
    the local snapshot and the local tokenizer, exactly the Hub's files, and never asks the Hub again."""
    from node_init.testing import HubServer

    local = build_tiny_llama(tmp_path / "tiny", tie_word_embeddings=False)
    hub = HubServer().start()
    # The repo also carries other frameworks' checkpoints, which vLLM never reads: none is fetched.
    repo = tmp_path / "repo"
    shutil.copytree(local, repo)
    junk = ("tf_model.h5", "flax_model.msgpack", "rust_model.ot", "onnx/model.onnx", "original/consolidated.00.pth")
    for key in junk:
        (repo / key).parent.mkdir(exist_ok=True)
        (repo / key).write_bytes(os.urandom(1000))
    hub.push_dir("org/tiny-hub", repo)
    tokenizer = {p.name: p.read_bytes() for p in local.iterdir() if not p.name.endswith(".safetensors")}
    tok_commit = hub.push("org/tiny-tok", tokenizer, branch="v1")
    hub.push("org/tiny-tok", {"config.json": b"{}"})  # main: no tokenizer at all
    bus = EventBus()

    async def hub_down(event: BeforeEngineInit, ctx: CallbackCtx) -> None:
        # Published while the node downloads: the Hub goes down once the snapshot holds every file (else
        # this races the last reads), so only the engine's boot runs without it.
        wanted = {p.name for p in local.iterdir()}
        with anyio.fail_after(60):
            while not wanted <= {p.name for p in Path(event.model_path).glob("*")}:
                await anyio.sleep(0.05)
        hub.stop()
        seen.append(len(hub.requests))
        kwargs.update(event.engine_kwargs)

    seen: list[int] = []
    kwargs: dict[str, Any] = {}
    bus.subscribe(BeforeEngineInit, hub_down)
    cfg = node_config("org/tiny-hub", prefix="tiny", placement=None,
                      download={"timeout_s": 60, "retries": 0, "hf": {"endpoint_url": hub.endpoint}},
                      engine={"kind": "vllm", "overlap": "off",
                              "kwargs": {**ENGINE_KWARGS, "tokenizer": "org/tiny-tok", "tokenizer_revision": "v1"}})
    try:
        result = await initialize_node(cfg, bus=bus)
    finally:
        hub.stop()
    try:
        assert seen and len(hub.requests) == seen[0]  # nothing reached the Hub once it was down
        assert result.engine.model_path == result.model_path
        (report,) = result.reports
        assert report.verified["model.safetensors"] == "sha256" and report.verified["config.json"] == "git-sha1"
        assert all((Path(result.model_path) / p.name).read_bytes() == p.read_bytes() for p in local.iterdir())
        assert sorted(report.files) == sorted(p.name for p in local.iterdir())  # none of the junk
        # The tokenizer: v1's commit, its files only (no weights), and the engine's tokenizer is that copy.
        tok_dir = Path(kwargs["tokenizer"])
        assert kwargs["tokenizer_revision"] is None and tok_dir.is_dir() and tok_commit in str(hub.requests)
        assert {p.name: p.read_bytes() for p in tok_dir.iterdir()} == tokenizer
        engine_tokenizer = result.engine.llm.get_tokenizer()
        assert Path(engine_tokenizer.name_or_path).resolve() == tok_dir.resolve()
        assert len(await result.engine.generate_ids(PROMPTS[0], max_tokens=4)) == 4
    finally:
        await result.close()
    wait_no_engine_process()
