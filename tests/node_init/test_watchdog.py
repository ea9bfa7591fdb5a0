"""``init_timeout_s``: the whole init is bounded, even by a handler that holds the event loop."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from eventbus import EventBus
from node_init import BeforeInit, InitFailed, PhaseError, initialize_node, parse_config

pytestmark = pytest.mark.anyio


def stuck_on_the_loop(event: BeforeInit, ctx: Any) -> None:
    """A sync handler with no timeout that keeps the loop busy for a minute."""
    for _ in range(6000):
        time.sleep(0.01)


async def awaits_forever(event: BeforeInit, ctx: Any) -> None:
    await anyio.sleep_forever()


@pytest.mark.parametrize("handler", [stuck_on_the_loop, awaits_forever])
async def test_the_init_bound_fires_and_names_the_phase_and_the_handler(handler: Any) -> None:
    config = parse_config({"model_id": "m", "init_timeout_s": 1})
    bus, failed = EventBus(), []
    bus.subscribe(BeforeInit, handler)
    bus.subscribe(InitFailed, lambda e, c: failed.append(e))
    start = time.monotonic()
    with pytest.raises(PhaseError, match="init_timeout_s") as info:
        await initialize_node(config, bus=bus)
    took = time.monotonic() - start
    assert took < 1 + 5 + 2, f"the bound fired late: {took:.1f}s"  # the bound, the loop's grace, slack
    assert info.value.phase == "before_init"
    assert handler.__qualname__ in str(info.value) and "BeforeInit" in str(info.value)
    assert len(failed) == 1 and failed[0].phase == "before_init"


async def test_an_init_within_its_bound_is_not_touched() -> None:
    config = parse_config({"model_id": "m", "init_timeout_s": 5})
    result = await initialize_node(config)
    await anyio.sleep(0)
    assert result.engine is None
