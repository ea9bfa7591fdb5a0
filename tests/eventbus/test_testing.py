"""eventbus.testing: the helpers users test their own handlers with."""

from __future__ import annotations

import doctest

import pytest

import eventbus.testing
from eventbus import Event, EventBus, HandlerSet
from eventbus.testing import Recorder, RecordingBus

pytestmark = pytest.mark.anyio


class Start(Event, frozen=True, kw_only=True):
    n: int = 0


class Stop(Event, frozen=True, kw_only=True):
    pass


hooks = HandlerSet()


@hooks.on(Start)
def count(event: Start, ctx: dict[str, int]) -> bool:
    ctx["count"] = ctx.get("count", 0) + event.n
    return event.n < 10


def test_module_example_runs() -> None:
    result = doctest.testmod(eventbus.testing)
    assert result.attempted > 0 and result.failed == 0


async def test_recorder_sees_events_in_order_with_ctx_snapshots() -> None:
    bus = EventBus()
    bus.include(hooks)
    rec = Recorder.attach(bus)
    ctx: dict[str, int] = {}
    await bus.publish(Start(n=2), ctx)
    await bus.publish(Stop(), ctx)
    await bus.publish(Start(n=3), ctx)
    assert rec.type_names() == ["Start", "Stop", "Start"]
    assert [r.ctx["count"] for r in rec.records] == [2, 2, 5]  # snapshots, not the live dict
    assert rec.of_type(Start) == [Start(n=2), Start(n=3)]
    rec.assert_order(Start, Stop, Start)
    with pytest.raises(AssertionError, match=r"expected \['Stop', 'Stop'\]"):
        rec.assert_order(Stop, Stop)
    with pytest.raises(AssertionError, match="no Stop"):
        Recorder().last(Stop)


async def test_recording_bus_keeps_outcomes_and_before_after() -> None:
    bus = RecordingBus()
    bus.include(hooks)
    ctx: dict[str, int] = {}
    await bus.publish(Start(n=20), ctx)
    record = bus.records[-1]
    assert record.ctx_before == {} and record.ctx == {"count": 20}
    assert bus.outcome_of(Start).vetoed_by == (f"{__name__}.count",)
