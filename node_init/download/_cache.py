"""A model's cache on one node: verified blobs, immutable snapshots, a journal, resumable parts.

Layout, for a model directory ``<root>/<model>`` (what users and ``NodeReport.path`` name)::

    <root>/<model>                          -> .node-init/<model>/snapshots/<id>  (symlink, swapped atomically)
    <root>/.node-init/<model>/blobs/<blob>  complete, verified files (never changed in place)
    <root>/.node-init/<model>/snapshots/<id>/<key>   hard links to blobs: exactly one listing
    <root>/.node-init/<model>/snapshots/<id>.lock    shared-locked by each engine that uses it
    <root>/.node-init/<model>/journal.jsonl          one line per blob: size, version, mtime, inode, digest
    <root>/.node-init/<model>/partial/<blob>.state   a large blob being written: its version pin
                                                     and the ranges already written (for resuming)
    <root>/.locks/<model>.lock              one downloader per node and model
    <root>/.node-init-rates.json            last measured MB/s per store, for ``overlap: auto``

A blob is named by (source, key, size, version tag): a new version of a file is a new
blob, an unchanged file is shared by every snapshot that lists it. A blob is complete
only once its journal line is written (after its bytes were verified); it is written in
place, as a new inode, so no snapshot ever sees it change. A snapshot is named
by its whole listing and built once, then never changed: an engine reading an older
snapshot keeps reading exactly it. Snapshots that are neither current nor held are
collected (with the blobs only they used) by the next download of that model.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import msgspec
import xxhash

from .._config import DownloadConfig
from .._modes import DownloadMode
from ._checksums import DIGESTS, OriginChecksum, file_checksum
from ._source import RemoteFile

STORE = ".node-init"
RATES = ".node-init-rates.json"
JOURNAL = "journal.jsonl"
#: A snapshot younger than this is never collected: its engine may be about to hold it.
COLLECT_GRACE_S = 600.0


class BlobEntry(msgspec.Struct, frozen=True):
    """A complete blob, as recorded in the journal when it was written.

    Attributes:
        blob: The blob's name.
        key: The file's key in the model.
        size: Its size.
        etag: The source's version tag it was fetched at (ETag; size+mtime for a local file).
        digest: A content hash taken while it was written: ``md5:<hex>`` where the source states
            an MD5 (a single-part ETag, then checked), else ``xxh3/<part size>:<hash of the
            ranges' XXH3-64 sums>`` (computed per range as bytes arrive, in parallel, no second
            read).
        mtime_ns: The blob's modification time once complete (a change means it was touched).
        ino: The blob's inode (a different inode means it was replaced).
        verified: How its bytes were checked against the origin (``crc64nvme``, ``crc32c``, ``crc32``,
            ``sha256``, ``sha1``, ``md5``), or ``size`` when the origin stated no checksum.
        origin: The origin's checksum it matched (``algorithm:value``, ``algorithm*part:value`` for a
            composite one), re-checked by ``verify: full``.
        part_size: The size of the ranges ``ranges`` covers (all but the last).
        ranges: Each range's :data:`RANGE_SUM`, taken as it was written: a holder checks the ranges it
            serves to another node against them.
    """

    blob: str
    key: str
    size: int
    etag: str
    digest: str
    mtime_ns: int
    ino: int
    verified: str = "size"
    origin: str = ""
    part_size: int = 0
    ranges: list[int] = []


class PartState(msgspec.Struct):
    """A partial file's resumable state: the version it is pinned to and the ranges written."""

    etag: str
    size: int
    part_size: int
    # The range checksum of ``sums`` (:data:`RANGE_SUM`): a state of another kind is not resumed.
    sum_kind: str
    done: list[int] = []
    sums: dict[str, int] = {}  # range start -> checksum of that range (for the content digest)
    crcs: dict[str, int] = {}  # range start -> the origin's CRC of that range (its algorithm), if it states one


def model_dir_name(model_id: str) -> str:
    """A directory name for a model id (``org/name`` -> ``org--name``).

    Raises:
        ValueError: for an id that cannot name a directory (empty, ``.``, ``..``, hidden).
    """
    name = model_id.strip().replace("/", "--").replace("\\", "--")
    if not name or name in (".", "..") or name.startswith("."):
        raise ValueError(f"model_id {model_id!r} cannot name a cache directory")
    return name


