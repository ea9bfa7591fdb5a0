"""Disk guard: stop a node's download when its free disk is below what it needs plus a margin.

Config (``handlers.disk_guard:handlers`` fails the init; ``handlers.disk_guard:veto`` only skips
that node's download)::

    handlers: [handlers.disk_guard:handlers]
    handler_options: {disk_guard: {margin_mb: 1024}}

Needs the event's ``expected_bytes`` and ``destination``: with stock ``ray.serve.llm`` Ray calls its
hook before it lists files, so use ``OverlappedLLMServer`` there.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import structlog

from eventbus import HandlerSet
from node_init import BeforeDownload

handlers = HandlerSet()
veto = HandlerSet()
_log = structlog.get_logger("handlers.disk_guard")
DEFAULT_MARGIN_MB = 1024


class InsufficientDiskError(OSError):
    """Free disk on a node is below the download's size plus the margin.

    Attributes:
        node_id: The node.
        path: Where the model would be written.
        free_bytes: Free bytes there.
        needed_bytes: ``expected_bytes`` plus the margin.
    """

    def __init__(self, node_id: str, path: str, free_bytes: int, needed_bytes: int) -> None:
        self.node_id, self.path, self.free_bytes, self.needed_bytes = node_id, path, free_bytes, needed_bytes
        super().__init__(
            f"node {node_id}: {free_bytes / 1e6:.0f} MB free at {path}, needs {needed_bytes / 1e6:.0f} MB "
            "(download plus margin)")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.node_id, self.path, self.free_bytes, self.needed_bytes))


def check(event: BeforeDownload, ctx: Any) -> InsufficientDiskError | None:
    """The error this event would raise, or ``None`` when the node has room."""
    if not event.destination or not event.expected_bytes:
        return None
    options = getattr(getattr(ctx, "llm_config", None), "handler_options", {}).get("disk_guard", {})
    margin = int(float(options.get("margin_mb", DEFAULT_MARGIN_MB)) * 1e6)
    path = Path(event.destination)
    while not path.exists() and path != path.parent:
        path = path.parent  # the nearest existing ancestor has the same file system
    free = shutil.disk_usage(path).free
    needed = event.expected_bytes + margin
    return InsufficientDiskError(event.node_id, event.destination, free, needed) if free < needed else None


@handlers.on(BeforeDownload, priority=1000)
def fail_when_full(event: BeforeDownload, ctx: Any) -> None:
    """Fail the init on a node without room (a typed error naming node and numbers)."""
    error = check(event, ctx)
    if error is not None:
        raise error


@veto.on(BeforeDownload, priority=1000)
def skip_when_full(event: BeforeDownload, ctx: Any) -> bool:
    """Veto this node's download when it has no room (the init goes on)."""
    error = check(event, ctx)
    if error is not None:
        _log.warning("download vetoed: not enough disk", node_id=event.node_id, error=str(error))
        return False
    return True


__all__ = ["DEFAULT_MARGIN_MB", "InsufficientDiskError", "check", "fail_when_full", "handlers",
           "skip_when_full", "veto"]
