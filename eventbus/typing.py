"""Public type aliases for handlers, for users who annotate their own code.

Example:
    >>> from eventbus.typing import Handler
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeAlias

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

__all__ = ["AsyncHandler", "Handler", "OnError", "SyncHandler", "Verdict"]
