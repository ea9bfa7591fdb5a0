"""The downloader: fetch a model's files into a node's cache: verified, version-pinned, resumable.

Each file is read in ranges (``part_size_mb``, ``concurrency`` at once), every range pinned
to the version listed (``If-Match`` on S3; size and mtime for a local file), streamed into
its partial file as bytes arrive (a stall is no bytes at all for ``stall_timeout_s``), and
hashed while it arrives: where a single-part ETag states an MD5, the whole file's MD5 (in order),
which must match; otherwise an XXH3-64 per range (in parallel, no second read) for the cache's
content digest. A whole file becomes a blob; the files of one listing become an immutable snapshot
(:mod:`node_init.download._cache`). A file whose bytes differ from the origin's checksum is read
again from the origin alone, while the other files' reads go on (none of their bytes is read
twice). A file that changes at the source mid-download restarts the whole set from a fresh
listing, so a snapshot is always one version.
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import filelock
import msgspec
import structlog

from .._bounds import Bounds
from .._config import DownloadConfig
from .._errors import DownloadError, describe
from ._cache import RANGE_SUM, ModelCache, PartState, range_hasher, ranges_digest, record_rate
from ._checksums import InOrder, RangeCrc, combine, encode_crc
from ._retry import Transient, with_retries
from ._source import RemoteFile, Source, SourceChanged, check_key

_log = structlog.get_logger("node_init.download")

#: How often a change at the source restarts the download from a fresh listing before it fails.
MAX_RESTARTS = 3
#: Seconds between the watchdog's looks at the reads: each turn re-checks the cancel, the stall bound and
#: the deadline (a polling interval; the bounds themselves are the config's, through Bounds).
POLL_S = 0.2
#: A watchdog turn this many polling intervals late means the process itself did not run meanwhile.
UNWATCHED_GAP = 5


class DownloadResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one download did."""

    path: str
    fetched: tuple[str, ...]
    bytes: int
    cached_bytes: int
    seconds: float
    #: How each file's bytes were checked against the origin (``crc64nvme``, ``sha256``, ``md5``, ...,
    #: or ``size`` when the origin stated nothing), fetched and cached files alike.
    verified: dict[str, str] = {}
    #: Files read again from the origin after their bytes differed from its checksum.
    rereads: tuple[str, ...] = ()


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

    def grow(self, n: int) -> None:
        """``n`` more bytes to fetch (a file read again)."""
        with self._lock:
            self.total += n
            self.last_change = time.monotonic()

    def restart(self, total: int) -> None:
        """Start counting again (a fresh listing after a change at the source)."""
        with self._lock:
            self.done = 0
            self.total = total
            self.last_change = time.monotonic()