def cache_root(cfg: DownloadConfig) -> Path:
    """This node's cache root: ``NODE_INIT_CACHE_DIR`` if set, else the config's ``cache_dir``."""
    return Path(os.environ.get("NODE_INIT_CACHE_DIR") or cfg.cache_dir).expanduser()


def select(files: list[RemoteFile], mode: DownloadMode) -> list[RemoteFile]:
    """The files a mode wants."""
    return [f for f in files if mode.wants(f.key)]


#: The range checksum new downloads record: XXH3-64 (several times faster than zlib's CRC32,
#: which a fast link made the downloader's largest CPU cost).
RANGE_SUM = "xxh3"


def range_sum(block: bytes | memoryview) -> int:
    """One range's checksum (:data:`RANGE_SUM`)."""
    return xxhash.xxh3_64_intdigest(block)


def range_hasher() -> xxhash.xxh3_64:
    """A streaming hasher of :data:`RANGE_SUM`: its ``intdigest()`` equals :func:`range_sum` of the bytes fed."""
    return xxhash.xxh3_64()


def ranges_digest(part_size: int, sums: list[int]) -> str:
    """The content digest of a file from its ranges' checksums, in order."""
    listed = ",".join(f"{c:016x}" for c in sums).encode()
    return f"{RANGE_SUM}/{part_size}:{hashlib.sha256(listed).hexdigest()[:32]}"


def file_digest(path: Path, like: str) -> str:
    """``path``'s content digest, of the same kind as ``like`` (re-reads every byte); ``""`` for a kind
    this release does not record (the blob then counts as unverified and is fetched again)."""
    with open(path, "rb") as f:
        if like.startswith("md5:"):
            md5 = hashlib.md5(usedforsecurity=False)
            while chunk := f.read(8 << 20):
                md5.update(chunk)
            return f"md5:{md5.hexdigest()}"
        algorithm, sep, value = like.partition(":")
        if sep and algorithm in DIGESTS:  # an origin's SHA, recorded as the blob's digest
            return f"{algorithm}:{file_checksum(str(path), OriginChecksum(algorithm, value))}"
        kind, rest = like.split("/", 1) if "/" in like else ("", "")
        if kind != RANGE_SUM:
            return ""
        part = int(rest.split(":", 1)[0])
        sums = []
        while block := f.read(part):
            sums.append(range_sum(block))
        return ranges_digest(part, sums or [range_sum(b"")])


def _listing_id(files: list[RemoteFile], source_uri: str) -> str:
    h = hashlib.sha256(source_uri.encode())
    for f in sorted(files, key=lambda f: f.key):
        h.update(f"\0{f.key}\0{f.size}\0{f.etag}".encode())
    return h.hexdigest()[:24]


