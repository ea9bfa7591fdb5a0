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
#: Statuses another try gets the same answer for: bad request, unauthorized, refused, missing,
#: method, length required, range not satisfiable. 408 and 429 (and 5xx) are worth a retry.
FINAL_STATUS = frozenset({400, 401, 403, 404, 405, 411, 416})
_STATUS = re.compile(r"status code: (\d{3})\b")


class Transient(Exception):
    """A read error worth retrying that the client did not type (a short or long read)."""


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a client's error. obstore's exceptions carry none as a field, only in
    their message: it is read here, once, and nowhere else."""
    match = _STATUS.search(str(exc))
    return int(match.group(1)) if match else None


def is_final(exc: BaseException) -> bool:
    """Missing, refused, unauthorized, a bad path, a changed version: another try gets the same answer."""
    from obstore import exceptions as store

    return isinstance(exc, store.NotFoundError | store.PermissionDeniedError | store.UnauthenticatedError
                      | store.InvalidPathError | store.PreconditionError | store.NotSupportedError
                      | NotImplementedError | PermissionError | FileNotFoundError) or http_status(exc) in FINAL_STATUS


def is_transient(exc: BaseException) -> bool:
    """5xx, throttling, resets, timeouts and short reads: yes; missing, refused, unauthorized: no."""
    from obstore import exceptions as store

    if isinstance(exc, Transient | ConnectionError | TimeoutError):
        return True
    if is_final(exc):
        return False
    # obstore's GenericError (and its other errors) cover 5xx, throttling and dropped connections.
    return isinstance(exc, store.BaseError)


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