class _DaemonPool:
    """A fixed pool of daemon threads (``ThreadPoolExecutor``'s are joined at exit).

    A read blocked on a dead link returns only at its request bound; it must never hold the
    process at exit, nor an init past its cancellation.
    """

    def __init__(self, size: int, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[cf.Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue())
        self._size = size
        for i in range(size):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future[Any]:
        future: cf.Future[Any] = cf.Future()
        self._queue.put((future, fn, args))
        return future

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Cancel what has not started; each thread ends after its current task (not waited for)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in range(self._size):
            self._queue.put(None)


class _WriteFailed(OSError):
    """Writing to the cache failed (disk full, read-only): never retried as a read error."""


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Every byte of ``data`` at ``offset``: near a full disk (or a file-size limit) ``pwrite`` writes
    fewer bytes than asked instead of failing; the rest is written again until it fails for real."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:  # no progress and no error: the disk takes nothing more
            raise OSError(errno.ENOSPC, "no space left: a write made no progress")
        view, offset = view[written:], offset + written


class Downloader:
    """One download of ``files`` from ``source`` into ``dest`` (see the module doc).

    Args:
        source: Where to read.
        dest: The model directory in this node's cache (``<root>/<model>``): after a download it
            is a link to the current snapshot.
        cfg: Bounds, retries, part size, concurrency, ``verify``.
        node_id: For errors and logs.
        progress: Updated as bytes arrive.
        cancel: Set it to stop: reads stop at their next chunk, resumable state is kept.
        first: Ranges ``(file, offset)`` to read before the others (a node's own share of a
            shared download: its peers wait for them).
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
        first: Callable[[RemoteFile, int], bool] | None = None,
    ) -> None:
        self.source = source
        self._first = first
        self.dest = dest
        self.cfg = cfg
        self.node_id = node_id
        self.progress = progress or Progress()
        self.cancel = cancel or threading.Event()
        self._abort = threading.Event()  # this attempt failed: every range stops
        self._sleep = sleep
        self._bounds = Bounds.of_download(cfg)
        self._part = cfg.part_size_mb * 1024 * 1024
        self._inflight: dict[str, int] = {}  # key -> ranges being read, to name a stalled file
        self._inflight_lock = threading.Lock()
        # One attempt's reads: files can be added while it runs (a file read again from the origin).
        self._tasks_lock = threading.Lock()
        self._pool: _DaemonPool | None = None
        self._futures: list[cf.Future[None]] = []
        self._states: list[_FileState] = []
        # Files read again after a checksum mismatch, over every attempt: from the origin itself, not
        # through a view that may hand back the same bad bytes (a peer's, a holder's).
        self._rereads: list[str] = []

    def _error(self, message: str, *, file: str | None = None, cause: BaseException | None = None,
               bad_bytes: bool = False, mismatch: bool = False) -> DownloadError:
        """A DownloadError; ``bad_bytes``: what was written cannot be kept (partial files go);
        ``mismatch``: the bytes differ from the origin's checksum."""
        return DownloadError(message, node_id=self.node_id, source=self.source.uri, file=file,
                             cause=describe(cause) if cause else "", resumable=not bad_bytes,
                             checksum_mismatch=mismatch)

    def _source_for(self, key: str) -> Source:
        """The source to read ``key`` from: the origin behind a peers' or holders' view after a mismatch."""
        if key in self._rereads:
            from_origin = getattr(self.source, "from_origin", None)  # a view: peers, holders
            return from_origin() if from_origin is not None else self.source  # type: ignore[no-any-return]
        return self.source

    def _stopped(self) -> bool:
        return self.cancel.is_set() or self._abort.is_set()

    def run(self, files: list[RemoteFile], *, relist: Callable[[], list[RemoteFile]] | None = None) -> DownloadResult:
        """Download what is missing of ``files``, holding the node's lock for this model.

        Args:
            files: The listing to fetch (one version of each file).
            relist: Lists again after a file changed at the source; without it such a
                change fails the download.

        Returns:
            The result; ``path`` is the snapshot of exactly ``files`` (or of the fresh listing).

        Raises:
            DownloadError: naming node, source and file, after retries, on a timeout or
                stall, a refused key, a checksum mismatch, a full disk, a source that keeps
                changing, or when the lock wait expires.
        """
        start = time.monotonic()
        for f in files:
            check_key(f.key)
        unchecked = [f.key for f in files if f.checksum is None or not f.checksum.checkable]
        if self.cfg.require_checksum and unchecked:
            raise self._error(f"download.require_checksum: the origin states no checksum for {len(unchecked)} "
                              f"file(s)", file=", ".join(unchecked[:3]) + (" ..." if len(unchecked) > 3 else ""))
        lock_dir = self.dest.parent / ".locks"
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._error(f"cannot create the cache at {self.dest.parent}: {describe(exc)}", cause=exc) from exc
        lock = filelock.FileLock(str(lock_dir / f"{self.dest.name}.lock"))
        try:
            lock.acquire(timeout=self.cfg.lock_timeout_s)
        except filelock.Timeout:
            raise self._error(
                f"another process held the download lock for over {self.cfg.lock_timeout_s}s"
            ) from None
        try:
            return self._locked_run(files, relist, start)
        finally:
            lock.release()

    def _locked_run(self, files: list[RemoteFile], relist: Callable[[], list[RemoteFile]] | None,
                    start: float) -> DownloadResult:
        cache = ModelCache(self.dest, self.source.uri)
        try:  # the journal's descriptor is closed however the run ends
            return self._fill(cache, files, relist, start)
        finally:
            cache.close()

    def _fill(self, cache: ModelCache, files: list[RemoteFile], relist: Callable[[], list[RemoteFile]] | None,
              start: float) -> DownloadResult:
        try:
            cache.prepare(keep=files)
            cache.collect(keep=files)
        except OSError as exc:
            raise self._error(f"cannot use the cache at {cache.store}: {describe(exc)}", cause=exc) from exc
        restarts = 0
        self._rereads = []
        fetched: dict[str, None] = {}  # every file read, over every attempt
        moved = 0  # bytes read over every attempt
        cached_bytes: int | None = None  # what the cache held before the first
        while True:
            todo = cache.missing(files, full=self.cfg.verify == "full")
            if cached_bytes is None:
                cached_bytes = sum(f.size for f in files) - sum(f.size for f in todo)
            fetched.update(dict.fromkeys(f.key for f in todo))
            self.progress.restart(sum(f.size for f in todo))
            if todo:
                _log.info("download starting", node_id=self.node_id, source=self.source.uri, files=len(todo),
                          bytes=self.progress.total, cached_bytes=cached_bytes)
            try:
                self._fetch_all(cache, todo)
                moved += self.progress.done
                break
            except SourceChanged as exc:
                moved += self.progress.done
                if relist is None or restarts >= MAX_RESTARTS:
                    raise self._error(f"the file changed at the source during the download {restarts + 1} "
                                      "time(s); nothing of it was kept", file=exc.key, cause=exc) from None
                restarts += 1
                _log.warning("source changed: restarting from a fresh listing", node_id=self.node_id,
                             file=exc.key, restart=restarts)
                files = relist()
                for f in files:
                    check_key(f.key)
                cache.prepare(keep=files)
        try:
            path = cache.snapshot(files)
            if restarts:
                cache.collect(keep=files, orphans=True)  # blobs of the listings that changed
        except OSError as exc:
            raise self._error(f"cannot build the snapshot: {describe(exc)}", cause=exc) from exc
        seconds = time.monotonic() - start
        if moved >= 8 * 1024 * 1024 and seconds > 0:
            record_rate(self.dest.parent, self.source.uri, moved / 1e6 / seconds)
        _log.info("download finished", node_id=self.node_id, files=len(fetched), bytes=moved,
                  seconds=round(seconds, 3), snapshot=path.name, rereads=len(self._rereads))
        entries = cache.entries()
        verified = {f.key: entries[cache.blob_name(f)].verified if cache.blob_name(f) in entries else "size"
                    for f in files}
        return DownloadResult(path=str(path), fetched=tuple(fetched), bytes=moved, cached_bytes=cached_bytes or 0,
                              seconds=seconds, verified=verified, rereads=tuple(self._rereads))

    def _fetch_all(self, cache: ModelCache, todo: list[RemoteFile]) -> None:
        self._abort.clear()
        # A local copy is bound by syscalls and the GIL, not by latency: no more threads than cores.
        workers = min(self.cfg.concurrency, os.cpu_count() or 2) if self.source.local else self.cfg.concurrency
        pool = self._pool = _DaemonPool(workers, "node-init-dl")
        states = self._states = []
        self._futures = []
        try:
            for f in todo:
                states.append(self._open_part(cache, f))
            # What is left to fetch: ranges a resumed file already holds are not counted.
            self.progress.set_total(sum(hi - lo for s in states for lo, hi in s.todo_ranges()))
            # Files of one range first (config and tokenizer are small: they land early), in
            # batches: per-file task overhead dominates tiny files.
            small = [s for s in states if not s.resumable]
            ranges = [(s, lo, hi) for s in states if s.resumable for lo, hi in s.todo_ranges()]
            if self._first is not None:  # the pool runs tasks in submission order
                first = self._first
                small.sort(key=lambda s: not first(s.file, 0))
                ranges.sort(key=lambda r: not first(r[0].file, r[1]))
            batch = max(1, min(64, len(small) // (self.cfg.concurrency * 4)))
            for i in range(0, len(small), batch):
                self._submit(self._fetch_files, small[i:i + batch])
            for state in states:
                if state.resumable and not state.todo_ranges():
                    self._submit(self._finalize, state)  # all written before an interruption
            for state, lo, hi in ranges:
                self._submit(self._fetch_range, state, lo, hi)
            self._wait()
            left = [s.file.key for s in states if not s.committed]
            if left:  # stopped between reads: every task ended, not every file
                raise self._error("cancelled" if self.cancel.is_set() else "stopped before every file was whole",
                                  file=", ".join(left[:3]) + (" ..." if len(left) > 3 else ""))
        except BaseException as exc:
            self._abort.set()
            for state in states:  # self._states: a file read again is swapped in place
                state.close()  # after this no write lands, even from an abandoned read
            discard = (isinstance(exc, SourceChanged) or (isinstance(exc, DownloadError) and not exc.resumable)
                       or not isinstance(exc, Exception))
            for state in states:
                if not state.committed and (discard or not state.resumable):
                    cache.drop_part(state.file)
            raise
        finally:
            pool.shutdown()

    def _open_part(self, cache: ModelCache, f: RemoteFile) -> _FileState:
        # Resumable state only for files of several ranges; the file itself is opened by its
        # first write (tens of thousands of small files must not hold a descriptor each).
        resume = cache.load_state(f, self._part) if f.size > self._part else None
        if resume is not None:
            _log.info("resuming a partial file", node_id=self.node_id, file=f.key, ranges_done=len(resume.done))
        return _FileState(cache, f, self._part, resume)

    def _write_error(self, exc: OSError, key: str) -> DownloadError:
        full = " (disk full)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        return self._error(f"cannot write to the cache{full}: {describe(exc)}", file=key, cause=exc, bad_bytes=True)

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the attempt's pool; :meth:`_wait` waits for it too."""
        assert self._pool is not None
        with self._tasks_lock:
            self._futures.append(self._pool.submit(fn, *args))

    def _wait(self) -> None:
        """Wait for every task of the attempt, those submitted meanwhile included."""
        deadline = watched_from = looked = time.monotonic()
        deadline += self.cfg.timeout_s
        pending: set[cf.Future[None]] = set()
        seen = 0
        while True:
            with self._tasks_lock:  # a task adds its follow-ups before it ends: none is missed
                pending.update(self._futures[seen:])
                seen = len(self._futures)
            if not pending:
                return
            done, pending = cf.wait(pending, timeout=POLL_S, return_when=cf.FIRST_EXCEPTION)
            for fut in done:
                if fut.exception() is not None:
                    raise fut.exception()  # type: ignore[misc]
            now = time.monotonic()
            if now - looked > UNWATCHED_GAP * POLL_S:
                # This process did not run (stopped, or starved of CPU): the link's silence is measured
                # only while the process could read, or a node resumed after a pause fails as stalled
                # on bytes waiting in its sockets.
                watched_from = now
            looked = now
            if self.cancel.is_set() and pending:
                raise self._error("cancelled")
            if now > deadline:
                raise self._error(f"timed out after {self.cfg.timeout_s}s "
                                  f"({self.progress.done}/{self.progress.total} bytes)")
            if now - max(self.progress.last_change, watched_from) > self.cfg.stall_timeout_s:
                with self._inflight_lock:
                    stalled = sorted(k for k, n in self._inflight.items() if n)
                raise self._error(f"stalled: no bytes for {self.cfg.stall_timeout_s}s "
                                  f"({self.progress.done}/{self.progress.total} bytes)",
                                  file=", ".join(stalled) or None)

    def _fetch_files(self, states: list[_FileState]) -> None:
        for state in states:
            if self._stopped():
                return
            self._fetch_range(state, 0, state.file.size)

    def _fetch_range(self, state: _FileState, lo: int, hi: int) -> None:
        key = state.file.key
        with self._inflight_lock:
            self._inflight[key] = self._inflight.get(key, 0) + 1
        try:
            if not self._read_into(state, lo, hi):
                return
        finally:
            with self._inflight_lock:
                self._inflight[key] -= 1
        if state.range_done(lo):
            self._finalize(state)

    def _read_into(self, state: _FileState, lo: int, hi: int) -> bool:
        """Stream ``[lo, hi)`` into the partial file; retries (``with_retries``) resume where the bytes stopped."""
        key = state.file.key
        at = [lo, 0]  # the next byte to read, the attempts made
        live = state.in_order and not state.resumable  # one range, in order: the digest as bytes arrive
        # Every range's own checksum: the blob's content digest, and what a holder checks the ranges it serves by.
        rsum = range_hasher()
        # The origin's CRC of this range, as its bytes arrive; the file's is combined from them at the end.
        rcrc = RangeCrc(state.origin.algorithm) if state.origin is not None and state.origin.is_crc else None

        def attempt() -> bool:
            at[1] += 1
            if self._stopped():
                return False
            for chunk in self._source_for(key).stream(state.file, at[0], hi):
                if self._stopped():
                    return False
                pos = at[0]
                if pos + len(chunk) > hi:
                    raise Transient(f"long read: {pos + len(chunk) - lo} of {hi - lo} bytes at offset {lo}")
                if not state.write(chunk, pos):
                    return False
                rsum.update(chunk)
                if rcrc is not None:
                    rcrc.update(chunk)
                if live:
                    state.feed(chunk, pos)
                at[0] = pos + len(chunk)
                self.progress.add(len(chunk))
            if at[0] != hi:
                raise Transient(f"short read: {at[0] - lo} of {hi - lo} bytes at offset {lo}")
            return True

        try:
            if not with_retries(attempt, retries=self.cfg.retries, wait_s=self._bounds.retry_wait_s, what="read",
                                sleep=self._sleep, node_id=self.node_id, file=key, offset=lo):
                return False
        except (SourceChanged, DownloadError):
            raise
        except _WriteFailed as exc:
            raise self._write_error(exc, key) from exc  # our disk, not the link: no retry
        except Exception as exc:
            raise self._error(f"read failed after {at[1]} attempt(s): {describe(exc)}", file=key, cause=exc) from exc
        state.sums[lo] = rsum.intdigest()
        if rcrc is not None:
            state.crcs[lo] = rcrc.value
        return True

    def _finalize(self, state: _FileState) -> None:
        """All ranges are written: finish the checks against the origin, commit the blob."""
        f = state.file
        try:
            state.touch()  # an empty file gets no write
            got = state.hash_through() if state.in_order else state.combined_crc() if state.origin else None
            digest = state.sums_digest()
        except OSError as exc:
            raise self._write_error(exc, f.key) from exc
        checked = state.origin
        if checked is not None and (got is None or not checked.matches(got)):
            self._read_again(state, self._error(f"{checked.label} mismatch: the origin states {checked.value}, "
                                                f"the bytes give {got}", file=f.key, bad_bytes=True, mismatch=True))
            return
        state.verified = checked.label if checked is not None else "size"
        if not state.close():
            return  # aborted meanwhile
        try:  # what is journaled is exactly the listed size: no short file, no hole past the end
            size = state.path.stat().st_size
        except OSError as exc:
            raise self._write_error(exc, f.key) from exc
        if size != f.size:
            raise self._error(f"the cache file holds {size} bytes, the source lists {f.size}", file=f.key,
                              bad_bytes=True)
        try:
            state.cache.commit_blob(f, digest, verified=state.verified, origin=str(checked) if checked else "",
                                    ranges=[state.sums[lo] for lo, _ in state.ranges], part_size=state.part)
        except OSError as exc:
            raise self._write_error(exc, f.key) from exc
        state.committed = True
        if state.resumable:
            state.cache.drop_state(f)

    def _read_again(self, state: _FileState, mismatch: DownloadError) -> None:
        """A file's bytes differ from the origin's checksum: they are dropped, and the file is read again
        from the origin, once (a flip on the way heals); twice raises ``mismatch``. Only this file:
        the other files' reads go on, so none of their bytes crosses the origin link twice."""
        f = state.file
        if not state.close():
            return  # aborted meanwhile
        state.cache.drop_part(f)  # the bad bytes are never kept
        with self._tasks_lock:
            again = f.key not in self._rereads
            if again:
                self._rereads.append(f.key)
        if not again:
            raise mismatch
        if self._stopped():
            return
        _log.warning("checksum mismatch: reading the file again from the origin", node_id=self.node_id,
                     source=self.source.uri, file=f.key, error=str(mismatch))
        fresh = _FileState(state.cache, f, self._part, None)
        with self._tasks_lock:
            self._states[self._states.index(state)] = fresh
        self.progress.grow(f.size)
        for lo, hi in fresh.ranges:  # one range for a file too small to resume
            self._submit(self._fetch_range, fresh, lo, hi)


class _FileState:
    """One partial file: its ranges, its writes (stoppable at once), and its in-order checksum."""

    def __init__(self, cache: ModelCache, file: RemoteFile, part: int, resume: PartState | None) -> None:
        self.cache = cache
        self.file = file
        self.path = cache.part_path(file)
        self.fd: int | None = None
        self.closed = False
        self.ranges = [(s, min(s + part, file.size)) for s in range(0, file.size, part)] or [(0, 0)]
        self.state = resume or PartState(etag=file.etag, size=file.size, part_size=part, sum_kind=RANGE_SUM)
        self.done = set(self.state.done)
        self.part = part
        self.sums = {int(k): v for k, v in self.state.sums.items()}
        self.origin = file.checksum if file.checksum is not None and file.checksum.checkable else None
        self.crcs = {int(k): v for k, v in self.state.crcs.items()}
        # A digest that does not combine (MD5, SHA, any composite) is fed in order; a full CRC is combined
        # from its ranges.
        self.in_order = self.origin is not None and not self.origin.is_crc
        self.verified = "size"
        self.resumable = len(self.ranges) > 1
        self.committed = False
        self._lock = threading.Lock()  # the descriptor, ``done``, closing
        self._idle = threading.Condition(self._lock)  # no write in progress
        self._writers = 0
        self._hash_lock = threading.Lock()
        self._digest = InOrder(self.origin, file.size) if self.in_order and self.origin is not None else None
        self._hashed = 0  # bytes [0, _hashed) are in the MD5

    def todo_ranges(self) -> list[tuple[int, int]]:
        return [r for r in self.ranges if r[0] not in self.done]

    def write(self, data: bytes | memoryview, offset: int) -> bool:
        """Write at ``offset`` unless the file was closed (the download stopped)."""
        with self._lock:
            if self.closed:
                return False
            try:
                fd = self._open()
            except OSError as exc:
                raise _WriteFailed(exc.errno, exc.strerror) from exc
            self._writers += 1
        try:  # ranges write in parallel; close() waits for them
            _pwrite_all(fd, data, offset)
        except OSError as exc:
            raise _WriteFailed(exc.errno, exc.strerror) from exc
        finally:
            with self._lock:
                self._writers -= 1
                if not self._writers:
                    self._idle.notify_all()
        return True

    def touch(self) -> None:
        """Make sure the partial file exists (unless closed)."""
        with self._lock:
            if not self.closed:
                self._open()

    def _open(self) -> int:
        """The blob's descriptor, opened on first use: a new inode unless resuming.

        A stale file of that name (an interrupted write, or a blob found changed) is unlinked
        first, never truncated: a snapshot an engine holds may still link its inode.
        """
        if self.fd is None:
            if self.state.done:
                self.fd = os.open(self.path, os.O_RDWR)
            else:
                try:
                    self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    os.unlink(self.path)
                    self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        return self.fd

    def range_done(self, lo: int) -> bool:
        """Record a written range (kept for resuming); whether the file is now complete."""
        with self._lock:
            self.done.add(lo)
            complete = len(self.done) == len(self.ranges)
            if self.resumable and not complete and not self.closed:
                self.state.done = sorted(self.done)
                self.state.sums = {str(k): v for k, v in self.sums.items()}
                self.state.crcs = {str(k): v for k, v in self.crcs.items()}
                self.cache.save_state(self.file, self.state)
        if self.resumable and self.in_order:
            self.hash_through(complete_only=False)
        return complete

    def sums_digest(self) -> str:
        """The content digest from every range's checksum (see ``BlobEntry.digest``); a range an earlier
        release wrote without one is read back once."""
        for lo, hi in self.ranges:
            if lo not in self.sums:
                rsum = range_hasher()
                self._read_back(lo, hi, rsum.update)
                self.sums[lo] = rsum.intdigest()
        return ranges_digest(self.part, [self.sums[lo] for lo, _ in self.ranges])

    def _read_back(self, lo: int, hi: int, update: Callable[[bytes], object]) -> None:
        """Feed bytes ``[lo, hi)`` of the partial file to ``update`` (from the page cache: just written)."""
        with self._lock:
            fd = self._open()
        pos = lo
        while pos < hi:
            chunk = os.pread(fd, min(hi - pos, 8 << 20), pos)
            if not chunk:
                raise OSError(errno.EIO, f"short read of the partial file at {pos}")
            update(chunk)
            pos += len(chunk)

    def combined_crc(self) -> str:
        """The file's CRC in the origin's algorithm and form, from its ranges' (a range written by an
        earlier run whose CRC was not recorded is read back once)."""
        assert self.origin is not None
        algorithm = self.origin.algorithm
        parts = []
        for lo, hi in self.ranges:
            if lo not in self.crcs:
                rcrc = RangeCrc(algorithm)
                self._read_back(lo, hi, rcrc.update)
                self.crcs[lo] = rcrc.value
            parts.append((self.crcs[lo], hi - lo))
        return encode_crc(algorithm, combine(algorithm, parts))

    def feed(self, chunk: bytes | memoryview, pos: int) -> None:
        """Hash bytes of a single-range file as they arrive (in order, so no second read)."""
        with self._hash_lock:
            if pos == self._hashed and self._digest is not None:
                self._digest.update(chunk)
                self._hashed += len(chunk)

    def hash_through(self, *, complete_only: bool = True) -> str:
        """Feed written ranges to the in-order checksum, as far as they are contiguous; its value."""
        if self._digest is None:
            return ""
        with self._hash_lock:
            for lo, hi in self.ranges:
                if hi <= self._hashed:
                    continue
                if lo not in self.done or lo != self._hashed:
                    break
                with self._lock:
                    if self.closed:
                        break
                self._read_back(lo, hi, self._digest.update)  # close() waits for _hash_lock: still open
                self._hashed = hi
            if complete_only and self._hashed < self.file.size:
                raise OSError(errno.EIO, f"only {self._hashed} of {self.file.size} bytes could be hashed")
            return self._digest.result()

    def close(self) -> bool:
        """Stop further writes and close the file; whether it was still open."""
        with self._hash_lock, self._lock:  # never while a hash or a write uses the descriptor
            if self.closed:
                return False
            self.closed = True
            while self._writers:
                self._idle.wait()
            fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
        return True

