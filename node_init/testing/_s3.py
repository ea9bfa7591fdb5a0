"""A real S3-compatible endpoint on 127.0.0.1 for tests and benchmarks, and a proxy that injects faults.

- :class:`S3Server`: moto's server over real HTTP. Stock moto re-reads a whole
  object for every ranged GET; here each object's bytes are read once and
  reused, so large models are served at memory speed.
- :class:`FaultProxy`: an HTTP proxy in front of it that caps bandwidth (a
  "link") and injects the faults a real store shows: 5xx and throttling
  answers, connection resets mid-object, truncated bodies, stalls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import msgspec

_patched = False


def _cache_moto_values() -> None:
    """Serve each moto object's bytes from memory after the first read."""
    global _patched
    if _patched:
        return
    from moto.s3.models import FakeKey

    prop: Any = FakeKey.__dict__["value"]
    fget, fset = prop.fget, prop.fset
    assert fget is not None and fset is not None

    def get(self: Any) -> bytes:
        cached = self.__dict__.get("_cached_value")
        if cached is None:
            cached = self.__dict__["_cached_value"] = fget(self)
        return cached  # type: ignore[no-any-return]

    def set_(self: Any, value: bytes) -> None:
        self.__dict__.pop("_cached_value", None)
        fset(self, value)

    FakeKey.value = property(get, set_)  # type: ignore[assignment,method-assign]
    _patched = True


class S3Server:
    """moto's S3 on ``127.0.0.1`` (a free port), started and stopped by the caller.

    Example:
        >>> server = S3Server().start()  # doctest: +SKIP
        >>> server.endpoint  # doctest: +SKIP
        'http://127.0.0.1:40123'
    """

    def __init__(self, port: int = 0) -> None:
        self.port = port  # 0: any free port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    def start(self) -> S3Server:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_request(self, *args: Any, **kwargs: Any) -> None:
                pass

        _cache_moto_values()
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", self.port, app, threaded=True, request_handler=Quiet)
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="s3-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def client(self) -> Any:
        """A boto3 client for this endpoint (for set-up in tests)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def upload_dir(self, local: str | os.PathLike[str], bucket: str, prefix: str) -> dict[str, int]:
        """Upload every file under ``local`` to ``s3://bucket/prefix/...``; return ``{key: size}``."""
        import obstore
        from obstore.store import S3Store

        store = S3Store(bucket, endpoint=self.endpoint, region="us-east-1", access_key_id="testing",
                        secret_access_key="testing", client_options={"allow_http": True},
                        virtual_hosted_style_request=False)
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
        sizes = {}
        root = Path(local)
        for path in sorted(root.rglob("*")):
            if path.is_file():
                key = path.relative_to(root).as_posix()
                obstore.put(store, f"{prefix}/{key}" if prefix else key, path)
                sizes[key] = path.stat().st_size
        return sizes


class Fault(msgspec.Struct, kw_only=True):
    """One fault the proxy injects into the next ``count`` matching requests.

    Attributes:
        kind: ``status`` (answer ``status`` with an S3 error body), ``reset``
            (close the connection after ``after_bytes`` of the body),
            ``truncate`` (announce the full length, send ``after_bytes``, end),
            ``stall`` (send ``after_bytes`` then nothing for ``seconds``),
            ``corrupt`` (flip the byte at ``after_bytes`` of the body, send the rest: a bad disk
            or a broken middlebox, which only a checksum notices), ``headers`` (answer with
            ``headers`` set over the store's own, the body unchanged: e.g. an encryption header).
        match: Substring of the request path (``""`` matches all).
            A body fault (all but ``status`` and ``headers``) goes only to an answer whose stated
            length passes ``after_bytes`` (a file's short last range cannot hold a flip at byte
            999): it waits for the next matching request that can.
        query: Substring the query string must hold (``"list-type"`` picks a LIST).
        method: HTTP method to match.
        count: How many requests it applies to.
    """

    kind: Literal["status", "reset", "truncate", "stall", "corrupt", "headers"]
    match: str = ""
    query: str = ""
    method: str = "GET"
    count: int = 1
    status: int = 503
    after_bytes: int = 0
    seconds: float = 3600.0
    headers: dict[str, str] = {}


_HOP = {"transfer-encoding", "connection", "keep-alive", "content-encoding", "host"}


