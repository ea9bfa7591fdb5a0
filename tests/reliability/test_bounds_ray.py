"""``init_timeout_s`` on the nodes: a ``BeforeDownload`` handler that never returns, in its node's process.

The node task is told the init's deadline and stops by itself past it; the replica's watchdog names
the node's handler; the init fails within ``init_timeout_s`` plus :attr:`Bounds.slack_s`, no node
task is left running, and nothing is raised into the caller's loop afterwards.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from node_init import Bounds, PhaseError, initialize_node
from node_init.cluster import STOP_NAMESPACE
from node_init.testing import FaultProxy, S3Server
from tests.conftest import RayCluster
from tests.reliability.test_faults import SPREAD3, digest, model, s3  # noqa: F401 - the module's model fixture
from tests.reliability.test_faults import config as fault_config

pytestmark = [pytest.mark.reliability, pytest.mark.ray, pytest.mark.anyio]
H = "tests.reliability.hooks"


def lingering_node_tasks() -> set[bytes]:
    """Stop requests still kept: the replica keeps one only for a node task it did not see end."""
    from ray.experimental import internal_kv

    return set(internal_kv._internal_kv_list(b"", namespace=STOP_NAMESPACE))


@pytest.mark.parametrize("kind", ["sync", "async", "thread"])
async def test_a_node_side_handler_that_never_returns_is_bounded_and_named(
        ray_cluster: RayCluster, model: dict[str, Any], kind: str) -> None:  # noqa: F811
    cfg = fault_config(str(model["local"]), handlers=[f"{H}:stuck_{kind}_before_download"], init_timeout_s=4,
                       placement=SPREAD3)
    bounds = Bounds.of(cfg)
    before = lingering_node_tasks()
    ticks: list[float] = []

    async def caller_work() -> None:
        while True:
            ticks.append(time.monotonic())
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller_work)
        start = time.monotonic()
        with pytest.raises(PhaseError) as info:
            await initialize_node(cfg)
        took = time.monotonic() - start
        returned = time.monotonic()
        # The case reported (sync): a late interrupt landed in the caller's loop, after the init returned.
        await anyio.sleep(12 if kind == "sync" else 0.2)
        tg.cancel_scope.cancel()
    assert took < bounds.init_s + bounds.slack_s, f"bounded late: {took:.1f}s"
    err = info.value
    assert err.phase == "before_download", err
    assert f"stuck_{kind}_before_download" in str(err) and "init_timeout_s" in str(err)
    assert ticks[-1] >= returned and max(b - a for a, b in itertools.pairwise(ticks)) < 2.0
    assert lingering_node_tasks() <= before  # every node task of this init was seen to end


class _Replica:
    """A stand-in for a Serve replica: an actor that runs an init, killed mid-download by the test."""

    async def init(self, cfg: Any) -> None:
        await initialize_node(cfg)


async def test_a_replica_killed_mid_download_leaves_no_node_task_and_a_resumable_cache(
        ray_cluster: RayCluster, s3_server: S3Server, model: dict[str, Any]) -> None:  # noqa: F811
    import ray

    proxy = FaultProxy(s3_server.endpoint, rate_mb_s=1.0).start()  # ~5 s a node: still running when killed
    try:
        cfg = fault_config(model["uri"], placement=SPREAD3, init_timeout_s=30,
                           download={"s3": s3(proxy.endpoint), "part_size_mb": 1, "concurrency": 1,
                                                                   "lock_timeout_s": 60})
        # Like a Serve replica: an actor in its own placement group, which the init uses (Serve owns it).
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
        await anyio.to_thread.run_sync(lambda: ray.get(pg.ready(), timeout=30))
        replica: Any = ray.remote(_Replica).options(
            num_cpus=0, scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
        ).remote()
        call = replica.init.remote(cfg)
        deadline = time.monotonic() + 30
        # One range at a time, 1 MB/s for the three nodes: two whole ranges on each by ~7 MB.
        while proxy.bytes_sent < 7_000_000 and time.monotonic() < deadline:
            await anyio.sleep(0.1)
        assert proxy.bytes_sent >= 7_000_000, "the download never got going"
        ray.kill(replica)  # the replica dies (serve delete, a crash): its node tasks are orphaned
        with pytest.raises(ray.exceptions.RayError):
            await call
        killed_at, sent = time.monotonic(), proxy.bytes_sent
        # A new replica's init: no orphaned node task may hold a node's download lock past the bound,
        # and what the dead one wrote is resumed, not fetched again.
        proxy.rate = None
        remove_placement_group(pg)  # Serve removes a dead replica's group
        result = await initialize_node(cfg)
        took = time.monotonic() - killed_at
        bounds = Bounds.of(cfg)
        assert took < bounds.init_s + bounds.slack_s, f"an orphaned node task held on for {took:.1f}s"
        model_bytes = sum(p.stat().st_size for p in model["local"].rglob("*") if p.is_file())
        # Every node resumed from the whole ranges the dead replica's tasks had written.
        assert all(r.bytes <= model_bytes - (1 << 20) for r in result.reports), result.reports
        assert proxy.bytes_sent - sent < 3 * model_bytes
        for report in result.reports:
            assert digest(Path(report.path)) == digest(model["local"])
        await result.close()
    finally:
        proxy.stop()
