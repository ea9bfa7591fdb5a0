"""EventBus semantics, on asyncio and trio."""

from __future__ import annotations

import pickle
import threading
import time

import anyio
import anyio.to_thread
import pytest
import structlog.testing

from eventbus import Event, EventBus, EventBusError, HandlerError, HandlerSet, HandlerTimeout

pytestmark = pytest.mark.anyio


class Base(Event, frozen=True, kw_only=True):
    n: int = 0


class Child(Base, frozen=True, kw_only=True):
    pass


class Other(Event, frozen=True, kw_only=True):
    pass


async def test_sync_and_async_handlers_share_ctx_in_priority_then_registration_order() -> None:
    bus = EventBus()
    seen: list[str] = []

    @bus.on(Base)
    def a(event: Base, ctx: list[str]) -> None:
        ctx.append("a")

    @bus.on(Base, priority=5)
    async def b(event: Base, ctx: list[str]) -> None:
        await anyio.sleep(0)
        ctx.append("b")

    @bus.on(Base)
    async def c(event: Base, ctx: list[str]) -> None:
        ctx.append("c")

    @bus.on(Base, priority=-1)
    def d(event: Base, ctx: list[str]) -> None:
        ctx.append("d")

    outcome = await bus.publish(Base(), seen)
    assert seen == ["b", "a", "c", "d"]
    assert not outcome.vetoed and outcome.ok
    assert [s.handler for s in bus.subscribers(Base)] == [b, a, c, d]


async def test_dispatch_follows_mro_and_ctx_may_be_none() -> None:
    bus = EventBus()
    got: list[tuple[str, type[Event], object]] = []
    bus.subscribe(Event, lambda e, c: got.append(("any", type(e), c)))
    bus.subscribe(Base, lambda e, c: got.append(("base", type(e), c)))
    bus.subscribe(Child, lambda e, c: got.append(("child", type(e), c)))
    await bus.publish(Child())
    await bus.publish(Base())
    await bus.publish(Other())
    assert got == [
        ("any", Child, None), ("base", Child, None), ("child", Child, None),
        ("any", Base, None), ("base", Base, None),
        ("any", Other, None),
    ]


async def test_veto_runs_every_handler_and_names_vetoers() -> None:
    bus = EventBus()
    ran: list[str] = []

    def no(event: Event, ctx: object) -> bool:
        ran.append("no")
        return False

    async def yes(event: Event, ctx: object) -> bool:
        ran.append("yes")
        return True

    def no_again(event: Event, ctx: object) -> bool:
        ran.append("no_again")
        return False

    for h in (no, yes, no_again):
        bus.subscribe(Base, h)
    with structlog.testing.capture_logs() as logs:
        outcome = await bus.publish(Base())
    assert ran == ["no", "yes", "no_again"]
    assert outcome.vetoed
    assert outcome.vetoed_by == (f"{__name__}.{no.__qualname__}", f"{__name__}.{no_again.__qualname__}")
    veto_logs = [entry for entry in logs if entry["event"] == "vetoed"]
    assert veto_logs and veto_logs[0]["event_type"] == "Base"
    assert veto_logs[0]["vetoed_by"] == list(outcome.vetoed_by)


async def test_no_subscriber_returns_shared_nothing_outcome() -> None:
    bus = EventBus()
    first = await bus.publish(Base())
    bus.subscribe(Other, lambda e, c: None)
    second = await bus.publish(Base())
    assert first is second and not first.vetoed and first.errors == ()


async def test_raise_policy_wraps_the_error_and_stops() -> None:
    bus = EventBus()
    after: list[int] = []

    def boom(event: Event, ctx: object) -> None:
        raise ValueError("bad thing")

    bus.subscribe(Base, boom)
    bus.subscribe(Base, lambda e, c: after.append(1))
    with pytest.raises(HandlerError) as info:
        await bus.publish(Base(n=3))
    err = info.value
    assert err.handler == f"{__name__}.{boom.__qualname__}"
    assert err.event == Base(n=3)
    assert isinstance(err.__cause__, ValueError)
    assert "boom" in str(err) and "Base" in str(err)
    assert after == []


