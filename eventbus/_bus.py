"""The event bus: subscriptions, cached dispatch plans, publish."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

import anyio
import anyio.from_thread
import sniffio

from . import _callers
from ._callers import Plan
from ._errors import EventBusError
from ._event import Event
from ._outcome import Outcome
from ._subscription import Subscription
from .typing import Handler, SubscribeOptions

if TYPE_CHECKING:
    from ._handlerset import HandlerSet

H = TypeVar("H", bound=Callable[..., Any])


class EventBus:
    """An in-process, typed, async event bus on anyio (asyncio or trio).

    Handlers are ``handler(event, ctx)``, sync or async. They return ``None`` or
    ``True`` to go on, or ``False`` to veto; every handler runs either way and
    the returned :class:`Outcome` names who vetoed. Dispatch follows the event's
    MRO; higher ``priority`` runs first, then registration order.

    Example:
        >>> bus = EventBus()
        >>> @bus.on(Event)
        ... def seen(event, ctx):
        ...     ctx.append(event)
        >>> log = []
        >>> bus.publish_sync(Event(), log).vetoed
        False
    """

    def __init__(self) -> None:
        self._subs: dict[type[Event], list[Subscription]] = {}
        self._plans: dict[type, Plan] = {}
        self._seq = itertools.count()
        # Guards the subscriptions and the plan cache; publish takes it only to build a missing plan.
        self._lock = threading.Lock()

    def subscribe(
        self, event_type: type[Event], handler: Handler, **options: Unpack[SubscribeOptions]
    ) -> Subscription:
        """Subscribe ``handler`` to ``event_type`` and its subclasses.

        Args:
            event_type: An :class:`Event` subclass (``Event`` itself sees everything).
            handler: ``handler(event, ctx)``, sync or async.
            **options: :class:`~eventbus.typing.SubscribeOptions`: ``priority`` (higher
                runs first; default 0), ``timeout`` (seconds, then :class:`HandlerTimeout`;
                a sync handler needs ``to_thread=True``), ``on_error`` (``"raise"``, the
                default, or ``"log"``: logged and recorded in :attr:`Outcome.errors`),
                ``to_thread`` (run a blocking sync handler in a worker thread).

        Returns:
            The :class:`Subscription`; ``cancel()`` it to unsubscribe.

        Raises:
            TypeError: For a non-``Event`` type, a non-callable or a handler that
                cannot take ``(event, ctx)``; the message names the handler.
        """
        sub = Subscription(self, event_type, handler, seq=next(self._seq), **options)
        with self._lock:
            self._subs.setdefault(event_type, []).append(sub)
            self._plans = {}  # a running publish keeps its own plan tuple
        return sub

    def on(self, event_type: type[Event], **options: Unpack[SubscribeOptions]) -> Callable[[H], H]:
        """Decorator form of :meth:`subscribe`; returns the function unchanged."""

        def decorate(handler: H) -> H:
            self.subscribe(event_type, handler, **options)
            return handler

        return decorate

    def include(self, handlers: HandlerSet) -> list[Subscription]:
        """Subscribe every handler of a :class:`HandlerSet`, in its order."""
        return [
            self.subscribe(event_type, handler, **options)
            for event_type, handler, options in handlers.entries
        ]

    def subscribers(self, event_type: type[Event]) -> tuple[Subscription, ...]:
        """The active subscriptions an ``event_type`` event reaches, in dispatch order."""
        return tuple(sub for _, _, sub in self._plan(event_type))

    def _plan(self, event_type: type) -> Plan:
        plan = self._plans.get(event_type)
        if plan is None:
            with self._lock:
                subs = [s for base in event_type.__mro__ for s in self._subs.get(base, ())]
                subs.sort(key=lambda s: (-s.priority, s.seq))
                plan = tuple((s._call, s.is_async, s) for s in subs)
                self._plans[event_type] = plan
        return plan

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.event_type, [])
            if sub in subs:
                subs.remove(sub)
            self._plans = {}

    publish = _callers.publish

    def publish_sync(self, event: Event, ctx: object = None) -> Outcome:
        """Publish from synchronous code.

        In a thread with no event loop it runs its own; in a worker thread of a
        running loop (``anyio.to_thread``) it runs the publish on that loop.

        Raises:
            EventBusError: When called on an event loop's own thread, where
                blocking would deadlock; use ``await publish(...)`` there.
        """
        try:
            library = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            library = None
        if library is not None:
            raise EventBusError(
                f"publish_sync({type(event).__name__}) called on the {library} event loop's "
                "thread; use `await bus.publish(...)` there"
            )
        try:
            # Handlers' own exceptions arrive wrapped in HandlerError, so a bare
            # NoEventLoopError can only mean "not an anyio worker thread".
            return anyio.from_thread.run(self.publish, event, ctx)
        except anyio.NoEventLoopError:
            return anyio.run(self.publish, event, ctx)
