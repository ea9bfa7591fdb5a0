"""The downloader: fetch a model's files into a node's cache, atomic, locked, resumable, retried, bounded.

See :mod:`node_init.download._cache` for the layout on disk.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import filelock
import msgspec
import structlog

from .._config import DownloadConfig
from .._errors import DownloadError, describe
from ._cache import PARTIAL, Manifest, ManifestEntry, load_manifest, missing, record_rate, write_manifest
from ._sources import RemoteFile, Source, check_key

_log = structlog.get_logger("node_init.download")


class DownloadResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one download did."""

    path: str
    fetched: tuple[str, ...]
    bytes: int
    cached_bytes: int
    seconds: float


class Progress:
    """Thread-safe byte counters the node task reads to stream progress."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.done = 0
        self.total = 0
        self.last_change = time.monotonic()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            self.last_change = time.monotonic()

    def set_total(self, total: int) -> None:
        with self._lock:
            self.total = total
            self.last_change = time.monotonic()


class _Transient(Exception):
    """A read error worth retrying (5xx, throttling, reset, short read)."""


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _Transient | ConnectionError | TimeoutError):
        return True
    name = type(exc).__name__
    if name in ("NotFoundError", "PermissionDeniedError", "UnauthenticatedError", "InvalidPathError"):
        return False
    # obstore's GenericError covers 5xx, throttling and dropped connections.
    return name == "GenericError" or type(exc).__module__.startswith("obstore")


class Downloader:
    """One download of ``files`` from ``source`` into ``dest`` (see the module doc).

    Args:
        source: Where to read.
        dest: The model directory in this node's cache.
        cfg: Bounds, retries, part size, concurrency.
        node_id: For errors and logs.
        progress: Updated as bytes land.
        cancel: Set it to stop; in-flight parts are abandoned and temp files removed.
    """

    def __init__(
        self,
        source: Source,
        dest: Path,
        cfg: DownloadConfig,
        *,
        node_id: str | None = None,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.source = source
        self.dest = dest
        self.cfg = cfg
        self.node_id = node_id
        self.progress = progress or Progress()
        self.cancel = cancel or threading.Event()
        self._sleep = sleep
        self._part = cfg.part_size_mb * 1024 * 1024
        self._inflight: dict[str, int] = {}  # key -> ranges being read, to name a stalled file
        self._inflight_lock = threading.Lock()

    def _error(self, message: str, *, file: str | None = None, cause: BaseException | None = None) -> DownloadError:
        return DownloadError(message, node_id=self.node_id, source=self.source.uri, file=file,
                             cause=describe(cause) if cause else "")

    def run(self, files: list[RemoteFile]) -> DownloadResult:
        """Download what is missing of ``files``, holding the node's lock for this model.

        Raises:
            DownloadError: naming node, source and file, after retries, on a
                timeout or stall, on a refused key, or when the lock wait expires.
        """
        start = time.monotonic()
        for f in files:
            check_key(f.key)
        lock_dir = self.dest.parent / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(lock_dir / f"{self.dest.name}.lock"))
        try:
            lock.acquire(timeout=self.cfg.lock_timeout_s)
        except filelock.Timeout:
            raise self._error(
                f"another process held the download lock for over {self.cfg.lock_timeout_s}s"
            ) from None
        try:
            return self._locked_run(files, start)
        finally:
            lock.release()

    def _locked_run(self, files: list[RemoteFile], start: float) -> DownloadResult:
        dest = self.dest
        dest.mkdir(parents=True, exist_ok=True)
        # Leftovers of a killed downloader: we hold the lock, so nobody is writing them.
        shutil.rmtree(dest / PARTIAL, ignore_errors=True)
        (dest / PARTIAL).mkdir()
        manifest = load_manifest(dest, self.source.uri)
        todo = missing(dest, manifest, files)
        cached_bytes = sum(f.size for f in files) - sum(f.size for f in todo)
        self.progress.set_total(sum(f.size for f in todo))
        if todo:
            _log.info("download starting", node_id=self.node_id, source=self.source.uri,
                      files=len(todo), bytes=self.progress.total, cached_bytes=cached_bytes)
            self._fetch_all(todo, manifest)
        with contextlib.suppress(OSError):
            (dest / PARTIAL).rmdir()
        seconds = time.monotonic() - start
        if self.progress.total >= 8 * 1024 * 1024 and seconds > 0:
            record_rate(dest.parent, self.source.uri, self.progress.total / 1e6 / seconds)
        _log.info("download finished", node_id=self.node_id, files=len(todo),
                  bytes=self.progress.total, seconds=round(seconds, 3))
        return DownloadResult(path=str(dest), fetched=tuple(f.key for f in todo),
                              bytes=self.progress.total, cached_bytes=cached_bytes, seconds=seconds)

    def _fetch_all(self, todo: list[RemoteFile], manifest: Manifest) -> None:
        mlock = threading.Lock()
        pool = cf.ThreadPoolExecutor(self.cfg.concurrency, thread_name_prefix="node-init-dl")
        temps: list[Path] = []
        futures: list[cf.Future[None]] = []
        try:
            for f in todo:
                tmp = self.dest / PARTIAL / f"{f.key.replace('/', '%2F')}.{os.getpid()}"
                temps.append(tmp)
                ranges = [(s, min(s + self._part, f.size)) for s in range(0, f.size, self._part)] or [(0, 0)]
                state = _FileState(f, tmp, len(ranges))
                try:
                    with open(tmp, "wb") as out:
                        out.truncate(f.size)  # sized up front: ranges land with pwrite
                except OSError as exc:
                    raise self._error(f"cannot write to the cache: {describe(exc)}", file=f.key,
                                      cause=exc) from exc
                for lo, hi in ranges:
                    futures.append(pool.submit(self._fetch_range, state, lo, hi, manifest, mlock))
            self._wait(futures)
        except BaseException:
            self.cancel.set()
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            if self.cancel.is_set():
                for tmp in temps:
                    with contextlib.suppress(OSError):
                        tmp.unlink()

    def _wait(self, futures: list[cf.Future[None]]) -> None:
        deadline = time.monotonic() + self.cfg.timeout_s
        pending = set(futures)
        while pending:
            done, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_EXCEPTION)
            for fut in done:
                if fut.exception() is not None:
                    self.cancel.set()
                    raise fut.exception()  # type: ignore[misc]
            now = time.monotonic()
            if self.cancel.is_set() and pending:
                raise self._error("cancelled")
            if now > deadline:
                self.cancel.set()
                raise self._error(f"timed out after {self.cfg.timeout_s}s "
                                  f"({self.progress.done}/{self.progress.total} bytes)")
            if now - self.progress.last_change > self.cfg.stall_timeout_s:
                self.cancel.set()
                with self._inflight_lock:
                    stalled = sorted(k for k, n in self._inflight.items() if n)
                raise self._error(f"stalled: no bytes for {self.cfg.stall_timeout_s}s "
                                  f"({self.progress.done}/{self.progress.total} bytes)",
                                  file=", ".join(stalled) or None)

    def _fetch_range(self, state: _FileState, lo: int, hi: int, manifest: Manifest,
                     mlock: threading.Lock) -> None:
        key = state.file.key
        with self._inflight_lock:
            self._inflight[key] = self._inflight.get(key, 0) + 1
        try:
            self._fetch_range_once(state, lo, hi, manifest, mlock)
        finally:
            with self._inflight_lock:
                self._inflight[key] -= 1

    def _fetch_range_once(self, state: _FileState, lo: int, hi: int, manifest: Manifest,
                          mlock: threading.Lock) -> None:
        key = state.file.key
        attempt = 0
        while True:
            if self.cancel.is_set():
                return
            try:
                data = self.source.read(key, lo, hi)
                if len(data) != hi - lo:
                    raise _Transient(f"short read: {len(data)} of {hi - lo} bytes at offset {lo}")
                break
            except Exception as exc:
                if not _is_transient(exc) or attempt >= self.cfg.retries:
                    raise self._error(f"read failed after {attempt + 1} attempt(s): {describe(exc)}",
                                      file=key, cause=exc) from exc
                attempt += 1
                delay = min(8.0, 0.2 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                _log.warning("retrying read", node_id=self.node_id, file=key, attempt=attempt,
                             delay_s=round(delay, 3), error=describe(exc))
                self._sleep(delay)
        if self.cancel.is_set():
            return
        try:
            fd = os.open(state.tmp, os.O_WRONLY)
            try:
                os.pwrite(fd, data, lo)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._error(f"cannot write to the cache: {describe(exc)}", file=key, cause=exc) from exc
        self.progress.add(hi - lo)
        if state.range_done() and not self.cancel.is_set():
            target = self.dest / key
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(state.tmp, target)  # atomic: a file is either absent or whole
            with mlock:
                manifest.files[key] = ManifestEntry(state.file.size, state.file.etag)
                write_manifest(self.dest, manifest)


class _FileState:
    """Counts a file's outstanding ranges; the last one to land renames it in."""

    def __init__(self, file: RemoteFile, tmp: Path, ranges: int) -> None:
        self.file = file
        self.tmp = tmp
        self._left = ranges
        self._lock = threading.Lock()

    def range_done(self) -> bool:
        with self._lock:
            self._left -= 1
            return self._left == 0
