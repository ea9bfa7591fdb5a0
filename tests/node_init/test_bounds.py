"""Every wait of an init from one :class:`Bounds`, and ``init_timeout_s`` kept in every phase.

Replica-side handlers that never return, in each phase and each way a handler runs (sync on the
event loop, async, sync in a thread); node-side ones are in ``tests/reliability/test_bounds_ray.py``.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventbus import EventBus
from node_init import EVENTS, BeforeInit, Bounds, ConfigError, InitFailed, PhaseError, initialize_node, parse_config

MIN_STALL_S = Bounds.MIN_STALL_S

pytestmark = pytest.mark.anyio

seconds = st.floats(min_value=MIN_STALL_S, max_value=1e6, allow_nan=False)


@given(stall=seconds, download=seconds, lock=seconds, init=seconds)
def test_the_bounds_keep_their_relations_for_every_accepted_config(stall: float, download: float, lock: float,
                                                                   init: float) -> None:
    config = parse_config({"model_id": "m", "init_timeout_s": init,
                           "download": {"stall_timeout_s": stall, "timeout_s": download, "lock_timeout_s": lock}})
    b = Bounds.of(config)
    # A wait on a peer, however often its range changes hands, leaves the source a third of the stall bound.
    assert b.peer_wait_s <= stall * 2 / 3 + 1e-9 and stall - b.peer_wait_s >= stall / 3 - 1e-9
    assert b.silence_s == pytest.approx(stall / 3) and b.peer_wait_s == pytest.approx(2 * b.silence_s)
    assert 0 < b.retry_s <= b.silence_s  # a retry is given something, never more than a silence
    assert b.holders_s <= stall * 2 / 3 + 1e-9  # every holder of a range, together
    assert b.join_s <= stall
    assert b.node_s > download + lock  # a node's own bounds fire before the replica gives up on it
    assert b.exchange_idle_s > b.node_s  # the hub never drops a live init's state
    assert b.rpc(b.peer_wait_s) > b.peer_wait_s  # a Ray call never strikes before the wait it carries
    assert b.stop_s < b.slack_s and b.init_s == init
    assert (b.placement_s, b.boot_s) == (config.placement.ready_timeout_s if config.placement else 60.0,
                                         config.engine.boot_timeout_s)


@pytest.mark.parametrize("stall", [0, 0.5, MIN_STALL_S - 0.01])
def test_a_stall_bound_no_derivation_can_honour_is_refused_naming_the_field(stall: float) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"model_id": "m", "download": {"stall_timeout_s": stall}})
    assert info.value.field == "download.stall_timeout_s"


def _stuck(kind: str) -> tuple[Any, dict[str, Any]]:
    if kind == "sync":  # on the event loop itself: only the watchdog's interrupt can end it
        def stuck_on_the_loop(event: Any, ctx: Any) -> None:
            for _ in range(360_000):
                time.sleep(0.01)

        return stuck_on_the_loop, {}
    if kind == "async":
        async def stuck_awaiting(event: Any, ctx: Any) -> None:
            await anyio.sleep_forever()

        return stuck_awaiting, {}

    def stuck_in_a_thread(event: Any, ctx: Any) -> None:  # one C call: the thread is abandoned
        time.sleep(3600)

    return stuck_in_a_thread, {"to_thread": True}


REPLICA_EVENTS = [cls for cls, spec in EVENTS.items() if spec.where == "replica" and (spec.vetoable or spec.hook)]


@pytest.mark.parametrize("kind", ["sync", "async", "thread"])
@pytest.mark.parametrize("event", REPLICA_EVENTS, ids=lambda e: e.__name__)
async def test_a_handler_that_never_returns_fails_the_init_at_its_bound_naming_it(event: Any, kind: str) -> None:
    config = parse_config({"model_id": "m", "init_timeout_s": 1})
    handler, options = _stuck(kind)
    bus, failed = EventBus(), []
    bus.subscribe(event, handler, **options)
    bus.subscribe(InitFailed, lambda e, c: failed.append(e))
    start = time.monotonic()
    with pytest.raises(PhaseError, match="init_timeout_s") as info:
        await initialize_node(config, bus=bus)
    took = time.monotonic() - start
    bounds = Bounds.of(config)
    assert took < bounds.init_s + bounds.slack_s, f"the bound fired late: {took:.1f}s"
    assert info.value.phase == EVENTS[event].phase
    assert handler.__qualname__ in str(info.value) and event.__name__ in str(info.value)
    assert len(failed) == 1 and failed[0].phase == EVENTS[event].phase


async def test_an_init_within_its_bound_is_not_touched() -> None:
    config = parse_config({"model_id": "m", "init_timeout_s": 5})
    result = await initialize_node(config)
    await anyio.sleep(0)
    assert result.engine is None


@pytest.mark.reliability
async def test_nothing_is_raised_into_the_callers_loop_after_the_init_returned() -> None:
    """The loop took the watchdog's cancel, but the init winds down for longer than two grace periods
    (a handler shielding its cleanup): no interrupt may land in the caller's code, then or later."""
    config = parse_config({"model_id": "m", "init_timeout_s": 1})
    bus = EventBus()

    @bus.on(BeforeInit)
    async def winds_down_slowly(event: BeforeInit, ctx: Any) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(11)

    ticks: list[float] = []

    async def caller_work() -> None:  # the caller's own code, sharing the loop with the init
        while True:
            ticks.append(time.monotonic())
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller_work)
        with pytest.raises(PhaseError, match="init_timeout_s"):
            await initialize_node(config, bus=bus)
        returned = time.monotonic()
        await anyio.sleep(12)
        tg.cancel_scope.cancel()
    assert ticks[-1] - returned > 11.5  # the caller's task ran to the end
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 2.0
