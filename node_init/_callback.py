"""The class-style callback of the original design, adapted onto the event bus."""

from __future__ import annotations

import inspect
import threading
from typing import Any, Protocol

import msgspec

from eventbus import HandlerSet

from ._config import NodeInitConfig
from ._ctx import CallbackCtx
from ._errors import CallbackLoadError, describe
from ._events import HOOKS
from ._loader import load_callback_class


class RayServeLLMCallback(Protocol):
    """The class-style callback: implement any subset of the three hooks.

    Each hook takes the shared :class:`CallbackCtx`; returning ``False`` from
    ``on_before_init`` or ``on_before_download`` skips that phase's default
    action (see the veto table in docs/events.md). Hooks may be ``async``. Name the
    class by import path in config (``callback``), with ``callback_kwargs``;
    one instance is made per process (:func:`get_or_create_callback`).
    """

    def on_before_init(self, ctx: CallbackCtx) -> bool | None:
        """Called first, in the replica."""

    def on_before_download(self, ctx: CallbackCtx) -> bool | None:
        """Called on each node of the placement group, before its download."""

    def on_after_init(self, ctx: CallbackCtx) -> bool | None:
        """Called in the replica when everything is up."""


_instances: dict[tuple[str, bytes], Any] = {}
_lock = threading.Lock()


def get_or_create_callback(config: NodeInitConfig, *, node_id: str | None = None) -> Any | None:
    """The process's one instance of the config's callback class (per import path and kwargs).

    Returns:
        The instance, or ``None`` when the config names no callback.

    Raises:
        CallbackLoadError: when the class does not load or its constructor fails.
    """
    if config.callback is None:
        return None
    key = (config.callback, msgspec.json.encode(config.callback_kwargs, order="sorted"))
    with _lock:
        instance = _instances.get(key)
        if instance is None:
            cls = load_callback_class(config.callback, config.callback_kwargs, node_id=node_id)
            try:
                instance = cls(**config.callback_kwargs)
            except Exception as exc:
                raise CallbackLoadError(f"constructor raised {describe(exc)}", path=config.callback,
                                        node_id=node_id) from exc
            _instances[key] = instance
    return instance


def callback_handlers(callback: Any, *, timeout: float | None = None) -> HandlerSet:
    """A :class:`HandlerSet` calling ``callback``'s hooks with the ctx.

    With a ``timeout``, sync hooks run in a worker thread (a blocked loop
    cannot time anything out).
    """
    handlers = HandlerSet()
    for hook_name, event_type in HOOKS.items():
        hook = getattr(callback, hook_name, None)
        if hook is None:
            continue
        handlers.add(event_type, _adapt(hook), timeout=timeout,
                     to_thread=timeout is not None and not inspect.iscoroutinefunction(hook))
    return handlers


def _adapt(hook: Any) -> Any:
    """``hook(ctx)`` as a bus handler ``(event, ctx)``, named after the hook for outcomes."""
    if inspect.iscoroutinefunction(hook):

        async def call_async(event: Any, ctx: CallbackCtx) -> Any:
            return await hook(ctx)

        adapted: Any = call_async
    else:

        def call(event: Any, ctx: CallbackCtx) -> Any:
            return hook(ctx)

        adapted = call
    adapted.__module__ = getattr(hook, "__module__", adapted.__module__)
    adapted.__qualname__ = getattr(hook, "__qualname__", adapted.__qualname__)
    return adapted
