"""What the HTTP sources (GCS, Azure, the Hugging Face Hub) share: a urllib3 pool, its errors and an
answer's status as ours."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ._retry import Transient, retry_after
from ._source import STREAM_CHUNK


class HttpClient:
    """A urllib3 pool with two bounds: a call within ``request_timeout_s`` (connecting within
    ``connect_s``), and one read of a streamed body within ``read_timeout_s`` (a connection silent
    that long is dropped: the range is read again from where it stopped). urllib3 retries nothing
    (``retries=False``): every retry is :func:`~node_init.download._retry.with_retries`'.

    Args:
        request_timeout_s: Bound on a call.
        connect_s: Bound on opening a connection.
        read_timeout_s: Bound on one read of a streamed body.
    """

    def __init__(self, *, request_timeout_s: float, connect_s: float, read_timeout_s: float | None = None) -> None:
        import urllib3

        timeout = urllib3.Timeout(connect=connect_s, read=request_timeout_s)
        self._pool = urllib3.PoolManager(maxsize=32, timeout=timeout, retries=False)
        self._read_timeout = urllib3.Timeout(connect=connect_s, read=read_timeout_s or request_timeout_s)
        self._errors = urllib3.exceptions.HTTPError

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        """urllib3's errors become ours where they enter: a connection that fails is transient."""
        try:
            return self._pool.request(method, url, **kwargs)
        except self._errors as exc:
            raise Transient(f"{type(exc).__name__}: {exc}") from exc

    def open_stream(self, url: str, headers: dict[str, str], fields: dict[str, str] | None = None) -> Any:
        """A GET whose body is read as it arrives (:meth:`body`)."""
        return self.request("GET", url, headers=headers, fields=fields, preload_content=False,
                            timeout=self._read_timeout, redirect=True)

    def body(self, response: Any, key: str) -> Iterator[bytes]:
        """``response``'s body as it arrives; a reset or a read timeout mid-body is transient (the
        caller's retry continues from the byte where it stopped). The connection goes back to the pool."""
        try:
            yield from response.stream(STREAM_CHUNK)
        except self._errors as exc:
            raise Transient(f"{key}: {type(exc).__name__}: {exc}") from exc
        finally:
            response.release_conn()


def check_status(response: Any, what: str, *, denied: str, missing: str, code_header: str = "",
                 refused: Callable[[int, str], bool] = lambda status, code: status in (401, 403)) -> None:
    """An answer's status as our errors, for every HTTP source: 2xx passes; 429 and 5xx are
    :class:`~node_init.download._retry.Transient` (with the ``Retry-After`` asked for); a refusal
    (401, 403, or what ``refused(status, code)`` says) is a ``PermissionError`` starting with
    ``denied``; 404 a ``FileNotFoundError`` starting with ``missing``; any other a ``ValueError``.

    Args:
        response: A urllib3 response (its connection goes back to the pool on an error).
        what: The call, for the messages (``listing``, a file's key).
        denied: The refusal's words (whose access, to what).
        missing: A 404's words.
        code_header: The header holding the store's error code (``x-ms-error-code``), if it has one;
            else the first 200 characters of the body go in the message.
        refused: Which statuses (and codes) are a refusal.
    """
    status = int(response.status)
    if status < 300:
        return
    if code_header:
        code = str(response.headers.get(code_header, ""))
    else:
        code = response.data[:300].decode(errors="replace").strip()[:200] if not response.closed else ""
    response.release_conn()
    said = f"status {status} {code}".strip() if code_header else f"status {status}"
    if refused(status, code):
        raise PermissionError(f"{denied} ({said})")
    if status == 404:
        raise FileNotFoundError(f"{missing} ({said})")
    if status == 429 or status >= 500:
        raise Transient(f"{what}: status {status}", retry_after=retry_after(response.headers))
    raise ValueError(f"{what}: status {status}" + (f": {code}" if code else ""))
