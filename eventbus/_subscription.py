"""One handler's subscription: validated and compiled once, at subscribe time."""

from __future__ import annotations

import functools
import inspect
import threading
import traceback
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Unpack

import anyio
import anyio.to_thread
import structlog

from ._errors import HandlerError, HandlerTimeout, handler_error
from ._event import Event
from .typing import Handler, SubscribeOptions

if TYPE_CHECKING:
    from ._bus import EventBus

_log = structlog.get_logger("eventbus")


class Failure:
    """Returned by a ``"log"`` wrapper in place of raising: the loop records it."""

    __slots__ = ("error",)

    def __init__(self, error: HandlerError) -> None:
        self.error = error


def handler_name(handler: Any) -> str:
    """``module.qualname`` of a handler (functions, methods, partials, callables)."""
    target = handler
    while isinstance(target, functools.partial):
        target = target.func
    module = getattr(target, "__module__", None) or "?"
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{qualname}"


def is_async_handler(handler: Any) -> bool:
    """Whether calling ``handler`` returns an awaitable (async def or async ``__call__``)."""
    target = handler
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.iscoroutinefunction(target):
        return True
    call = getattr(target, "__call__", None)  # noqa: B004 - instances with async __call__
    return not inspect.isroutine(target) and inspect.iscoroutinefunction(call)


#: Every option's default (see :class:`~eventbus.typing.SubscribeOptions`).
#: A thread handler with no timeout is waited for in slices this long, so a cancel is taken at once.
_POLL_S = 1.0
DEFAULTS: SubscribeOptions = {"priority": 0, "timeout": None, "on_error": "raise", "to_thread": False}


def resolve(options: Mapping[str, Any]) -> SubscribeOptions:
    """``options`` over the defaults, every key present.

    Raises:
        TypeError: for an option that does not exist.
    """
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unexpected subscription option(s) {sorted(unknown)}; expected {sorted(DEFAULTS)}")
    return {**DEFAULTS, **options}  # type: ignore[typeddict-item]


def validate(event_type: Any, handler: Any, options: SubscribeOptions) -> bool:
    """Check a subscription's arguments (``options`` resolved) and return whether the handler is async.

    Raises:
        TypeError: naming the handler, for a non-``Event`` type, a non-callable,
            a handler that cannot take ``(event, ctx)``, or a timeout on a sync
            handler that would run on the loop.
        ValueError: for a bad ``on_error``, ``timeout`` or ``priority``.
    """
    priority, timeout = options["priority"], options["timeout"]
    on_error, to_thread = options["on_error"], options["to_thread"]
    name = handler_name(handler)
    if not (isinstance(event_type, type) and issubclass(event_type, Event)):
        raise TypeError(f"{name}: event_type must be an Event subclass, got {event_type!r}")
    if not callable(handler):
        raise TypeError(f"handler {handler!r} is not callable")
    try:
        inspect.signature(handler).bind(None, None)
    except TypeError:
        raise TypeError(f"handler {name} must accept (event, ctx)") from None
    except ValueError:
        pass  # some builtins have no signature: trust them
    if on_error not in ("raise", "log"):
        raise ValueError(f"{name}: on_error must be 'raise' or 'log', got {on_error!r}")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"{name}: priority must be an int, got {priority!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"{name}: timeout must be > 0, got {timeout!r}")
    is_async = is_async_handler(handler)
    if is_async and to_thread:
        raise TypeError(f"{name}: to_thread=True needs a sync handler")
    if timeout is not None and not is_async and not to_thread:
        # A blocked loop cannot time anything out.
        raise TypeError(f"{name}: a timeout on a sync handler needs to_thread=True")
    return is_async


