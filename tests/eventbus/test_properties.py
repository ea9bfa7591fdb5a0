"""Property tests: order, veto, error policy, publish vs publish_sync."""

from __future__ import annotations

from typing import Any

import anyio
import structlog.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from eventbus import Event, EventBus, HandlerError

# Each handler spec: (priority, is_async, verdict, raises, on_error)
specs = st.lists(
    st.tuples(
        st.integers(-3, 3),
        st.booleans(),
        st.sampled_from([None, True, False]),
        st.booleans(),
        st.sampled_from(["raise", "log"]),
    ),
    max_size=8,
)


class Ev(Event, frozen=True, kw_only=True):
    pass


def build(spec: list[tuple[int, bool, Any, bool, str]]) -> tuple[EventBus, list[int]]:
    bus = EventBus()
    calls: list[int] = []
    for i, (prio, is_async, verdict, raises, policy) in enumerate(spec):

        def body(i: int = i, verdict: Any = verdict, raises: bool = raises) -> Any:
            calls.append(i)
            if raises:
                raise RuntimeError(f"h{i}")
            return verdict

        if is_async:

            async def handler(event: Event, ctx: object, body: Any = body) -> Any:
                return body()
        else:

            def handler(event: Event, ctx: object, body: Any = body) -> Any:
                return body()

        handler.__qualname__ = f"h{i}"
        bus.subscribe(Ev, handler, priority=prio, on_error=policy)  # type: ignore[arg-type]
    return bus, calls


def expected(spec: list[tuple[int, bool, Any, bool, str]]) -> tuple[list[int], list[int], list[int], bool]:
    """Model: (called, vetoers, logged errors, raised) by the documented rules."""
    order = sorted(range(len(spec)), key=lambda i: (-spec[i][0], i))
    called: list[int] = []
    vetoers: list[int] = []
    logged: list[int] = []
    for i in order:
        _, _, verdict, raises, policy = spec[i]
        called.append(i)
        if raises:
            if policy == "raise":
                return called, vetoers, logged, True
            logged.append(i)
        elif verdict is False:
            vetoers.append(i)
    return called, vetoers, logged, False


def run(bus: EventBus, use_sync: bool) -> Any:
    with structlog.testing.capture_logs():  # rendering tracebacks would dominate the run
        return _run(bus, use_sync)


def _run(bus: EventBus, use_sync: bool) -> Any:
    try:
        if use_sync:
            return bus.publish_sync(Ev())
        return anyio.run(bus.publish, Ev())
    except HandlerError as exc:
        return exc


@settings(max_examples=150, deadline=None)
@given(specs, st.booleans())
def test_publish_matches_the_model(spec: list[tuple[int, bool, Any, bool, str]], use_sync: bool) -> None:
    bus, calls = build(spec)
    called, vetoers, logged, raised = expected(spec)
    result = run(bus, use_sync)
    assert calls == called
    if raised:
        assert isinstance(result, HandlerError)
        assert result.handler.endswith(f"h{called[-1]}")
    else:
        assert [name.rsplit(".", 1)[-1] for name in result.vetoed_by] == [f"h{i}" for i in vetoers]
        assert [e.handler.rsplit(".", 1)[-1] for e in result.errors] == [f"h{i}" for i in logged]
        assert result.vetoed == bool(vetoers)


@settings(max_examples=60, deadline=None)
@given(specs)
def test_publish_and_publish_sync_agree(spec: list[tuple[int, bool, Any, bool, str]]) -> None:
    bus_a, calls_a = build(spec)
    bus_b, calls_b = build(spec)
    a, b = run(bus_a, False), run(bus_b, True)
    assert calls_a == calls_b
    assert type(a) is type(b)
    if isinstance(a, HandlerError):
        assert a.handler == b.handler
    else:
        assert a.vetoed_by == b.vetoed_by
        assert [e.handler for e in a.errors] == [e.handler for e in b.errors]
