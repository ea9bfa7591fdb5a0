"""Fetch once per cluster: disjoint shares from the source, the rest from peers through Ray's object store.

The replica starts one :class:`Exchange` actor per init. Each node task joins it after its
``BeforeDownload`` (vetoes and modes respected) with the ranges it still has to fetch; once every
node has joined (or is gone), each range that two or more nodes need goes to one of them, balancing
bytes. A node reads its own share from the source first (:class:`SharedSource` wraps the source for
the downloader), offers every range it read to its peers with ``ray.put`` (the bytes stay in its
node's object store; peers pull them through Ray's object manager) and takes the rest from the
owners' offers. Whatever a peer cannot supply (its owner died, did not offer it within the memory
bound, or took too long) comes from the source: the same pinned version through the same verified
writes, only more origin bytes. The unit is the downloader's own range (``part_size_mb``, a small
file whole), so every byte still goes through one ``Downloader`` and one cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import attrs
import structlog

from .._config import DownloadConfig, NodeInitConfig
from ..download import RemoteFile, Source, local_path

_log = structlog.get_logger("node_init.share")

#: A range: (key, version tag, start, end).
Unit = tuple[str, str, int, int]
#: Ranges smaller than this come from the source on every node (the object store's overhead wins).
MIN_SHARED_BYTES = 256 * 1024
#: Bytes handed to the downloader at a time from a peer's range (progress moves at this grain).
SLICE = 256 * 1024


def unit_at(file: RemoteFile, offset: int, part: int) -> Unit:
    """The downloader's range of ``file`` that holds ``offset`` (the whole file when it is one range)."""
    if file.size <= part:
        return (file.key, file.etag, 0, file.size)
    lo = offset - offset % part
    return (file.key, file.etag, lo, min(lo + part, file.size))


def units_of(files: list[RemoteFile], part: int) -> list[Unit]:
    """Every shareable range of ``files`` (what the downloader would read, minus the small ones)."""
    out: list[Unit] = []
    for f in files:
        for lo in range(0, f.size, part) if f.size > part else [0]:
            unit = unit_at(f, lo, part)
            if unit[3] - unit[2] >= MIN_SHARED_BYTES:
                out.append(unit)
    return out


def assign(needs: dict[str, set[Unit]]) -> dict[Unit, str]:
    """An owner for every range two or more nodes need: the needing node with the fewest bytes so far."""
    wanted: dict[Unit, list[str]] = {}
    for node, units in sorted(needs.items()):
        for unit in units:
            wanted.setdefault(unit, []).append(node)
    load = dict.fromkeys(needs, 0)
    owners: dict[Unit, str] = {}
    for unit in sorted((u for u, n in wanted.items() if len(n) > 1), key=lambda u: (u[2] - u[3], u)):
        owner = min(wanted[unit], key=lambda n: (load[n], n))
        owners[unit] = owner
        load[owner] += unit[3] - unit[2]
    return owners


def share_enabled(config: NodeInitConfig) -> bool:
    """Whether ``download.share`` applies to this source (sharing within an init, holders across inits)."""
    share, uri = config.download.share, config.model_source or ""
    if share == "off" or not uri:
        return False
    if uri.startswith(("s3://", "s3a://")):
        return True
    return share == "on" and local_path(uri) is not None  # a mount every node reads: only when asked


def sharing(config: NodeInitConfig, nodes: list[str]) -> bool:
    """Whether an init on ``nodes`` runs an exchange (``download.share``, two or more nodes)."""
    return len(nodes) >= 2 and share_enabled(config)


