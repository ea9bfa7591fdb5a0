"""Helpers for testing your own handlers: record what a bus published, with ctx snapshots and outcomes.

Example:
    >>> import anyio
    >>> from eventbus import Event, EventBus
    >>> from eventbus.testing import Recorder
    >>> class Ping(Event, frozen=True): ...
    >>> bus = EventBus()
    >>> recorder = Recorder.attach(bus)
    >>> bus.on(Ping)(lambda event, ctx: ctx.update(seen=True))  # doctest: +ELLIPSIS
    <function <lambda> at ...>
    >>> outcome = bus.publish_sync(Ping(), {})
    >>> recorder.events
    [Ping()]
    >>> recorder.last(Ping).ctx
    {'seen': True}
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs

from ._bus import EventBus
from ._event import Event
from ._outcome import Outcome
from ._subscription import Subscription

E = TypeVar("E", bound=Event)


def snapshot(ctx: Any) -> Any:
    """A copy of ``ctx`` that later mutations do not change (attrs, dicts, lists; else a shallow copy).

    Fields that cannot be copied (a placement group, a lock) are kept as they are.
    """
    if ctx is None:
        return None
    if attrs.has(type(ctx)):
        return {f.name: _copy(getattr(ctx, f.name)) for f in attrs.fields(type(ctx))}
    return _copy(ctx)


def _copy(value: Any) -> Any:
    try:
        return copy.deepcopy(value)
    except Exception:  # a field no copy can hold (a placement group, a lock): kept as it is, as documented
        return value


@attrs.frozen
class Record:
    """One published event as a handler saw it.

    Attributes:
        event: The event.
        ctx: Snapshot of ctx: for a :class:`Recorder`, when it ran (see ``priority`` in
            :meth:`Recorder.attach`); for a :class:`RecordingBus`, when the publish returned.
        ctx_before: Snapshot of ctx before the publish (:class:`RecordingBus` only).
        outcome: The publish's outcome (:class:`RecordingBus` only).
    """

    event: Event
    ctx: Any = None
    ctx_before: Any = None
    outcome: Outcome | None = None


class Recorder:
    """Records every event (of ``event_type``) it is subscribed to, with a ctx snapshot.

    Attach it last (``priority=-10**9``, the default) to see what the other
    handlers did, or first (a high priority) to see what they received.
    """

    def __init__(self, event_type: type[Event] = Event, *,
                 snapshot_ctx: Callable[[Any], Any] = snapshot) -> None:
        self.event_type = event_type
        self.records: list[Record] = []
        self._snapshot = snapshot_ctx

    @classmethod
    def attach(cls, bus: EventBus, event_type: type[Event] = Event, *, priority: int = -10**9) -> Recorder:
        """A recorder subscribed to ``bus``."""
        recorder = cls(event_type)
        recorder.subscription = bus.subscribe(event_type, recorder, priority=priority)
        return recorder

    subscription: Subscription | None = None

    def __call__(self, event: Event, ctx: Any) -> None:
        self.records.append(Record(event, ctx=self._snapshot(ctx)))

    @property
    def events(self) -> list[Event]:
        """Every recorded event, in order."""
        return [r.event for r in self.records]

    def of_type(self, event_type: type[E]) -> list[E]:
        """Recorded events of one type (subclasses included)."""
        return [r.event for r in self.records if isinstance(r.event, event_type)]

    def last(self, event_type: type[Event] = Event) -> Record:
        """The last record of ``event_type``.

        Raises:
            AssertionError: when there is none.
        """
        for record in reversed(self.records):
            if isinstance(record.event, event_type):
                return record
        raise AssertionError(f"no {event_type.__name__} was recorded; got {self.type_names()}")

    def type_names(self) -> list[str]:
        return [type(e).__name__ for e in self.events]

    def assert_order(self, *event_types: type[Event]) -> None:
        """Assert that events of these types were recorded in this relative order (others may interleave).

        Raises:
            AssertionError: naming what was expected and what was recorded.
        """
        wanted: Sequence[type[Event]] = event_types
        i = 0
        for event in self.events:
            if i < len(wanted) and isinstance(event, wanted[i]):
                i += 1
        if i < len(wanted):
            raise AssertionError(
                f"expected {[t.__name__ for t in wanted]} in this order; recorded {self.type_names()}")

    def clear(self) -> None:
        self.records.clear()


class RecordingBus(EventBus):
    """An :class:`EventBus` that also records every publish: event, ctx before/after and outcome.

    Use it in place of a bus in tests (``initialize_node(config, bus=RecordingBus())``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: list[Record] = []

    async def publish(self, event: Event, ctx: object = None) -> Outcome:  # type: ignore[override]
        before = snapshot(ctx)
        outcome = await super().publish(event, ctx)
        self.records.append(Record(event, ctx=snapshot(ctx), ctx_before=before, outcome=outcome))
        return outcome

    @property
    def events(self) -> list[Event]:
        return [r.event for r in self.records]

    def outcome_of(self, event_type: type[Event]) -> Outcome:
        """The outcome of the last publish of ``event_type``."""
        for record in reversed(self.records):
            if isinstance(record.event, event_type):
                assert record.outcome is not None
                return record.outcome
        raise AssertionError(f"no {event_type.__name__} was published")


__all__ = ["Record", "Recorder", "RecordingBus", "snapshot"]
