"""Public type aliases for handlers, for users who annotate their own code.

Example:
    >>> from eventbus.typing import Handler
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeAlias, TypedDict

#: What a handler may return: ``None``/``True`` go on, ``False`` vetoes.
Verdict: TypeAlias = "bool | None"
#: A sync handler: ``handler(event, ctx)``.
SyncHandler: TypeAlias = Callable[[Any, Any], "bool | None"]
#: An async handler: ``async def handler(event, ctx)``.
AsyncHandler: TypeAlias = Callable[[Any, Any], Awaitable["bool | None"]]
#: Any handler the bus accepts.
Handler: TypeAlias = Callable[[Any, Any], Any]
#: What to do when a handler fails.
OnError: TypeAlias = Literal["raise", "log"]


class SubscribeOptions(TypedDict, total=False):
    """The options of one subscription, taken by ``EventBus.subscribe``/``on`` and ``HandlerSet.on``/``add``.

    Attributes:
        priority: Higher runs first; equal priorities run in registration order (default 0).
        timeout: Seconds the handler may take, or ``None`` (default); a sync handler needs
            ``to_thread=True``.
        on_error: ``"raise"`` (default) stops the publish with a ``HandlerError``; ``"log"``
            logs it and records it in ``Outcome.errors``.
        to_thread: Run a blocking sync handler in a worker thread (default ``False``).
    """

    priority: int
    timeout: float | None
    on_error: OnError
    to_thread: bool


__all__ = ["AsyncHandler", "Handler", "OnError", "SubscribeOptions", "SyncHandler", "Verdict"]
