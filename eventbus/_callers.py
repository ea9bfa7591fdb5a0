"""The whole publish loop: call each handler in order, collect vetoes and errors.

Kept in one place (as pluggy keeps its ``_multicall``) so the hot path can be
read at a glance. Everything that can be decided at subscribe time already was:
a plan is a tuple of ``(call, is_async, subscription)`` where ``call`` is the
bare handler unless its options (timeout, thread, ``"log"``) needed a wrapper.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from ._errors import HandlerError, HandlerTimeout, handler_error
from ._outcome import NOTHING, Outcome
from ._subscription import Failure, Subscription

if TYPE_CHECKING:
    from ._bus import EventBus
    from ._event import Event

_log = structlog.get_logger("eventbus")

Plan = tuple[tuple[Any, bool, Subscription], ...]


async def publish(bus: EventBus, event: Event, ctx: object = None) -> Outcome:
    """Deliver ``event`` (with ``ctx``) to every subscriber, in dispatch order.

    This is :meth:`EventBus.publish` (bound there as the method itself, so a
    publish is one coroutine frame).

    Args:
        event: The event.
        ctx: Any object handlers share and may mutate; ``None`` is fine.

    Returns:
        The :class:`Outcome`: who vetoed, and the errors of ``"log"`` handlers.

    Raises:
        HandlerError: A ``"raise"`` handler failed (``__cause__`` is its error).
        HandlerTimeout: A ``"raise"`` handler timed out.
    """
    plan = bus._plans.get(type(event))
    if plan is None:
        plan = bus._plan(type(event))
    if not plan:
        return NOTHING
    vetoed_by: list[str] | None = None
    errors: list[HandlerError] | None = None
    sub: Subscription | None = None
    try:
        for call, is_async, sub in plan:
            result = (await call(event, ctx)) if is_async else call(event, ctx)
            if result is None or result is True:
                continue
            if result is False:
                if vetoed_by is None:
                    vetoed_by = []
                vetoed_by.append(sub.name)
            elif type(result) is Failure:
                if errors is None:
                    errors = []
                errors.append(result.error)
            else:
                error = bad_return(sub, event, result)
                if errors is None:
                    errors = []
                errors.append(error)
    except HandlerTimeout:
        raise
    except HandlerError as exc:
        if exc.handler == getattr(sub, "name", None) and exc.event is event:
            raise  # our own bad-return error: already names this handler
        raise wrap(sub, event, exc) from exc
    except Exception as exc:
        raise wrap(sub, event, exc) from exc
    if vetoed_by is None and errors is None:
        return NOTHING
    if vetoed_by is not None:
        _log.info("vetoed", event_type=type(event).__name__, vetoed_by=vetoed_by)
    return Outcome(tuple(vetoed_by or ()), tuple(errors or ()))


def wrap(sub: Subscription | None, event: Any, exc: BaseException) -> HandlerError:
    """The :class:`HandlerError` for a handler's exception under ``on_error="raise"``."""
    name = sub.name if sub is not None else "?"
    _log.error("handler failed", event_type=type(event).__name__, handler=name, error=repr(exc))
    return handler_error(name, event, exc)


def bad_return(sub: Subscription, event: Any, result: Any) -> HandlerError:
    """A handler returned neither ``None``, ``True`` nor ``False``: an error under its policy."""
    cause = TypeError(f"handler {sub.name} returned {result!r}; expected None, True or False")
    error = handler_error(sub.name, event, cause, str(cause))
    if sub.on_error == "raise":
        raise error
    _log.error("handler failed", event_type=type(event).__name__, handler=sub.name, error=str(cause))
    return error