class Exchange:
    """The Ray actor that assigns shares and hands offers from owners to the nodes that take them.

    It holds only object references (the bytes stay where they were put) and bookkeeping; every
    wait has a bound and returns ``None``/``False`` at it, after which the caller uses the source.
    """

    def __init__(self, nodes: list[str]) -> None:
        self._expected = set(nodes)
        self._needs: dict[str, set[Unit]] = {}
        self._owners: dict[Unit, str] | None = None
        self._consumers: dict[Unit, set[str]] = {}
        self._offers: dict[Unit, list[Any]] = {}
        self._skipped: set[Unit] = set()
        self._held: dict[str, int] = {}  # owner -> bytes offered and not yet taken by every consumer
        self._finished: set[str] = set()
        self._gone: set[str] = set()
        self._cv = asyncio.Condition()

    async def _wait(self, predicate: Any, timeout: float) -> bool:
        async with self._cv:
            try:
                await asyncio.wait_for(self._cv.wait_for(predicate), timeout)
            except TimeoutError:
                return bool(predicate())
            return True

    def _assign_if_ready(self) -> None:
        if self._owners is None and self._expected <= set(self._needs) | self._gone:
            self._owners = assign({n: u for n, u in self._needs.items() if n not in self._gone})
            for unit, owner in self._owners.items():
                self._consumers[unit] = {n for n, u in self._needs.items() if unit in u and n != owner}

    async def join(self, node: str, units: list[Unit], timeout: float) -> dict[Unit, str]:
        """Record what ``node`` needs; once all have joined, the owners of the ranges it needs."""
        async with self._cv:
            if self._owners is None:
                self._needs[node] = set(units)
                self._assign_if_ready()
                self._cv.notify_all()
        if not await self._wait(lambda: self._owners is not None, timeout):
            async with self._cv:  # a node that never joined: share among those that did
                self._gone |= self._expected - set(self._needs)
                self._assign_if_ready()
                self._cv.notify_all()
        assert self._owners is not None
        mine = self._needs.get(node, set())
        return {u: o for u, o in self._owners.items() if u in mine}

    async def room(self, node: str, nbytes: int, limit: int, timeout: float) -> bool:
        """Wait until ``node`` may hold ``nbytes`` more for its peers within ``limit``."""
        return await self._wait(lambda: self._held.get(node, 0) + nbytes <= limit, timeout)

    async def offer(self, unit: Unit, box: list[Any], nbytes: int) -> None:
        """The owner read ``unit``: ``box[0]`` is its object (boxed, so Ray passes the reference)."""
        async with self._cv:
            if self._consumers.get(unit):
                self._offers[unit] = box
                owner = self._owners[unit] if self._owners else ""
                self._held[owner] = self._held.get(owner, 0) + nbytes
            self._cv.notify_all()

    async def skip(self, unit: Unit) -> None:
        """The owner will not offer ``unit`` (its consumers go to the source)."""
        async with self._cv:
            self._skipped.add(unit)
            self._cv.notify_all()

    def _unavailable(self, unit: Unit) -> bool:
        owner = (self._owners or {}).get(unit)
        return unit in self._skipped or owner in self._gone or (owner in self._finished and unit not in self._offers)

    async def take(self, node: str, unit: Unit, timeout: float) -> list[Any] | str | None:
        """The owner's offer of ``unit`` once made; ``None`` when it will not come within ``timeout``.

        ``"own"`` when its owner is gone and ``node`` is the first to ask: ``node`` now owns it
        (fetches it from the source and offers it), so a dead node's share is fetched once more, not
        once per survivor.
        """
        ready = await self._wait(lambda: unit in self._offers or self._unavailable(unit), timeout)
        if ready and unit in self._offers:
            return self._offers[unit]
        async with self._cv:
            owners = self._owners or {}
            if owners.get(unit) in self._gone and unit not in self._skipped:
                owners[unit] = node
                self._consumers.get(unit, set()).discard(node)
                return "own"
            self._release(node, unit)
            self._cv.notify_all()
        return None

    def _release(self, node: str, unit: Unit) -> None:
        consumers = self._consumers.get(unit)
        if consumers is None:
            return
        consumers.discard(node)
        if not consumers:
            del self._consumers[unit]
            if self._offers.pop(unit, None) is not None and self._owners is not None:
                owner = self._owners[unit]
                self._held[owner] -= unit[3] - unit[2]

    async def taken(self, node: str, unit: Unit) -> None:
        """``node`` wrote ``unit``: once every consumer has, the object is released."""
        async with self._cv:
            self._release(node, unit)
            self._cv.notify_all()

    async def finished(self, node: str) -> None:
        """``node``'s download ended: it takes nothing more; what it owns and did not offer, it never will."""
        async with self._cv:
            self._finished.add(node)
            for unit in list(self._consumers):
                self._release(node, unit)
            self._cv.notify_all()

    async def gone(self, node: str) -> None:
        """``node`` died or failed: its offers may be lost and what it owns comes from the source."""
        async with self._cv:
            self._gone.add(node)
            self._assign_if_ready()
            for unit, owner in (self._owners or {}).items():
                if owner == node:
                    self._offers.pop(unit, None)  # its objects died with it
            for unit in list(self._consumers):
                self._release(node, unit)
            self._cv.notify_all()

    async def drained(self, node: str, timeout: float) -> bool:
        """Wait until nothing ``node`` offered is still wanted by a peer."""
        return await self._wait(lambda: self._held.get(node, 0) <= 0, timeout)


def start_exchange(nodes: list[str], local_node: str) -> Any:
    """One :class:`Exchange` actor for this init, on the replica's node (it dies with the replica)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return ray.remote(Exchange).options(
        num_cpus=0, max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=local_node, soft=True),
    ).remote(nodes)


@attrs.define
class ShareStats:
    """What one node's shared download took from where."""

    peer_bytes: int = 0
    offered: int = 0
    refetched: int = 0


