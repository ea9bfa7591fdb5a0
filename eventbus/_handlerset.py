"""A module-level collection of handlers, included into a bus by import path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar, Unpack

from ._event import Event
from ._subscription import resolve, validate
from .typing import Handler, SubscribeOptions

H = TypeVar("H", bound=Callable[..., Any])


class HandlerSet:
    """Handlers declared at module level, before any bus exists.

    Name it in config by import path (``"my_pkg.hooks:handlers"``); the bus
    that loads it subscribes every handler with :meth:`EventBus.include`.
    Arguments are validated when a handler is added, so a mistake fails at
    import, not at the first publish.

    Example:
        >>> handlers = HandlerSet()
        >>> @handlers.on(Event, priority=10)
        ... def first(event, ctx): ...
        >>> len(handlers)
        1
    """

    def __init__(self) -> None:
        self._entries: list[tuple[type[Event], Handler, SubscribeOptions]] = []

    def on(self, event_type: type[Event], **options: Unpack[SubscribeOptions]) -> Callable[[H], H]:
        """Decorator: add a handler, with the options of :meth:`EventBus.subscribe`."""

        def decorate(handler: H) -> H:
            self.add(event_type, handler, **options)
            return handler

        return decorate

    def add(self, event_type: type[Event], handler: Handler, **options: Unpack[SubscribeOptions]) -> None:
        """Add a handler; same arguments and errors as :meth:`EventBus.subscribe`."""
        resolved = resolve(options)
        validate(event_type, handler, resolved)
        self._entries.append((event_type, handler, resolved))

    @property
    def entries(self) -> tuple[tuple[type[Event], Handler, SubscribeOptions], ...]:
        """``(event_type, handler, options)`` for each handler, in the order added."""
        return tuple(self._entries)

    def __iter__(self) -> Iterator[tuple[type[Event], Handler, SubscribeOptions]]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self._entries)