async def test_log_policy_records_and_goes_on() -> None:
    bus = EventBus()
    after: list[int] = []

    async def boom(event: Event, ctx: object) -> None:
        raise KeyError("k")

    bus.subscribe(Base, boom, on_error="log")
    bus.subscribe(Base, lambda e, c: after.append(1))
    with structlog.testing.capture_logs() as logs:
        outcome = await bus.publish(Base())
    assert after == [1]
    assert len(outcome.errors) == 1 and isinstance(outcome.errors[0].__cause__, KeyError)
    assert not outcome.ok
    failed = [entry for entry in logs if entry["event"] == "handler failed"]
    assert failed[0]["handler"].endswith("boom") and failed[0]["event_type"] == "Base"


@pytest.mark.parametrize("policy", ["raise", "log"])
async def test_bad_return_value_is_an_error_under_the_policy(policy: str) -> None:
    bus = EventBus()
    bus.subscribe(Base, lambda e, c: "yes", on_error=policy)  # type: ignore[arg-type]
    if policy == "raise":
        with pytest.raises(HandlerError, match="returned 'yes'") as info:
            await bus.publish(Base())
        assert isinstance(info.value.__cause__, TypeError)
    else:
        outcome = await bus.publish(Base())
        assert "returned 'yes'" in str(outcome.errors[0])


async def test_async_timeout_raises_handler_timeout_unwrapped() -> None:
    bus = EventBus()

    async def slow(event: Event, ctx: object) -> None:
        await anyio.sleep(10)

    bus.subscribe(Base, slow, timeout=0.05)
    start = time.monotonic()
    with pytest.raises(HandlerTimeout) as info:
        await bus.publish(Base())
    assert time.monotonic() - start < 2
    assert info.value.handler.endswith("slow") and info.value.__cause__ is None


async def test_thread_timeout_abandons_the_thread_and_logs() -> None:
    bus = EventBus()
    release = threading.Event()

    def blocking(event: Event, ctx: object) -> None:
        release.wait(5)

    bus.subscribe(Base, blocking, timeout=0.05, to_thread=True, on_error="log")
    outcome = await bus.publish(Base())
    release.set()
    assert isinstance(outcome.errors[0], HandlerTimeout)


async def test_to_thread_runs_off_the_loop_thread() -> None:
    bus = EventBus()
    threads: list[int] = []
    bus.subscribe(Base, lambda e, c: threads.append(threading.get_ident()), to_thread=True)
    await bus.publish(Base())
    assert threads and threads[0] != threading.get_ident()


async def test_cancellation_propagates_even_under_log_policy() -> None:
    bus = EventBus()
    after: list[int] = []

    async def hangs(event: Event, ctx: object) -> None:
        await anyio.sleep(10)

    bus.subscribe(Base, hangs, on_error="log")
    bus.subscribe(Base, lambda e, c: after.append(1))
    with anyio.move_on_after(0.05) as scope:
        await bus.publish(Base())
    assert scope.cancelled_caught and after == []


async def test_subscribe_and_cancel_during_publish_affect_next_publish_only() -> None:
    bus = EventBus()
    seen: list[str] = []
    late_sub = []

    def first(event: Event, ctx: object) -> None:
        seen.append("first")
        if not late_sub:
            late_sub.append(bus.subscribe(Base, lambda e, c: seen.append("late")))
        second_sub.cancel()

    bus.subscribe(Base, first)
    second_sub = bus.subscribe(Base, lambda e, c: seen.append("second"))
    await bus.publish(Base())
    assert seen == ["first", "second"]
    seen.clear()
    await bus.publish(Base())
    assert seen == ["first", "late"]
    assert not second_sub.active
    second_sub.cancel()  # idempotent


async def test_reentrant_publish_does_not_deadlock() -> None:
    bus = EventBus()
    seen: list[str] = []

    @bus.on(Base)
    async def outer(event: Base, ctx: object) -> None:
        seen.append("outer")
        await bus.publish(Other())

    @bus.on(Other)
    def inner(event: Other, ctx: object) -> None:
        seen.append("inner")

    with anyio.fail_after(5):
        await bus.publish(Base())
    assert seen == ["outer", "inner"]