class FaultProxy:
    """An HTTP proxy to ``upstream`` on ``127.0.0.1``, with a bandwidth cap and injected faults.

    Args:
        upstream: e.g. ``S3Server().endpoint``.
        rate_mb_s: Bytes per second of all responses together, in MB (1e6);
            ``None`` for no cap.
        port: The port on 127.0.0.1 (0: any free one).
    """

    def __init__(self, upstream: str, *, rate_mb_s: float | None = None, port: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = port  # 0: any free port
        self.rate = rate_mb_s * 1e6 if rate_mb_s else None
        self.faults: list[Fault] = []
        self.requests = 0
        self.injected: list[str] = []
        #: The access key id that signed each request ("" for an unsigned one), in order.
        self.signers: list[str] = []
        #: Body bytes sent to clients so far.
        self.bytes_sent = 0
        self.endpoint = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._next = 0.0
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._runner: Any = None

    def add(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.injected.clear()

    def _take(self, request: Any, *, status: bool, length: int | None = None) -> Fault | None:
        # A status fault is taken before the upstream is asked; any other once its answer's length
        # is known, and only by a body that can hold it (a short last range cannot be cut at byte
        # 300,000): the fault then goes to a request it can happen to, whichever comes first.
        with self._lock:
            for fault in self.faults:
                if (fault.count > 0 and (fault.kind == "status") == status and fault.method == request.method
                        and fault.match in request.path and fault.query in request.query_string
                        and (fault.kind in ("status", "headers") or length is None or length > fault.after_bytes)):
                    fault.count -= 1
                    self.injected.append(f"{fault.kind}:{request.path}")
                    return fault
        return None

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._serve, daemon=True, name="fault-proxy")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            self._loop = None

    def _serve(self) -> None:
        from aiohttp import web

        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def setup() -> None:
            import aiohttp

            self._session = aiohttp.ClientSession(auto_decompress=False,
                                                  timeout=aiohttp.ClientTimeout(total=None))
            app = web.Application(client_max_size=1 << 34)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            # Short shutdown: a stalled handler must not hold up stop().
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.endpoint = f"http://127.0.0.1:{port}"

        loop.run_until_complete(setup())
        self._ready.set()
        loop.run_forever()
        # Handlers still stalled past the runner's shutdown timeout: end them, not drop them.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(self._session.close())
        loop.close()

    async def _throttle(self, n: int) -> None:
        if self.rate is None:
            return
        now = time.monotonic()
        self._next = max(self._next, now) + n / self.rate
        delay = self._next - now
        if delay > 0.001:
            await asyncio.sleep(delay)

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        self.requests += 1
        auth = request.headers.get("Authorization", "")
        self.signers.append(auth.split("Credential=", 1)[1].split("/", 1)[0] if "Credential=" in auth else "")
        fault = self._take(request, status=True)
        if fault is not None:
            code = {503: "SlowDown", 403: "AccessDenied", 404: "NoSuchKey"}.get(fault.status, "InternalError")
            body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>"
            return web.Response(status=fault.status, text=body, content_type="application/xml")
        try:
            return await self._forward(request)
        except ConnectionError:
            # The client hung up mid-body (a reset, a stalled read given up): nothing to answer.
            return web.Response(status=499)

    async def _forward(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        # No body, no data: aiohttp would add a Content-Type that a signature (Azure's Shared Key) covers.
        async with self._session.request(request.method, self.upstream + request.path_qs,
                                         headers=headers, data=body or None) as up:
            answer = {k: v for k, v in up.headers.items() if k.lower() not in _HOP}
            fault = self._take(request, status=False, length=up.content_length)
            if fault is not None and fault.kind == "headers":
                answer.update(fault.headers)
            out = web.StreamResponse(status=up.status, headers=answer)
            await out.prepare(request)
            sent = 0
            async for chunk in up.content.iter_chunked(64 * 1024):
                if fault is not None and fault.kind == "corrupt" and sent <= fault.after_bytes < sent + len(chunk):
                    i = fault.after_bytes - sent
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1:]
                elif fault is not None and fault.kind not in ("corrupt", "headers") and \
                        sent + len(chunk) > fault.after_bytes:
                    head = chunk[: max(0, fault.after_bytes - sent)]
                    if head:
                        await out.write(head)
                    if fault.kind == "stall":
                        await asyncio.sleep(fault.seconds)
                    # reset and truncate: drop the connection mid-body.
                    request.transport.close()
                    return out
                await self._throttle(len(chunk))
                await out.write(chunk)
                sent += len(chunk)
                self.bytes_sent += len(chunk)
            await out.write_eof()
            return out


def iter_files(root: Path) -> Iterator[Path]:
    """Every visible file under ``root`` (no dot-files, no dot-directories)."""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            yield path
