"""Which nodes hold which files, across inits: a node that joins later reads from them before the origin.

After a node's download completes it records, in Ray's internal KV (no service of ours; it lives as
long as the cluster), the files its snapshot holds, keyed by source and node. A later init's node
(a new replica on a fresh node) looks there first: each range it lacks that a live node holds in
the same version is read on that node by a small task (:func:`read_held`, which checks each range it
serves against the range checksums journaled with the blob) and arrives through Ray's object store;
any failure (the holder died, collected that snapshot, is slow, or its bytes rotted) falls back to the
origin. The reader's downloader verifies the bytes against the origin's checksum as it would the
origin's, and a holder whose bytes differ is named (:class:`~node_init.cluster._view.SourceView`).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import structlog

from .._bounds import Bounds
from .._config import DownloadConfig, NodeInitConfig
from ..download import ModelCache, RemoteFile, Source, cache_root, model_dir_name, range_sum
from ._protocol import MIN_SHARED_BYTES
from ._share import SLICE
from ._view import SourceView

_log = structlog.get_logger("node_init.holders")
_NAMESPACE = "node_init"
#: Reads a node runs at once on one holder.
HOLDER_READS = 2
#: ``{(key, etag): [(holder node id, the holder's model id), ...]}``
Holders = dict[tuple[str, str], list[tuple[str, str]]]


class Holding(msgspec.Struct, frozen=True):
    """What one node recorded: the model directory it used and the files of its snapshot."""

    model_id: str
    files: list[RemoteFile]


def _prefix(uri: str) -> str:
    return f"holders/{hashlib.sha256(uri.encode()).hexdigest()[:24]}/"


def record(config: NodeInitConfig, node_id: str, files: list[RemoteFile]) -> None:
    """Record that ``node_id`` holds ``files`` of the config's source (a complete snapshot)."""
    from ray.experimental import internal_kv

    value = msgspec.json.encode(Holding(model_id=config.model_id, files=files))
    internal_kv._internal_kv_put(_prefix(config.model_source or "") + node_id, value, overwrite=True,
                                 namespace=_NAMESPACE)


def forget_holdings(uri: str) -> None:
    """Forget every node's holding of ``uri`` (later inits go to the origin until a node records again).

    For benchmarks that measure the origin path, and after wiping nodes' caches by hand.
    """
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(_prefix(uri), del_by_prefix=True, namespace=_NAMESPACE)


def holders_for(config: NodeInitConfig, node_id: str, todo: list[RemoteFile]) -> Holders:
    """For each file of ``todo`` worth reading from a peer: the live nodes holding that version.
    """
    import ray
    from ray.experimental import internal_kv

    wanted = {(f.key, f.etag): f for f in todo if f.size >= MIN_SHARED_BYTES}
    if not wanted:
        return {}
    alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}  # type: ignore[no-untyped-call]
    prefix = _prefix(config.model_source or "")
    out: Holders = {}
    for raw_key in internal_kv._internal_kv_list(prefix, namespace=_NAMESPACE) or []:
        key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
        holder = key[len(prefix):]
        if holder == node_id or holder not in alive:
            continue
        raw = internal_kv._internal_kv_get(key, namespace=_NAMESPACE)
        if raw is None:
            continue
        try:
            holding = msgspec.json.decode(raw, type=Holding)
        except msgspec.DecodeError:
            continue
        for f in holding.files:
            if (f.key, f.etag) in wanted and wanted[(f.key, f.etag)].size == f.size:
                out.setdefault((f.key, f.etag), []).append((holder, holding.model_id))
    return out


class HeldRangeDiffers(LookupError):
    """A holder's blob no longer has the bytes journaled for it (bit rot, or a hand that changed it)."""


