"""Which errors are worth another try, and how long to wait before it (every request: LIST and GET)."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

import structlog

from .._errors import describe

_log = structlog.get_logger("node_init.download")
T = TypeVar("T")
_FINAL_STATUS = re.compile(r"status code: 4(00|01|03|04|05|11|16)\b")


class Transient(Exception):
    """A read error worth retrying that the client did not type (a short or long read)."""


def is_transient(exc: BaseException) -> bool:
    """5xx, throttling, resets, timeouts and short reads: yes; missing, refused, unauthorized: no."""
    if isinstance(exc, Transient | ConnectionError | TimeoutError):
        return True
    name = type(exc).__name__
    if name in ("NotFoundError", "PermissionDeniedError", "UnauthenticatedError", "InvalidPathError",
                "PreconditionError", "NotSupportedError", "NotImplementedError"):
        return False
    if _FINAL_STATUS.search(str(exc)):
        return False  # refused, unauthorized or missing: another try gets the same answer
    # obstore's GenericError covers 5xx, throttling and dropped connections.
    return name == "GenericError" or type(exc).__module__.startswith("obstore")


def backoff(attempt: int) -> float:
    """Seconds before retry ``attempt`` (1-based): exponential from 0.2 s, capped at 8 s, with jitter."""
    return float(min(8.0, 0.2 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))


def with_retries(call: Callable[[], T], *, retries: int, what: str, sleep: Callable[[float], None] = time.sleep,
                 **log_fields: object) -> T:
    """``call()``, retried up to ``retries`` times on transient errors (the last error is raised)."""
    attempt = 0
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc) or attempt >= retries:
                raise
            attempt += 1
            delay = backoff(attempt)
            _log.warning(f"retrying {what}", attempt=attempt, delay_s=round(delay, 3), error=describe(exc),
                         **log_fields)
            sleep(delay)
