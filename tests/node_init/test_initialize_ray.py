"""initialize_node on a real 3-node Ray cluster (ray.cluster_utils.Cluster), a cache root per node."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import ray
import ray.util

from eventbus import Event, EventBus
from node_init import (
    AfterInit,
    BeforeInit,
    CallbackCtx,
    CallbackLoadError,
    DownloadMode,
    DownloadProgress,
    InitFailed,
    NodeInitConfig,
    PhaseError,
    initialize_node,
)
from tests import _procs as procs
from tests._configs import node_config
from tests.conftest import RayCluster

pytestmark = [pytest.mark.ray, pytest.mark.anyio]
H = "tests.node_init.hooks"
SPREAD3 = {"bundles": [{"CPU": 1}] * 3, "strategy": "STRICT_SPREAD", "ready_timeout_s": 30}


def config(model_dir: Path, **over: Any) -> NodeInitConfig:
    defaults = {"download": {"timeout_s": 60, "lock_timeout_s": 30}, "placement": SPREAD3}
    return node_config(str(model_dir), defaults=defaults, **over)


def recorder(bus: EventBus) -> list[Event]:
    seen: list[Event] = []
    bus.subscribe(Event, lambda e, c: seen.append(e))
    return seen


def our_pgs() -> list[str]:
    """Placement groups node init created that still exist."""
    return [pg["name"] for pg in ray.util.placement_group_table().values()
            if pg["name"].startswith("node-init-") and pg["state"] != "REMOVED"]


def files_under(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()
            and not p.name.startswith(".")} if path.exists() else set()


async def test_before_download_runs_in_each_nodes_own_process(ray_cluster: RayCluster, model_dir: Path) -> None:
    cfg = config(model_dir, handlers=[f"{H}:record"])
    bus = EventBus()
    bus.subscribe(BeforeInit, lambda e, ctx: ctx.custom_data.update(from_replica="hello"))
    seen = recorder(bus)
    result = await initialize_node(cfg, bus=bus)
    try:
        assert {r.node_id for r in result.reports} == {n.node_id for n in ray_cluster.nodes}
        nodes = result.ctx.custom_data["nodes"]
        pids = {nodes[n.node_id]["seen"]["pid"] for n in ray_cluster.nodes}
        assert len(pids) == 3 and os.getpid() not in pids
        for node in ray_cluster.nodes:
            seen_there = nodes[node.node_id]["seen"]
            assert seen_there["node_name"] == node.name and seen_there["node_id"] == node.node_id
            assert seen_there["from_replica"] == "hello"  # the replica's ctx reached the node
            assert "from_replica" not in nodes[node.node_id]  # a node returns its additions only
            assert seen_there["expected_bytes"] == sum(p.stat().st_size for p in model_dir.iterdir())
            dest = node.cache / cfg.model_id
            assert seen_there["destination"] == str(dest)
            assert files_under(dest) == {p.name for p in model_dir.iterdir()}  # on that node's own disk
        # The engine's directory: the head's current snapshot (held only while an engine reads it).
        assert Path(result.model_path) == (ray_cluster.head.cache / cfg.model_id).resolve()
        assert result.engine is None and result.snapshot_hold is None
        after = [e for e in seen if isinstance(e, AfterInit)]
        assert len(after) == 1 and after[0].reports == result.reports
        assert {"placement", "download", "total"} <= set(after[0].timings)
        progress = [e for e in seen if isinstance(e, DownloadProgress)]
        assert {p.node_id for p in progress} == {n.node_id for n in ray_cluster.nodes}
        assert all(p.bytes_done <= p.bytes_total for p in progress)
    finally:
        await result.close()
    assert cfg.model_id not in str(our_pgs())


async def test_custom_download_changes_worker_mode_on_the_node(ray_cluster: RayCluster, model_dir: Path) -> None:
    cfg = config(model_dir, handlers=[f"{H}:custom_download"])
    result = await initialize_node(cfg)
    await result.close()
    by_node = {r.node_id: r for r in result.reports}
    head, workers = ray_cluster.nodes[0], ray_cluster.nodes[1:]
    assert by_node[head.node_id].mode is DownloadMode.MODEL_AND_TOKENIZER
    assert any(f.endswith(".safetensors") for f in by_node[head.node_id].files)
    for node in workers:
        assert by_node[node.node_id].mode is DownloadMode.TOKENIZER_ONLY
        assert files_under(node.cache / cfg.model_id) == {
            "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"}


async def test_a_node_vetoes_its_own_download(ray_cluster: RayCluster, model_dir: Path) -> None:
    cfg = config(model_dir, handlers=[f"{H}:veto_node1"])
    result = await initialize_node(cfg)
    await result.close()
    node1 = next(n for n in ray_cluster.nodes if n.name == "node1")
    vetoed = {r.node_id for r in result.reports if r.vetoed}
    assert vetoed == {node1.node_id}
    assert files_under(node1.cache / cfg.model_id) == set()
    assert files_under(ray_cluster.nodes[2].cache / cfg.model_id)


async def test_before_init_veto_skips_placement_and_downloads(ray_cluster: RayCluster, model_dir: Path) -> None:
    cfg = config(model_dir, callback=f"{H}:SkipInit")
    result = await initialize_node(cfg)
    assert result.reports == () and result.placement_group is None
    assert result.model_path == str(model_dir)  # the engine boots on the local source
    assert not files_under(ray_cluster.head.cache / cfg.model_id)


async def test_handlers_placement_group_wins(ray_cluster: RayCluster, model_dir: Path) -> None:
    pg = ray.util.placement_group([{"node2": 1}])
    cfg = config(model_dir)
    bus = EventBus()

    def custom_pg(event: BeforeInit, ctx: CallbackCtx) -> None:  # the original note's CustomPG
        ctx.placement_group = pg

    bus.subscribe(BeforeInit, custom_pg)
    try:
        result = await initialize_node(cfg, bus=bus)
        assert result.placement_group is pg and not result.owns_placement_group
        node2 = next(n for n in ray_cluster.nodes if n.name == "node2")
        # node2 (the group's node) plus the replica's own node, where the engine loads.
        assert {r.node_id for r in result.reports} == {node2.node_id, ray_cluster.head.node_id}
        await result.close()
        assert ray.util.placement_group_table(pg)["state"] == "CREATED"  # not ours to remove
    finally:
        ray.util.remove_placement_group(pg)


async def test_metrics_callback_from_the_note(ray_cluster: RayCluster, model_dir: Path) -> None:
    cfg = config(model_dir, callback=f"{H}:Metrics", callback_kwargs={"label": "lbl"}, placement=None)
    result = await initialize_node(cfg)
    assert result.ctx.custom_data["took"] > 0  # on_after_init ran in the replica
    (report,) = result.reports
    assert report.custom_data["metrics_label"] == "lbl"  # on_before_download ran on the node


async def test_second_run_reuses_the_cache(ray_cluster: RayCluster, model_dir: Path) -> None:
    cfg = config(model_dir, placement=None)
    first = await initialize_node(cfg)
    second = await initialize_node(cfg)
    total = sum(p.stat().st_size for p in model_dir.iterdir())
    assert first.reports[0].bytes == total and first.reports[0].cached_bytes == 0
    assert second.reports[0].files == () and second.reports[0].cached_bytes == total


async def test_unloadable_callback_fails_before_anything_runs(ray_cluster: RayCluster, model_dir: Path) -> None:
    cfg = config(model_dir, callback="tests.node_init.no_such_module:Cb")
    before = our_pgs()
    with pytest.raises(CallbackLoadError, match="no_such_module"):
        await initialize_node(cfg)
    assert our_pgs() == before


async def test_handler_module_missing_on_a_node_names_the_node(ray_cluster: RayCluster, model_dir: Path) -> None:
    cfg = config(model_dir, handlers=["tests.node_init.hooks_not_on_node1:handlers"])
    bus = EventBus()
    seen = recorder(bus)
    with pytest.raises(CallbackLoadError) as info:
        await initialize_node(cfg, bus=bus)
    node1 = next(n for n in ray_cluster.nodes if n.name == "node1")
    assert info.value.node_id == node1.node_id and "libfoo" in str(info.value)
    failed = [e for e in seen if isinstance(e, InitFailed)]
    assert failed and failed[0].node_id == node1.node_id and failed[0].phase == "download"
    assert cfg.model_id not in str(our_pgs())


async def test_a_failing_node_handler_is_a_typed_phase_error(ray_cluster: RayCluster, model_dir: Path) -> None:
    cfg = config(model_dir, handlers=[f"{H}:fail_node2"])
    bus = EventBus()
    seen = recorder(bus)
    with pytest.raises(PhaseError) as info:
        await initialize_node(cfg, bus=bus)
    node2 = next(n for n in ray_cluster.nodes if n.name == "node2")
    err = info.value
    assert err.phase == "before_download" and err.node_id == node2.node_id
    assert "disk on fire" in str(err) and "boom_on_node2" in str(err)
    (failed,) = [e for e in seen if isinstance(e, InitFailed)]
    assert failed.error.node_id == node2.node_id and "disk on fire" in failed.error.message
    assert cfg.model_id not in str(our_pgs())


async def test_unsatisfiable_placement_group_fails_within_its_bound(ray_cluster: RayCluster, model_dir: Path) -> None:
    cfg = config(model_dir, placement={"bundles": [{"CPU": 64}], "ready_timeout_s": 1.0})
    start = time.monotonic()
    with pytest.raises(PhaseError) as info:
        await initialize_node(cfg)
    assert time.monotonic() - start < 10
    assert info.value.phase == "placement" and "not ready within 1.0s" in str(info.value)
    assert cfg.model_id not in str(our_pgs())


async def test_s3_download_on_every_node_with_per_role_modes(ray_cluster: RayCluster, s3_server: Any,
                                                              model_dir: Path) -> None:
    s3_server.upload_dir(model_dir, "models", "ray-s3")
    cfg = config(
        model_dir, model_source="s3://models/ray-s3",
        download={"timeout_s": 60, "part_size_mb": 1, "local_node": "MODEL_AND_TOKENIZER",
                  "worker_nodes": "EXCLUDE_SAFETENSORS",
                  "s3": {"endpoint_url": s3_server.endpoint, "access_key_id": "testing",
                         "secret_access_key": "testing"}},
    )
    result = await initialize_node(cfg)
    await result.close()
    everything = {p.name for p in model_dir.iterdir()}
    for node in ray_cluster.nodes:
        got = files_under(node.cache / cfg.model_id)
        if node is ray_cluster.head:
            assert got == everything
        else:
            assert got == {f for f in everything if not f.endswith(".safetensors")}
    assert sum(r.bytes for r in result.reports) == sum(
        (model_dir / f).stat().st_size for f in everything) + 2 * sum(
        (model_dir / f).stat().st_size for f in everything if not f.endswith(".safetensors"))


def test_the_cli_shows_node_side_lines_and_every_event(ray_cluster: RayCluster, model_dir: Path,
                                                        tmp_path: Path) -> None:
    """``node-init run``: a BeforeDownload handler's log lines on the nodes come out in the CLI's own
    output, with their node id, and its timeline holds each node's BeforeDownload outcome, vetoes included."""
    import sys

    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "model_id": f"cli-{os.getpid()}", "model_source": str(model_dir),
        "handlers": ["tests.node_init.hooks:loud_nodes"],
        "placement": {"bundles": [{"CPU": 1}] * 3, "strategy": "STRICT_SPREAD"},
        "engine": {"kind": "none"}, "download": {"share": "off"},
    }))
    out = procs.run([str(Path(sys.executable).parent / "node-init"), "run", str(config), "--address",
                     ray_cluster.address, "--json-logs"], timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    hellos = [line for line in lines if line.get("event") == "hello from the node"]
    assert {h["node_name"] for h in hellos} == {"head", "node1", "node2"}  # one per node, in this process's output
    assert {h["node_id"] for h in hellos} == {n.node_id for n in ray_cluster.nodes}
    decided = [line for line in out.stdout.splitlines() if "NodeDecided" in line]
    assert len(decided) == 3
    (vetoed,) = [line for line in decided if "say_hello_from_the_node" in line]
    assert ray_cluster.nodes[1].node_id[-37:] in vetoed  # the timeline shortens long values