def read_held(cfg: DownloadConfig, model_id: str, uri: str, file: RemoteFile, start: int, end: int) -> bytes:
    """On a holder: bytes ``[start, end)`` of its verified blob of ``file``, each range they touch
    checked against the checksum journaled when it was written (and the blob unchanged before and after).

    Raises:
        LookupError: the blob is gone or changed; :class:`HeldRangeDiffers` when its bytes differ.
    """
    cache = ModelCache(cache_root(cfg) / model_dir_name(model_id), uri)
    try:
        if not cache.is_cached(file):
            raise LookupError(f"{file.key} is no longer in this node's cache")
        entry = cache.entries()[cache.blob_name(file)]
        part = entry.part_size
        checked = bool(entry.ranges) and part > 0 and len(entry.ranges) == max(1, -(-file.size // part))
        lo, hi = (start - start % part, min(file.size, -(-end // part) * part)) if checked else (start, end)
        with open(cache.blobs / cache.blob_name(file), "rb") as fh:
            fh.seek(lo)
            block = fh.read(hi - lo)
        if len(block) != hi - lo or not cache.is_cached(file):
            raise LookupError(f"{file.key} changed while it was read")
        for at in range(lo, hi, part) if checked else ():
            if range_sum(memoryview(block)[at - lo:min(at + part, hi) - lo]) != entry.ranges[at // part]:
                raise HeldRangeDiffers(f"{file.key} at {at}: the blob's bytes differ from those journaled")
        return block[start - lo:end - lo]
    finally:
        cache.close()


class HolderSource(SourceView):
    """A :class:`~node_init.download.Source` that reads from nodes holding the files, else ``origin``."""

    def __init__(self, origin: Source, config: NodeInitConfig, holders: Holders) -> None:
        super().__init__(origin)
        self.config = config
        self.holders = holders
        self.held_bytes = 0
        # All the holders of a range get two thirds of the stall bound (the first one may need a worker
        # started on its node): the source then still has a third of it to send the first bytes.
        self._wait_s = Bounds.of(config).holders_s
        # Each read is a task on the holder, and a busy task needs a worker process of its own: Ray
        # starts them one per CPU at a time (seconds each), so a reader's whole concurrency at once
        # would queue worker starts past the bound. A few at a time reuse the workers they started.
        self._slots: dict[str, threading.BoundedSemaphore] = {
            h: threading.BoundedSemaphore(HOLDER_READS) for hs in holders.values() for h, _ in hs}

    def __repr__(self) -> str:
        return f"HolderSource({self.origin!r}, files={len(self.holders)})"

    def stream(self, file: RemoteFile, start: int, end: int) -> Iterator[bytes | memoryview]:
        until = time.monotonic() + self._wait_s
        for holder, model_id in self.holders.get((file.key, file.etag), []):
            slot = self._slots[holder]
            if not slot.acquire(timeout=max(0.0, until - time.monotonic())):
                break
            try:
                data = self._read(holder, model_id, file, start, end, until - time.monotonic())
            finally:
                slot.release()
            if data is not None:
                self.received(file, start, data, holder)
                view = memoryview(data)
                for i in range(0, len(view), SLICE):
                    yield view[i:i + SLICE]
                self.held_bytes += len(data)
                return
        yield from self.origin.stream(file, start, end)

    def _read(self, holder: str, model_id: str, file: RemoteFile, start: int, end: int,
              timeout: float) -> bytes | None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task: Any = ray.remote(read_held).options(
            num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=holder, soft=False))
        if timeout <= 0:
            return None
        ref = task.remote(self.config.download, model_id, self.uri, file, start, end)
        try:
            data = ray.get(ref, timeout=timeout)
        except (ray.exceptions.RayError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):  # still running: stop it (never force: that kills a worker)
                try:
                    ray.cancel(ref)
                except Exception as cancel:  # it ended meanwhile, or its node is gone: nothing to stop
                    _log.debug("holder read not cancelled", holder=holder[:12], error=type(cancel).__name__)
            if isinstance(getattr(exc, "cause", None), HeldRangeDiffers):
                self.blame(holder, file, start, str(exc.cause))  # type: ignore[union-attr]
                return None
            _log.info("holder unavailable: next holder or the source", holder=holder[:12], file=file.key,
                      error=type(exc).__name__)
            return None
        return data if isinstance(data, bytes) and len(data) == end - start else None
