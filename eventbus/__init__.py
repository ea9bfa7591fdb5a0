"""A typed, in-process, async event bus on anyio.

Layering: this package knows nothing of Ray or LLMs. ``Event`` is the base of
every (msgspec) event; ``EventBus`` delivers events to handlers subscribed by
type, in priority order, and returns an ``Outcome`` (vetoes and logged errors);
``HandlerSet`` declares handlers at module level so configs can name them by
import path. ``eventbus.typing`` has the handler type aliases and
``eventbus.testing`` helpers for testing your own handlers.
"""

from ._bus import EventBus as EventBus
from ._errors import EventBusError as EventBusError
from ._errors import HandlerError as HandlerError
from ._errors import HandlerTimeout as HandlerTimeout
from ._event import Event as Event
from ._handlerset import HandlerSet as HandlerSet
from ._outcome import Outcome as Outcome
from ._subscription import Subscription as Subscription

__all__ = [
    "Event",
    "EventBus",
    "EventBusError",
    "HandlerError",
    "HandlerSet",
    "HandlerTimeout",
    "Outcome",
    "Subscription",
]
