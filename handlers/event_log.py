"""Every event as one JSON line (msgspec), for audit and replay.

Config: ``handlers: [handlers.event_log:handlers]``. Lines go to the file named
by ``NODE_INIT_EVENT_LOG`` in the process's environment (appended; ``-`` or
unset means stdout). Each line is ``{"ts", "type", "pid", "event": {...}}``;
:func:`read_events` turns a file back into typed events.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

import node_init
from eventbus import Event, HandlerSet

handlers = HandlerSet()

_lock = threading.Lock()
_encoder = msgspec.json.Encoder()


class LogLine(msgspec.Struct, frozen=True):
    """One line of the event log."""

    ts: float
    type: str
    pid: int
    event: msgspec.Raw


def _write(line: bytes) -> None:
    target = os.environ.get("NODE_INIT_EVENT_LOG", "-")
    with _lock:
        if target == "-":
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
        else:
            with open(target, "ab") as f:
                f.write(line)  # one write per line: whole lines even with several processes


@handlers.on(Event, priority=100_000, on_error="log")
def log_event(event: Event, ctx: object) -> None:
    """Append ``event`` as one JSON line."""
    payload = _encoder.encode(event)
    line = LogLine(ts=time.time(), type=type(event).__name__, pid=os.getpid(), event=msgspec.Raw(payload))
    _write(_encoder.encode(line) + b"\n")


def read_events(path: str | os.PathLike[str], types: dict[str, type[Event]] | None = None) -> Iterator[Any]:
    """Typed events back from an event-log file (unknown types come back as dicts)."""
    known = {**{cls.__name__: cls for cls in node_init.EVENTS}, **(types or {})}  # the registry, as it is now
    for raw in Path(path).read_bytes().splitlines():
        if not raw.strip():
            continue
        line = msgspec.json.decode(raw, type=LogLine)
        cls = known.get(line.type)
        yield msgspec.json.decode(line.event, type=cls) if cls else msgspec.json.decode(line.event)


__all__ = ["LogLine", "handlers", "log_event", "read_events"]
