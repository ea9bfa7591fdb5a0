"""The exceptions raised by the event bus."""

from __future__ import annotations

from typing import Any


class EventBusError(Exception):
    """Base of every error the event bus raises itself."""


class HandlerError(EventBusError):
    """A handler failed while an event was published.

    ``__cause__`` is the handler's own exception (or a ``TypeError`` for a
    handler that returned something other than ``None``, ``True`` or ``False``).

    Attributes:
        handler: The handler's ``module.qualname``.
        event: The event being published.
    """

    def __init__(self, handler: str, event: Any, detail: str = "") -> None:
        self.handler = handler
        self.event = event
        self.detail = detail
        msg = f"handler {handler} failed on {type(event).__name__}"
        super().__init__(f"{msg}: {detail}" if detail else msg)

    def __reduce__(self) -> tuple[Any, ...]:
        # Custom __init__ args: without this, unpickling (e.g. across a Ray task) fails.
        return (type(self), (self.handler, self.event, self.detail), self.__dict__)


def handler_error(handler: str, event: Any, cause: BaseException, detail: str | None = None) -> HandlerError:
    """The :class:`HandlerError` for ``handler``'s ``cause`` (set as ``__cause__``).

    ``detail`` defaults to ``"Type: message"`` of the cause.
    """
    error = HandlerError(handler, event, f"{type(cause).__name__}: {cause}" if detail is None else detail)
    error.__cause__ = cause
    return error


class HandlerTimeout(HandlerError):
    """A handler did not finish within its subscription's ``timeout``.

    Raised as is (not wrapped in another :class:`HandlerError`) under
    ``on_error="raise"``. A timed-out thread handler is abandoned, not killed.
    """