class ModelCache:
    """One model directory's cache on this node (see the module doc). Use it under the model's lock.

    Args:
        dest: The model directory users see (``<root>/<model>``, a symlink to the current snapshot).
        source_uri: Where its files come from (part of every blob's name).
    """

    def __init__(self, dest: Path, source_uri: str) -> None:
        self.dest = dest
        self.source_uri = source_uri
        self.store = dest.parent / STORE / dest.name
        self.blobs = self.store / "blobs"
        self.snapshots = self.store / "snapshots"
        self.partial = self.store / "partial"
        self._journal = self.store / JOURNAL
        self._entries: dict[str, BlobEntry] | None = None
        self._journal_lock = threading.Lock()
        self._journal_fd: int | None = None

    # -- blobs -------------------------------------------------------------------------------

    def blob_name(self, f: RemoteFile) -> str:
        """The blob ``f`` (at its listed version) is stored as."""
        ident = f"{self.source_uri}\0{f.key}\0{f.size}\0{f.etag}".encode()
        return hashlib.sha256(ident).hexdigest()[:40]

    def entries(self) -> dict[str, BlobEntry]:
        """The journal: blob name -> its entry (the last line for a blob wins)."""
        if self._entries is None:
            entries: dict[str, BlobEntry] = {}
            decode = msgspec.json.Decoder(BlobEntry).decode
            try:
                with open(self._journal, "rb") as f:
                    for line in f:
                        with contextlib.suppress(msgspec.DecodeError):  # a torn last line
                            entry = decode(line)
                            entries[entry.blob] = entry
            except OSError:  # none yet, or unreadable: nothing counts as cached (writing will say why)
                pass
            self._entries = entries
        return self._entries

    def is_cached(self, f: RemoteFile, *, full: bool = False) -> bool:
        """Whether ``f``'s blob is complete and unchanged since it was written.

        Unchanged means the same size, mtime and inode as recorded; ``full`` also re-hashes it.
        """
        name = self.blob_name(f)
        entry = self.entries().get(name)
        if entry is None or entry.size != f.size or entry.etag != f.etag:
            return False
        try:
            st = (self.blobs / name).stat()
        except OSError:
            return False
        if (st.st_size, st.st_mtime_ns, st.st_ino) != (entry.size, entry.mtime_ns, entry.ino):
            return False
        if not full:
            return True
        if entry.origin:  # against what the origin stated at download, not only the node's own digest
            origin = OriginChecksum.parse(entry.origin)
            if not origin.matches(file_checksum(str(self.blobs / name), origin)):
                return False
        return file_digest(self.blobs / name, entry.digest) == entry.digest

    def missing(self, files: list[RemoteFile], *, full: bool = False) -> list[RemoteFile]:
        """The files of ``files`` whose blob is not complete and unchanged."""
        return [f for f in files if not self.is_cached(f, full=full)]

    def commit_blob(self, f: RemoteFile, digest: str, *, verified: str = "size", origin: str = "",
                    ranges: list[int] | None = None, part_size: int = 0) -> None:
        """Record ``f``'s blob, written and verified, as complete (one appended journal line)."""
        name = self.blob_name(f)
        st = (self.blobs / name).stat()
        entry = BlobEntry(name, f.key, f.size, f.etag, digest, st.st_mtime_ns, st.st_ino, verified, origin,
                          part_size if ranges else 0, ranges or [])
        line = msgspec.json.encode(entry) + b"\n"
        with self._journal_lock:
            if self._journal_fd is None:
                self._journal_fd = os.open(self._journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            view = memoryview(line)  # one write per line: whole lines even if killed; a short one is finished
            while view:
                view = view[os.write(self._journal_fd, view):]
            self.entries()[name] = entry

    def close(self) -> None:
        """Close the journal (reopened on the next commit)."""
        with self._journal_lock:
            fd, self._journal_fd = self._journal_fd, None
        if fd is not None:
            os.close(fd)

    # -- partial files -----------------------------------------------------------------------

    def part_path(self, f: RemoteFile) -> Path:
        """Where ``f`` is written: its blob (unique per key and version), complete once journaled."""
        return self.blobs / self.blob_name(f)

    def _state_path(self, f: RemoteFile) -> Path:
        return self.partial / f"{self.blob_name(f)}.state"

    def load_state(self, f: RemoteFile, part_size: int) -> PartState | None:
        """The resumable state of ``f``'s partial blob, if it is pinned to the same version."""
        try:
            state = msgspec.json.decode(self._state_path(f).read_bytes(), type=PartState)
        except (OSError, msgspec.DecodeError):
            return None
        if (state.etag, state.size, state.part_size, state.sum_kind) != (f.etag, f.size, part_size, RANGE_SUM):
            return None
        if self.blob_name(f) in self.entries() or not self.part_path(f).is_file():
            return None
        return state

    def save_state(self, f: RemoteFile, state: PartState) -> None:
        """Record which ranges of ``f``'s partial blob are written (atomically)."""
        path = self._state_path(f)
        tmp = path.with_name(f"{path.name}.{threading.get_ident()}")
        try:
            tmp.write_bytes(msgspec.json.encode(state))
            os.replace(tmp, path)
        except OSError:  # best effort: a resume then redoes these ranges, never trusts them
            with contextlib.suppress(OSError):
                tmp.unlink()

    def drop_state(self, f: RemoteFile) -> None:
        """Remove ``f``'s resumable state (its blob is complete, or cannot be resumed)."""
        with contextlib.suppress(OSError):
            self._state_path(f).unlink()

    def drop_part(self, f: RemoteFile) -> None:
        """Remove ``f``'s partial blob (never a journaled one) and its state."""
        if self.blob_name(f) not in self.entries():
            with contextlib.suppress(OSError):
                self.part_path(f).unlink()
        self.drop_state(f)

    def prepare(self, keep: list[RemoteFile]) -> None:
        """Create the layout; remove partial files that are not ``keep``'s (old versions, strays)."""
        for d in (self.blobs, self.snapshots, self.partial):
            d.mkdir(parents=True, exist_ok=True)
        wanted = {self.blob_name(f) for f in keep}
        for path in self.partial.iterdir():
            if path.name.split(".", 1)[0] not in wanted or path.suffix != ".state":
                with contextlib.suppress(OSError):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        if self.dest.exists() and not self.dest.is_symlink():  # the link's place holds something else
            if self.dest.is_dir() and not any(self.dest.iterdir()):
                self.dest.rmdir()
            else:
                raise FileExistsError(f"{self.dest} exists and is not a node-init cache: remove it or pick another "
                                      "path")

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self, files: list[RemoteFile]) -> Path:
        """The snapshot of exactly ``files`` (every blob complete), built if need be, made current.

        An existing snapshot of the same listing is reused only if each of its entries is still
        the blob's own inode and it holds nothing else; else a new one is built beside it.
        """
        entries = self.entries()
        incomplete = [f.key for f in files if self.blob_name(f) not in entries]
        if incomplete:  # only journaled (whole, verified) blobs ever enter a snapshot
            raise FileNotFoundError(errno.ENOENT, f"not downloaded completely: {', '.join(incomplete[:3])}")
        base = _listing_id(files, self.source_uri)
        for existing in sorted(self.snapshots.glob(f"{base}-*")):
            if existing.is_dir() and self._intact(existing, files):
                self._touch_lock(existing)
                self._make_current(existing)
                return existing
        path = self.snapshots / f"{base}-{uuid.uuid4().hex[:8]}"
        tmp = self.snapshots / f".tmp-{path.name}"
        try:
            tmp.mkdir()
            made = {tmp}
            for f in files:
                link = tmp / f.key
                if link.parent not in made:
                    link.parent.mkdir(parents=True, exist_ok=True)
                    made.add(link.parent)
                os.link(self.blobs / self.blob_name(f), link)
            self._touch_lock(path)
            os.rename(tmp, path)  # whole or absent
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                path.with_name(path.name + ".lock").unlink()
            raise
        self._make_current(path)
        return path

    def _intact(self, snapshot: Path, files: list[RemoteFile]) -> bool:
        try:
            for f in files:
                if (snapshot / f.key).stat().st_ino != (self.blobs / self.blob_name(f)).stat().st_ino:
                    return False
        except OSError:
            return False
        count = sum(len(names) for _, _, names in os.walk(snapshot))
        return count == len(files)

    @staticmethod
    def _touch_lock(snapshot: Path) -> None:
        lock = snapshot.with_name(snapshot.name + ".lock")
        lock.touch()
        os.utime(lock)  # marks it recent: the grace before it may be collected

    def _make_current(self, snapshot: Path) -> None:
        """Point the model directory at ``snapshot`` (a new symlink renamed over the old one)."""
        target = os.path.relpath(snapshot, self.dest.parent)
        tmp = self.dest.with_name(f".{self.dest.name}.link-{os.getpid()}-{threading.get_ident()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, self.dest)

    def current(self) -> Path | None:
        """The current snapshot, if any."""
        try:
            return (self.dest.parent / os.readlink(self.dest)).resolve()
        except OSError:
            return None

    def collect(self, keep: list[RemoteFile] | None = None, *, grace_s: float = COLLECT_GRACE_S,
                orphans: bool = False) -> int:
        """Remove snapshots neither current, recent nor held, then blobs no snapshot links.

        Blobs of ``keep`` (the listing being downloaded) stay: a download interrupted before
        its snapshot was built resumes from them. Blobs are scanned when a snapshot went, or
        with ``orphans`` (blobs of a listing that changed before its snapshot was built).

        Returns:
            Bytes freed.
        """
        if not self.snapshots.is_dir():
            return 0
        current = self.current()
        now = time.time()
        removed = 0
        for snapshot in list(self.snapshots.iterdir()):
            if not snapshot.is_dir() or snapshot == current:
                continue
            if snapshot.name.startswith(".tmp-"):
                shutil.rmtree(snapshot, ignore_errors=True)  # a build that was killed
                continue
            lock = snapshot.with_name(snapshot.name + ".lock")
            try:
                if now - lock.stat().st_mtime < grace_s:
                    continue
                fd = os.open(lock, os.O_RDWR)
            except FileNotFoundError:
                fd = None
            try:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # an engine holds it: keep
                shutil.rmtree(snapshot, ignore_errors=True)
                removed += 1
                with contextlib.suppress(OSError):
                    lock.unlink()
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
            finally:
                if fd is not None:
                    os.close(fd)
        freed = 0
        if not removed and not orphans:
            return 0  # no snapshot went: no blob lost its last link (a scan of every blob is not free)
        live = self.entries()
        wanted = {self.blob_name(f) for f in keep or ()}
        for blob in list(self.blobs.iterdir()):
            st = blob.stat()
            if st.st_nlink == 1 and blob.name not in wanted:  # linked by no snapshot, not wanted now
                freed += st.st_size
                blob.unlink()
                live.pop(blob.name, None)
        if freed:
            self._rewrite_journal(live)
        return freed

    def _rewrite_journal(self, entries: dict[str, BlobEntry]) -> None:
        tmp = self._journal.with_name(f"{JOURNAL}.{os.getpid()}")
        tmp.write_bytes(b"".join(msgspec.json.encode(e) + b"\n" for e in entries.values()))
        os.replace(tmp, self._journal)


class SnapshotHold:
    """A shared lock on a snapshot for as long as an engine reads it (it is then never collected).

    Release it with :meth:`release` (or let the process end).
    """

    def __init__(self, snapshot: Path) -> None:
        self.path = snapshot
        self._fd: int | None = os.open(snapshot.with_name(snapshot.name + ".lock"), os.O_RDWR)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise

    def release(self) -> None:
        """Let the snapshot be collected once it is no longer current. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __repr__(self) -> str:
        return f"SnapshotHold({str(self.path)!r}, held={self._fd is not None})"


def hold_snapshot(path: str | os.PathLike[str]) -> SnapshotHold | None:
    """Hold the snapshot at ``path`` (a model directory or a snapshot), or ``None`` if it is not one.

    Raises:
        OSError: when the snapshot is being collected right now.
    """
    real = Path(path).resolve()
    if real.parent.name != "snapshots" or not real.with_name(real.name + ".lock").exists():
        return None
    return SnapshotHold(real)


def _read_rates(root: Path) -> dict[str, float]:
    try:
        return msgspec.json.decode((root / RATES).read_bytes(), type=dict[str, float])
    except (OSError, msgspec.DecodeError):
        return {}


def _rate_key(source_uri: str) -> str:
    from urllib.parse import urlparse

    parsed = urlparse(source_uri)
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    return f"{parsed.scheme}://{parsed.netloc}@{endpoint}"


def read_rate(root: Path, source_uri: str) -> float | None:
    """The last download rate (MB/s) this node measured from ``source_uri``'s store, if any."""
    return _read_rates(root).get(_rate_key(source_uri))


def record_rate(root: Path, source_uri: str, mb_s: float) -> None:
    """Remember a measured rate for ``overlap: auto`` (best effort: a cache may be read-only)."""
    rates = _read_rates(root)
    rates[_rate_key(source_uri)] = mb_s
    tmp = root / f"{RATES}.{os.getpid()}"
    with contextlib.suppress(OSError):
        tmp.write_bytes(msgspec.json.encode(rates))
        os.replace(tmp, root / RATES)
