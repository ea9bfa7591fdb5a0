"""structlog set-up for our CLI and our own Ray tasks (never on import: a user's config stays theirs), and
the CLI's way to keep other programs' output off the terminal."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import structlog

_configured = False
#: Where a node task forwards this process's log lines to (see :func:`forward_logs`), or ``None``.
_sink: Callable[[dict[str, Any]], None] | None = None


def forward_logs(sink: Callable[[dict[str, Any]], None] | None) -> None:
    """Send this process's structlog lines to ``sink`` instead of printing them (``None``: print again).

    A node task forwards its lines (its handlers' included) to the replica, which logs them in its own
    format: one terminal, one format. Only where :func:`configure_logging` configured structlog.
    """
    global _sink
    _sink = sink


def _forward(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    sink = _sink
    if sink is None:
        return event_dict
    line = dict(event_dict)
    exc = line.pop("exc_info", None)
    if exc:
        import traceback

        error = exc if isinstance(exc, BaseException) else sys.exc_info()[1]
        if error is not None:  # no frame locals: only the formatted traceback travels
            line["exception"] = "".join(traceback.format_exception(error)).rstrip()
    line.setdefault("level", method)
    sink(line)
    raise structlog.DropEvent


def configure_logging(*, json: bool | None = None, level: int = logging.INFO, force: bool = False,
                      out: TextIO | None = None) -> None:
    """Console lines for humans on a TTY, JSON lines otherwise; tracebacks without local variables.

    Args:
        json: Force JSON (``True``) or console (``False``); ``None`` picks by TTY.
        level: Minimum level.
        force: Reconfigure even if this process already configured structlog.
        out: Where the lines go (default: ``sys.stderr``).
    """
    global _configured
    if (_configured or structlog.is_configured()) and not force:
        return
    stream = sys.stderr if out is None else out
    use_json = (not stream.isatty()) if json is None else json
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _forward,
    ]
    # Tracebacks never carry frame locals: a local may hold a credential.
    if use_json:
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
        processors += [tracebacks, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=stream.isatty(),
                                                     exception_formatter=structlog.dev.plain_traceback)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    _configured = True


def output_to(path: Path) -> tuple[TextIO, TextIO]:
    """Send everything this process and the processes it starts from now on write to stdout and stderr
    to ``path`` (appended); return the terminal's stdout and stderr, for our own lines.

    At the file-descriptor level, so it covers what no logging set-up reaches: vLLM's EngineCore and
    Ray's processes (children inherit descriptors 1 and 2), C++ code writing to them, Python warnings
    and third-party loggers printing to ``sys.stderr``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # os.dup's copies are not inherited (PEP 446): no child can write to the terminal through them.
    terminal = (os.fdopen(os.dup(1), "w", buffering=1), os.fdopen(os.dup(2), "w", buffering=1))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    return terminal
