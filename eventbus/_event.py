"""The base class of every event."""

from __future__ import annotations

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every event published on an :class:`~eventbus.EventBus`.

    Events are immutable msgspec structs, so they are cheap to build, hashable
    and encode to JSON with ``msgspec.json.encode``. Subclass it with your own
    fields; subscribing to a base class receives every subclass (dispatch walks
    the MRO), so subscribing to ``Event`` itself sees everything.

    Example:
        >>> class Started(Event, frozen=True, kw_only=True):
        ...     name: str
        >>> Started(name="x")
        Started(name='x')
    """
