"""Build a bus from a config's import paths (cached per process on the nodes)."""

from __future__ import annotations

import threading

import msgspec

from eventbus import EventBus

from ._callback import callback_handlers, get_or_create_callback
from ._config import NodeInitConfig
from ._loader import load_handler_set


def wire(config: NodeInitConfig, bus: EventBus | None = None, *, node_id: str | None = None) -> EventBus:
    """Subscribe the config's callback, then its handler sets, to ``bus`` (a new one if ``None``).

    Raises:
        CallbackLoadError: for an import path that does not load here.
    """
    bus = bus if bus is not None else EventBus()
    callback = get_or_create_callback(config, node_id=node_id)
    sets = [load_handler_set(path, node_id=node_id) for path in config.handlers]  # all load, or none
    if callback is not None:
        bus.include(callback_handlers(callback, timeout=config.callback_timeout_s))
    for handler_set in sets:
        bus.include(handler_set)
    return bus


_node_buses: dict[bytes, EventBus] = {}
_lock = threading.Lock()


def node_bus(config: NodeInitConfig, node_id: str) -> EventBus:
    """The bus of a node's process for ``config``'s import paths, built once per process."""
    key = msgspec.json.encode(
        [config.callback, config.callback_kwargs, config.callback_timeout_s, config.handlers],
        order="sorted",
    )
    with _lock:
        bus = _node_buses.get(key)
        if bus is None:
            bus = _node_buses[key] = wire(config, node_id=node_id)
    return bus