class SharedSource:
    """A :class:`~node_init.download.Source` that reads a node's own share from ``origin`` (offering
    it to peers) and the peers' shares from their offers, falling back to ``origin``.

    Args:
        origin: The model's source.
        exchange: The init's :class:`Exchange` actor.
        node_id: This node.
        owners: Owner of each shared range this node needs (from :meth:`Exchange.join`).
        cfg: ``part_size_mb``, ``share_memory_mb`` and ``stall_timeout_s`` (half of it bounds a
            wait on a peer: the downloader's stall check must not fire while a peer is late).
    """

    def __init__(self, origin: Source, exchange: Any, node_id: str, owners: dict[Unit, str],
                 cfg: DownloadConfig) -> None:
        self.origin = origin
        self.uri = origin.uri
        self.in_place = origin.in_place
        self.exchange = exchange
        self.node_id = node_id
        self.owners = owners
        self.stats = ShareStats()
        self._part = cfg.part_size_mb * 1024 * 1024
        self._limit = cfg.share_memory_mb * 1024 * 1024
        self._wait_s = max(1.0, cfg.stall_timeout_s / 2)
        self._tees: dict[Unit, bytearray] = {}

    def __repr__(self) -> str:
        return f"SharedSource({self.origin!r}, node_id={self.node_id!r})"

    def list_files(self) -> list[RemoteFile]:
        return self.origin.list_files()

    def mine(self, file: RemoteFile, offset: int) -> bool:
        """Whether the range at ``offset`` is this node's to fetch and offer (the downloader reads them first)."""
        return self.owners.get(unit_at(file, offset, self._part)) == self.node_id

    def stream(self, file: RemoteFile, start: int, end: int) -> Iterator[bytes | memoryview]:
        unit = unit_at(file, start, self._part)
        owner = self.owners.get(unit)
        if owner == self.node_id:
            yield from self._tee(unit, file, start, end)
            return
        data = self._take(unit) if owner is not None else None
        if data == "own":  # its owner died and this node took the range over: fetch it and offer it
            self.owners[unit] = self.node_id
            self.stats.refetched += 1
            yield from self._tee(unit, file, start, end)
            return
        if not isinstance(data, bytes):
            if owner is not None:
                self.stats.refetched += 1
                _log.info("range from the source instead of a peer", node_id=self.node_id, file=file.key,
                          offset=unit[2], owner=owner)
            yield from self.origin.stream(file, start, end)
            return
        view = memoryview(data)[start - unit[2]:end - unit[2]]
        for i in range(0, len(view), SLICE):
            yield view[i:i + SLICE]
        self.stats.peer_bytes += len(view)
        self.exchange.taken.remote(self.node_id, unit)

    def _tee(self, unit: Unit, file: RemoteFile, start: int, end: int) -> Iterator[bytes | memoryview]:
        """Stream from the source, keeping a copy to offer once the whole range has passed."""
        buf = self._tees.get(unit) if start > unit[2] else bytearray()
        if buf is not None and len(buf) != start - unit[2]:
            buf = None  # a resumed read we cannot join to what was kept: the peers use the source
        if buf is not None:
            self._tees[unit] = buf
        for chunk in self.origin.stream(file, start, end):
            if buf is not None:
                buf += chunk
            yield chunk
        if buf is not None and len(buf) == unit[3] - unit[2]:
            del self._tees[unit]
            self._offer(unit, bytes(buf))
        elif buf is None and end == unit[3]:
            self.exchange.skip.remote(unit)

    def _offer(self, unit: Unit, data: bytes) -> None:
        import ray

        if not ray.get(self.exchange.room.remote(self.node_id, len(data), self._limit, self._wait_s)):
            self.exchange.skip.remote(unit)  # over the memory bound for longer than a peer would wait
            return
        ray.get(self.exchange.offer.remote(unit, [ray.put(data)], len(data)))
        self.stats.offered += 1

    def _take(self, unit: Unit) -> bytes | str | None:
        """The range's bytes from its owner; ``"own"`` if this node took it over; ``None``: use the source."""
        import ray

        try:
            box = ray.get(self.exchange.take.remote(self.node_id, unit, self._wait_s), timeout=self._wait_s + 30)
            if box is None:
                return None
            if box == "own":
                return "own"
            data = ray.get(box[0], timeout=self._wait_s)
        except (ray.exceptions.RayError, TimeoutError) as exc:  # the owner died, the object was lost
            _log.info("peer's range unavailable", node_id=self.node_id, file=unit[0], error=type(exc).__name__)
            self.exchange.taken.remote(self.node_id, unit)
            return None
        if not isinstance(data, bytes) or len(data) != unit[3] - unit[2]:
            self.exchange.taken.remote(self.node_id, unit)
            return None
        return data

    def finish(self, timeout: float) -> None:
        """This node's download ended: tell the exchange, then keep offered objects alive (bounded)
        until every peer has taken them (this worker owns them: they go when it exits)."""
        import ray

        try:
            ray.get(self.exchange.finished.remote(self.node_id), timeout=30)
            if self.stats.offered and timeout > 0 and \
                    not ray.get(self.exchange.drained.remote(self.node_id, timeout), timeout=timeout + 30):
                _log.warning("peers did not take every offered range in time", node_id=self.node_id)
        except (ray.exceptions.RayError, TimeoutError) as exc:  # the init is over (its exchange is gone)
            _log.info("exchange gone before this node finished", node_id=self.node_id, error=type(exc).__name__)
