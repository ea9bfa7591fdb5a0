"""``init_timeout_s`` on the nodes: a ``BeforeDownload`` handler that never returns, in its node's process.

The node task is told the init's deadline and stops by itself past it; the replica's watchdog names
the node's handler; the init fails within ``init_timeout_s`` plus :attr:`Bounds.slack_s`, no node
task is left running, and nothing is raised into the caller's loop afterwards.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import anyio
import pytest

from node_init import Bounds, PhaseError, initialize_node
from node_init.cluster import STOP_NAMESPACE
from tests.conftest import RayCluster
from tests.reliability.test_faults import SPREAD3, model  # noqa: F401 - the module's model fixture
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
