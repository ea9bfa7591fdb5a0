"""The one way tests build a ``NodeInitConfig``: a fresh model id (so a fresh cache directory) each time."""

from __future__ import annotations

import itertools
import os
from typing import Any

from node_init import NodeInitConfig, parse_config

_ids = itertools.count()


def node_config(source: str | dict[str, Any] | None, *, prefix: str = "m", defaults: dict[str, Any] | None = None,
                **over: Any) -> NodeInitConfig:
    """A config for ``source``: ``defaults``, then ``over`` (a mapping merges into a mapping one level deep)."""
    data: dict[str, Any] = {"model_id": f"{prefix}{next(_ids)}-{os.getpid()}", "model_source": source,
                            **(defaults or {})}
    for key, value in over.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) and isinstance(value, dict) else value
    return parse_config(data)