async def test_publish_sync_on_the_loop_thread_raises() -> None:
    bus = EventBus()
    with pytest.raises(EventBusError, match="await bus.publish"):
        bus.publish_sync(Base())


async def test_publish_sync_from_a_worker_thread_runs_on_the_loop() -> None:
    bus = EventBus()
    where: list[int] = []

    async def h(event: Event, ctx: object) -> bool:
        where.append(threading.get_ident())
        return False

    bus.subscribe(Base, h)
    outcome = await anyio.to_thread.run_sync(bus.publish_sync, Base())
    assert outcome.vetoed and where == [threading.get_ident()]


def test_publish_sync_without_a_loop_runs_its_own() -> None:
    bus = EventBus()

    async def h(event: Event, ctx: list[int]) -> None:
        await anyio.sleep(0)
        ctx.append(1)

    bus.subscribe(Base, h)
    got: list[int] = []
    assert bus.publish_sync(Base(), got).ok and got == [1]
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(bus.publish_sync(Base(), got)))
    t.start()
    t.join(10)
    assert got == [1, 1] and result


def test_bad_subscriptions_raise_type_error_naming_the_handler() -> None:
    bus = EventBus()

    def one_arg(event: Event) -> None: ...

    def ok(event: Event, ctx: object) -> None: ...

    async def aok(event: Event, ctx: object) -> None: ...

    with pytest.raises(TypeError, match="one_arg"):
        bus.subscribe(Base, one_arg)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not callable"):
        bus.subscribe(Base, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ok.*Event subclass"):
        bus.subscribe(int, ok)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs to_thread"):
        bus.subscribe(Base, ok, timeout=1)
    with pytest.raises(TypeError, match="sync handler"):
        bus.subscribe(Base, aok, to_thread=True)
    with pytest.raises(ValueError, match="on_error"):
        bus.subscribe(Base, ok, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        bus.subscribe(Base, aok, timeout=0)
    assert bus.subscribers(Base) == ()


async def test_handler_set_included_in_order_and_validated_early() -> None:
    hs = HandlerSet()
    seen: list[str] = []

    @hs.on(Base)
    def a(event: Event, ctx: list[str]) -> None:
        ctx.append("a")

    @hs.on(Base, priority=1)
    async def b(event: Event, ctx: list[str]) -> None:
        ctx.append("b")

    with pytest.raises(TypeError, match="bad"):

        @hs.on(Base)
        def bad(event: Event) -> None: ...

    bus = EventBus()
    subs = bus.include(hs)
    assert [s.handler for s in subs] == [a, b] and len(hs) == 2
    await bus.publish(Base(), seen)
    assert seen == ["b", "a"]


async def test_callable_objects_and_async_call_are_detected() -> None:
    class Sync:
        def __call__(self, event: Event, ctx: list[str]) -> None:
            ctx.append("sync")

    class Async:
        async def __call__(self, event: Event, ctx: list[str]) -> None:
            ctx.append("async")

    bus = EventBus()
    s1, s2 = bus.subscribe(Base, Sync()), bus.subscribe(Base, Async())
    assert (s1.is_async, s2.is_async) == (False, True)
    seen: list[str] = []
    await bus.publish(Base(), seen)
    assert seen == ["sync", "async"]


def test_handler_errors_pickle_intact() -> None:
    err = HandlerTimeout("m.h", Base(n=2), "timed out after 1s")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is HandlerTimeout and back.handler == "m.h" and back.event == Base(n=2)
    assert str(back) == str(err)


def test_an_abandoned_hung_thread_does_not_keep_the_process_alive() -> None:
    import subprocess
    import sys

    code = (
        "import time\n"
        "from eventbus import Event, EventBus, HandlerTimeout\n"
        "bus = EventBus()\n"
        "bus.subscribe(Event, lambda e, c: time.sleep(3600), timeout=0.2, to_thread=True)\n"
        "try:\n"
        "    bus.publish_sync(Event())\n"
        "except HandlerTimeout:\n"
        "    print('timed out')\n"
    )
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "timed out" and out.returncode == 0
    assert time.monotonic() - start < 10
