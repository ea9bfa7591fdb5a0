"""What the HTTP sources (GCS, Azure, the Hugging Face Hub) share: a urllib3 pool, its errors as ours."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ._retry import Transient
from ._sources import STREAM_CHUNK


class HttpClient:
    """A urllib3 pool with two bounds: a call (and connecting) within ``request_timeout_s``, and one read
    of a streamed body within ``read_timeout_s`` (a connection silent that long is dropped: the range
    is read again from where it stopped).

    Args:
        request_timeout_s: Bound on a call and on connecting.
        read_timeout_s: Bound on one read of a streamed body.
    """

    def __init__(self, *, request_timeout_s: float, read_timeout_s: float | None = None) -> None:
        import urllib3

        timeout = urllib3.Timeout(connect=min(10.0, request_timeout_s), read=request_timeout_s)
        self._pool = urllib3.PoolManager(maxsize=32, timeout=timeout, retries=False)
        self._read_timeout = urllib3.Timeout(connect=min(10.0, request_timeout_s),
                                             read=read_timeout_s or request_timeout_s)
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
