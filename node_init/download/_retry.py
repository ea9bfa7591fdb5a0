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
    """A read error worth retrying that the client did not type (a short or long read).

    Attributes:
        retry_after: Seconds the server asked to wait (``Retry-After`` of a 429 or 503), else ``0``.
    """

    def __init__(self, message: str, *, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


#: The longest ``Retry-After`` waited out; a longer one is a server saying "not today": the retry
#: comes after this and, if the answer is the same, the error.
MAX_RETRY_AFTER_S = 60.0


def retry_after(headers: object) -> float:
    """The seconds of a response's ``Retry-After`` (``0`` when absent or a date)."""
    value = str(getattr(headers, "get", lambda _k, _d=None: "")("Retry-After", "") or "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0


def retry_delay(attempt: int, exc: BaseException) -> float:
    """Seconds before retry ``attempt`` after ``exc``: the backoff, or the wait the server asked for."""
    asked = min(MAX_RETRY_AFTER_S, float(getattr(exc, "retry_after", 0.0) or 0.0))
    return max(backoff(attempt), asked)


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
            delay = retry_delay(attempt, exc)
            _log.warning(f"retrying {what}", attempt=attempt, delay_s=round(delay, 3), error=describe(exc),
                         **log_fields)
            sleep(delay)
