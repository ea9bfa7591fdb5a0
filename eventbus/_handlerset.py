"""A module-level collection of handlers, included into a bus by import path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ._event import Event
from ._subscription import validate
from .typing import Handler, OnError

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
        self._entries: list[tuple[type[Event], Handler, dict[str, Any]]] = []

    def on(
        self,
        event_type: type[Event],
        *,
        priority: int = 0,
        timeout: float | None = None,
        on_error: OnError = "raise",
        to_thread: bool = False,
    ) -> Callable[[H], H]:
        """Decorator: add a handler, with the options of :meth:`EventBus.subscribe`."""

        def decorate(handler: H) -> H:
            self.add(
                event_type, handler, priority=priority, timeout=timeout,
                on_error=on_error, to_thread=to_thread,
            )
            return handler

        return decorate

    def add(
        self,
        event_type: type[Event],
        handler: Handler,
        *,
        priority: int = 0,
        timeout: float | None = None,
        on_error: OnError = "raise",
        to_thread: bool = False,
    ) -> None:
        """Add a handler; same arguments and errors as :meth:`EventBus.subscribe`."""
        options: dict[str, Any] = {
            "priority": priority, "timeout": timeout, "on_error": on_error, "to_thread": to_thread,
        }
        validate(event_type, handler, **options)
        self._entries.append((event_type, handler, options))

    @property
    def entries(self) -> tuple[tuple[type[Event], Handler, dict[str, Any]], ...]:
        """``(event_type, handler, options)`` for each handler, in the order added."""
        return tuple(self._entries)

    def __iter__(self) -> Iterator[tuple[type[Event], Handler, dict[str, Any]]]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self._entries)
