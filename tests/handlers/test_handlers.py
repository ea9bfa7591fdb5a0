"""The ready-made handlers: event log, timing metrics, disk guard, extra files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from eventbus import EventBus, HandlerError
from eventbus.testing import RecordingBus
from handlers.disk_guard import InsufficientDiskError
from handlers.event_log import read_events
from node_init import (
    AfterInit,
    BeforeDownload,
    BeforeInit,
    CallbackCtx,
    DownloadMode,
    NodeInitConfig,
    PhaseError,
    initialize_node,
    wire,
)
from node_init.testing import S3Server, write_model_files
from tests._configs import node_config
from tests._prometheus import label, scrape

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hmodel") / "m"
    write_model_files(root, {"model.safetensors": 2 << 20})
    return root


def config(model_dir: Path, **over: Any) -> NodeInitConfig:
    return node_config(str(model_dir), prefix="h", defaults=DEFAULTS, **over)


DEFAULTS = {"placement": {"bundles": [{"CPU": 1}] * 3, "strategy": "STRICT_SPREAD"}, "download": {"timeout_s": 60}}


async def test_event_log_lines_parse_back_into_the_same_events(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "events.jsonl"
    monkeypatch.setenv("NODE_INIT_EVENT_LOG", str(log))
    cfg = NodeInitConfig(model_id="m", handlers=["handlers.event_log:handlers"])
    bus = wire(cfg, RecordingBus())
    ctx = CallbackCtx.for_config(cfg)
    published = [BeforeInit(model_id="m"),
                 BeforeDownload(model_id="m", node_id="n", mode=DownloadMode.TOKENIZER_ONLY, files=("a",)),
                 AfterInit(model_id="m", model_path="/p", timings={"total": 1.5})]
    for event in published:
        await bus.publish(event, ctx)
    assert list(read_events(log)) == published
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["type"] for line in lines] == ["BeforeInit", "BeforeDownload", "AfterInit"]
    assert all(line["pid"] == os.getpid() for line in lines)


async def test_disk_guard_fails_with_the_numbers(tmp_path: Path) -> None:
    cfg = NodeInitConfig(model_id="m", handlers=["handlers.disk_guard:handlers"],
                         handler_options={"disk_guard": {"margin_mb": 10**12}})  # more than any disk
    bus = wire(cfg, EventBus())
    event = BeforeDownload(model_id="m", node_id="node-7", destination=str(tmp_path / "not" / "yet"),
                           expected_bytes=5_000_000)
    with pytest.raises(HandlerError) as info:
        await bus.publish(event, CallbackCtx.for_config(cfg))
    cause = info.value.__cause__
    assert isinstance(cause, InsufficientDiskError) and cause.node_id == "node-7"
    assert cause.needed_bytes == 5_000_000 + 10**18 and cause.free_bytes > 0
    assert "node node-7" in str(cause) and "MB free" in str(cause)
    ok = NodeInitConfig(model_id="m", handlers=["handlers.disk_guard:handlers"],
                        handler_options={"disk_guard": {"margin_mb": 1}})
    assert (await wire(ok, EventBus()).publish(event, CallbackCtx.for_config(ok))).ok


async def test_disk_guard_veto_variant(tmp_path: Path) -> None:
    cfg = NodeInitConfig(model_id="m", handlers=["handlers.disk_guard:veto"],
                         handler_options={"disk_guard": {"margin_mb": 10**12}})
    event = BeforeDownload(model_id="m", node_id="n", destination=str(tmp_path), expected_bytes=1)
    outcome = await wire(cfg, EventBus()).publish(event, CallbackCtx.for_config(cfg))
    assert outcome.vetoed_by == ("handlers.disk_guard.skip_when_full",)


@pytest.mark.ray
async def test_disk_guard_on_a_node_is_a_phase_error_naming_it(ray_cluster: Any, model_dir: Path) -> None:
    cfg = config(model_dir, handlers=["handlers.disk_guard:handlers"],
                 handler_options={"disk_guard": {"margin_mb": 10**12}})
    with pytest.raises(PhaseError) as info:
        await initialize_node(cfg)
    assert info.value.phase == "before_download" and info.value.node_id in {n.node_id for n in ray_cluster.nodes}
    assert "MB free" in str(info.value)


@pytest.mark.ray
async def test_event_log_on_every_node(ray_cluster: Any, model_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    cfg = config(model_dir, handlers=["handlers.event_log:handlers"],
                 runtime_env={"env_vars": {"NODE_INIT_EVENT_LOG": str(log)}})
    os.environ["NODE_INIT_EVENT_LOG"] = str(log)  # the replica (this process) writes too
    try:
        result = await initialize_node(cfg)
    finally:
        del os.environ["NODE_INIT_EVENT_LOG"]
    events = list(read_events(log))
    downloads = [e for e in events if isinstance(e, BeforeDownload)]
    assert {e.node_id for e in downloads} == {n.node_id for n in ray_cluster.nodes}
    assert isinstance(events[0], BeforeInit) and isinstance(events[-1], AfterInit)
    assert events[-1].reports == result.reports


@pytest.mark.ray
async def test_timing_metrics_reach_rays_prometheus_endpoint(ray_cluster: Any, model_dir: Path) -> None:
    cfg = config(model_dir, handlers=["handlers.timing:handlers"])
    await initialize_node(cfg)
    lines = scrape("ray_node_init_phase_seconds_count", having=cfg.model_id)
    phases = {label(line, "phase") for line in lines if 'phase="' in line}
    assert {"placement", "download", "total"} <= phases, lines
    want = {n.node_id for n in ray_cluster.nodes}
    node_lines = scrape("ray_node_init_node_download_bytes", having=cfg.model_id, nodes=want)
    assert {label(line, "node") for line in node_lines} == want


@pytest.mark.ray
async def test_a_warm_second_init_records_cached_bytes_without_a_handler_error(ray_cluster: Any,
                                                                              model_dir: Path) -> None:
    from handlers.timing import record_timings

    cfg = config(model_dir, handlers=["handlers.timing:handlers"])
    await initialize_node(cfg)
    bus, after = EventBus(), []
    bus.subscribe(AfterInit, lambda e, c: after.append(e))
    warm = await initialize_node(cfg, bus=bus)  # every node's cache is complete: 0 bytes fetched
    assert all(r.bytes == 0 and r.cached_bytes > 0 for r in warm.reports)
    record_timings(after[0], warm.ctx)  # raised ValueError (a Counter incremented by 0) on a warm start
    want = {n.node_id for n in ray_cluster.nodes}
    lines = scrape("ray_node_init_node_cached_bytes", having=cfg.model_id, nodes=want)
    assert {label(line, "node") for line in lines} == want


@pytest.mark.ray
async def test_extra_files_land_on_every_node(ray_cluster: Any, s3_server: S3Server, model_dir: Path,
                                              tmp_path: Path) -> None:
    cache = tmp_path / "compile-cache-src"
    write_model_files(cache, {"graph.bin": 300_000})
    s3_server.upload_dir(cache, "models", "compile-cache")
    cfg = config(model_dir, handlers=["handlers.extra_files:handlers"], handler_options={"extra_files": {"files": [
        {"source": "s3://models/compile-cache", "destination": "$NODE_INIT_CACHE_DIR/compile-cache"}]}},
        download={"s3": {"endpoint_url": s3_server.endpoint, "access_key_id": "testing",
                         "secret_access_key": "testing"}})
    result = await initialize_node(cfg)
    for node in ray_cluster.nodes:
        assert (node.cache / "compile-cache" / "graph.bin").stat().st_size == 300_000
        (fetched,) = result.ctx.custom_data["nodes"][node.node_id]["extra_files"]
        assert fetched["destination"] == str(node.cache / "compile-cache") and fetched["files"] == 5
