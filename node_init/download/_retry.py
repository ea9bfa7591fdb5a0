"""Which errors are worth another try, and how long to wait before it (every request: LIST and GET)."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

import structlog

from .._bounds import BACKOFF_FIRST_S, BACKOFF_MAX_S, RETRY_AFTER_MAX_S
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


def retry_after(headers: object) -> float:
    """The seconds of a response's ``Retry-After`` (``0`` when absent or a date)."""
    value = str(getattr(headers, "get", lambda _k, _d=None: "")("Retry-After", "") or "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0


def retry_delay(attempt: int, exc: BaseException, wait_s: float) -> float:
    """Seconds before retry ``attempt`` after ``exc``: the backoff, or the wait the server asked for,
    never over ``wait_s`` (:attr:`~node_init.Bounds.retry_wait_s`: a third of the stall bound, so a
    retry that waits is never what fails a download as stalled) nor
    :data:`~node_init._bounds.RETRY_AFTER_MAX_S`."""
    asked = min(RETRY_AFTER_MAX_S, float(getattr(exc, "retry_after", 0.0) or 0.0))
    return min(wait_s, max(backoff(attempt), asked))


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
    """Seconds before retry ``attempt`` (1-based): exponential from ``BACKOFF_FIRST_S``, capped at
    ``BACKOFF_MAX_S``, with jitter."""
    return float(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))


def with_retries(call: Callable[[], T], *, retries: int, wait_s: float, what: str,
                 sleep: Callable[[float], None] = time.sleep, **log_fields: object) -> T:
    """``call()``, retried up to ``retries`` times on transient errors (the last error is raised),
    each retry after :func:`retry_delay` (at most ``wait_s``). The one retry loop of the package:
    listings, API calls, HEADs and the downloader's ranges all go through it."""
    attempt = 0
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc) or attempt >= retries:
                raise
            attempt += 1
            delay = retry_delay(attempt, exc, wait_s)
            _log.warning(f"retrying {what}", attempt=attempt, delay_s=round(delay, 3), error=describe(exc),
                         **log_fields)
            sleep(delay)