class Subscription:
    """A handler subscribed to one event type.

    Created by :meth:`EventBus.subscribe`; :meth:`cancel` removes it (from the
    next publish on).

    Attributes:
        event_type: The event class subscribed to (subclasses are delivered too).
        handler: The handler as given.
        name: The handler's ``module.qualname``, as used in outcomes and errors.
        priority: Higher runs first.
        timeout: Seconds, or ``None``.
        on_error: ``"raise"`` or ``"log"``.
        to_thread: Whether the handler runs in a worker thread.
        is_async: Whether the handler is awaited.
    """

    __slots__ = (
        "_bus", "_call", "event_type", "handler", "is_async", "name", "on_error",
        "priority", "seq", "timeout", "to_thread",
    )

    def __init__(
        self,
        bus: EventBus | None,
        event_type: type[Event],
        handler: Handler,
        *,
        seq: int = 0,
        **options: Unpack[SubscribeOptions],
    ) -> None:
        opts = resolve(options)
        is_async = validate(event_type, handler, opts)
        self._bus = bus
        self.event_type = event_type
        self.handler = handler
        self.name = handler_name(handler)
        self.priority = opts["priority"]
        self.timeout = opts["timeout"]
        self.on_error = opts["on_error"]
        self.to_thread = opts["to_thread"]
        self.seq = seq
        self._call, self.is_async = self._compile(is_async)

    @property
    def active(self) -> bool:
        """Whether the subscription still receives events."""
        return self._bus is not None

    def cancel(self) -> None:
        """Stop receiving events from the next publish on. Idempotent."""
        bus, self._bus = self._bus, None
        if bus is not None:
            bus._remove(self)

    def _compile(self, is_async: bool) -> tuple[Callable[[Any, Any], Any], bool]:
        """Wrap the handler only for the options that ask for it (zero cost otherwise)."""
        call: Callable[[Any, Any], Any] = self.handler
        if self.to_thread:
            call, is_async = self._in_thread(call), True
        elif is_async and self.timeout is not None:
            call = self._with_timeout(call)
        if self.on_error == "log":
            call = self._logging_async(call) if is_async else self._logging_sync(call)
        return call, is_async

    def _in_thread(self, fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        timeout = self.timeout
        name = self.name

        async def run_in_thread(event: Any, ctx: Any) -> Any:
            # Its own daemon thread, which a timeout or a cancellation abandons: a worker thread of
            # anyio's pool cannot be abandoned by a cancel without keeping the process from exiting.
            done = threading.Event()
            box: list[Any] = []

            def target() -> None:
                try:
                    box.append((True, fn(event, ctx)))
                except BaseException as exc:  # handed back to the publishing task below
                    box.append((False, exc))
                finally:
                    done.set()

            threading.Thread(target=target, name=f"eventbus:{name}", daemon=True).start()
            # Each wait ends within its bound, so abandoning one on cancellation is safe.
            if timeout is not None:
                if not await anyio.to_thread.run_sync(done.wait, timeout, abandon_on_cancel=True):
                    raise self._timeout_error(event)
            else:
                while not await anyio.to_thread.run_sync(done.wait, _POLL_S, abandon_on_cancel=True):
                    pass
            ok, value = box[0]
            if not ok:
                raise value
            return value

        return run_in_thread

    def _with_timeout(self, fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        timeout = self.timeout

        async def run_with_timeout(event: Any, ctx: Any) -> Any:
            with anyio.move_on_after(timeout) as scope:
                return await fn(event, ctx)
            if scope.cancelled_caught:
                raise self._timeout_error(event)
            return None  # pragma: no cover

        return run_with_timeout

    def _timeout_error(self, event: Any) -> HandlerTimeout:
        return HandlerTimeout(self.name, event, f"timed out after {self.timeout}s")

    def _failure(self, event: Any, exc: Exception) -> Failure:
        err = exc if isinstance(exc, HandlerTimeout) else handler_error(self.name, event, exc)
        _log.error(
            "handler failed", event_type=type(event).__name__, handler=self.name,
            # A plain traceback, never frame locals (they may hold credentials), whatever the renderer.
            error=str(err), traceback="".join(traceback.format_exception(exc)),
        )
        return Failure(err)

    def _logging_sync(self, fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def log_errors(event: Any, ctx: Any) -> Any:
            try:
                return fn(event, ctx)
            except Exception as exc:
                return self._failure(event, exc)

        return log_errors

    def _logging_async(self, fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        async def log_errors(event: Any, ctx: Any) -> Any:
            try:
                return await fn(event, ctx)
            except Exception as exc:  # cancellation is a BaseException: it propagates
                return self._failure(event, exc)

        return log_errors

    def __repr__(self) -> str:
        return (
            f"Subscription({self.event_type.__name__}, {self.name}, priority={self.priority}, "
            f"on_error={self.on_error!r}, active={self.active})"
        )
