"""Fetch once per cluster: disjoint shares from the source, the rest from peers through Ray's object store.

The replica starts one :class:`Exchange` actor per init, while placement runs. Each node task
joins it after its ``BeforeDownload`` (vetoes and modes respected) with the ranges it still has to
fetch; once every node has joined (or is gone), each range that two or more nodes need goes to one
of them, balancing bytes. A node reads its own share from the source first (:class:`SharedSource`
wraps the source for the downloader) and offers each range to its peers in pieces (:func:`piece_size`)
as they arrive, with ``ray.put``: the bytes stay in its node's object store, and peers pull them
through Ray's object manager while the range still downloads. It takes the rest from the owners'
offers. Whatever a peer cannot supply (its owner died, did not offer it within the memory bound, or
took too long) comes from the source: the same pinned version through the same verified writes,
only more origin bytes. The unit of assignment is the downloader's own range (``part_size_mb``, a
small file whole), so every byte still goes through one ``Downloader`` and one cache.
"""

from __future__ import annotations

import asyncio
import uuid
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
#: Exchange actors are named with this prefix (``ray list actors`` shows whose they are).
EXCHANGE_PREFIX = "node-init-exchange-"
#: A piece of a range: (range, index).
Piece = tuple[Unit, int]


def piece_size(part: int) -> int:
    """Owners offer a range in pieces of this size as they arrive (a quarter of the downloader's
    range, 4 MiB by default), so peers pull a range while it still downloads."""
    return max(MIN_SHARED_BYTES, part // 4)


def pieces_of(unit: Unit, piece: int) -> int:
    """How many pieces ``unit`` is offered in."""
    return max(1, -(-(unit[3] - unit[2]) // piece))


def _piece_bytes(unit: Unit, index: int, piece: int) -> int:
    return min(piece, unit[3] - unit[2] - index * piece)


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

    An owner offers each range in pieces (:func:`piece_size`) as they arrive from the source, so its
    peers pull a range while it still downloads. A consumer takes a range's pieces in order. The
    actor holds only object references (the bytes stay where they were put) and bookkeeping; every
    wait has a bound and returns ``None``/``False`` at it, after which the caller uses the source.

    Args:
        piece: The piece size in bytes (:func:`piece_size` of the downloader's range).
        nodes: The init's nodes, if known yet (else :meth:`expect` names them).
    """

    def __init__(self, piece: int, nodes: list[str] | None = None) -> None:
        self._piece = piece
        self._expected: set[str] | None = set(nodes) if nodes is not None else None
        self._needs: dict[str, set[Unit]] = {}
        self._owners: dict[Unit, str] | None = None
        self._consumers: dict[Unit, set[str]] = {}  # nodes still taking the range's pieces
        self._next: dict[Unit, dict[str, int]] = {}  # consumer -> the next piece it takes
        self._offers: dict[Piece, list[Any]] = {}
        self._pending: dict[Piece, set[str]] = {}  # consumers yet to take an offered piece
        self._skipped: dict[Unit, int] = {}  # unit -> first piece its owner will not offer
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

    async def expect(self, nodes: list[str]) -> None:
        """The nodes of this init (the actor starts before placement has named them)."""
        async with self._cv:
            if self._expected is None:
                self._expected = set(nodes)
                self._assign_if_ready()
                self._cv.notify_all()

    def _assign_if_ready(self) -> None:
        if self._owners is None and self._expected is not None and self._expected <= set(self._needs) | self._gone:
            self._owners = assign({n: u for n, u in self._needs.items() if n not in self._gone})
            for unit, owner in self._owners.items():
                self._consumers[unit] = {n for n, u in self._needs.items() if unit in u and n != owner}
                self._next[unit] = dict.fromkeys(self._consumers[unit], 0)

    async def join(self, node: str, units: list[Unit], timeout: float) -> dict[Unit, str]:
        """Record what ``node`` needs; once all have joined, the owners of the ranges it needs."""
        async with self._cv:
            if self._owners is None:
                self._needs[node] = set(units)
                self._assign_if_ready()
                self._cv.notify_all()
        if not await self._wait(lambda: self._owners is not None, timeout):
            async with self._cv:  # a node that never joined: share among those that did
                self._gone |= (self._expected or set(self._needs)) - set(self._needs)
                self._expected = self._expected or set(self._needs)
                self._assign_if_ready()
                self._cv.notify_all()
        assert self._owners is not None
        mine = self._needs.get(node, set())
        return {u: o for u, o in self._owners.items() if u in mine}

    async def room(self, node: str, nbytes: int, limit: int, timeout: float) -> bool:
        """Wait until ``node`` may hold ``nbytes`` more for its peers within ``limit``."""
        return await self._wait(lambda: self._held.get(node, 0) + nbytes <= limit, timeout)

    async def offer(self, unit: Unit, index: int, box: list[Any], nbytes: int) -> None:
        """The owner read piece ``index`` of ``unit``: ``box[0]`` is its object (boxed, so Ray passes
        the reference). Only consumers that have not taken that piece yet wait for it."""
        async with self._cv:
            pending = {n for n in self._consumers.get(unit, ()) if self._next[unit].get(n, 0) <= index}
            if pending and self._owners is not None:
                owner = self._owners[unit]
                self._offers[(unit, index)] = box
                self._pending[(unit, index)] = pending
                self._held[owner] = self._held.get(owner, 0) + nbytes
            self._cv.notify_all()

    async def skip(self, unit: Unit, index: int) -> None:
        """The owner will not offer ``unit`` from piece ``index`` on (its consumers go to the source)."""
        async with self._cv:
            self._skipped[unit] = min(self._skipped.get(unit, index), index)
            self._cv.notify_all()

    def _unavailable(self, piece: Piece) -> bool:
        unit, index = piece
        owner = (self._owners or {}).get(unit)
        return (index >= self._skipped.get(unit, index + 1) or owner in self._gone
                or (owner in self._finished and piece not in self._offers))

    async def take(self, node: str, unit: Unit, index: int, timeout: float) -> list[Any] | str | None:
        """The owner's offer of piece ``index`` of ``unit`` once made; ``None`` when it will not come
        within ``timeout`` (``node`` then reads the rest of the range from the source).

        ``"own"`` when its owner is gone and ``node`` is the first to ask: ``node`` now owns the
        range (fetches it from the source and offers it), so a dead node's share is fetched once
        more, not once per survivor.
        """
        piece = (unit, index)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            ready = await self._wait(lambda: piece in self._offers or self._unavailable(piece),
                                     max(0.0, deadline - loop.time()))
            async with self._cv:
                if piece in self._offers:
                    return self._offers[piece]
                owners = self._owners or {}
                if ready and owners.get(unit) in self._gone and unit not in self._skipped:
                    owners[unit] = node
                    self._drop_consumer(node, unit)
                    return "own"
                if not ready or self._unavailable(piece):
                    self._drop_consumer(node, unit)
                    self._cv.notify_all()
                    return None
                # Another survivor took the range over since this one woke: wait for its offer.

    def _taken(self, node: str, piece: Piece) -> None:
        pending = self._pending.get(piece)
        if pending is None:
            return
        pending.discard(node)
        if not pending:
            del self._pending[piece]
            self._offers.pop(piece, None)
            owner = (self._owners or {}).get(piece[0])
            if owner is not None and owner in self._held:
                self._held[owner] -= _piece_bytes(piece[0], piece[1], self._piece)

    def _drop_consumer(self, node: str, unit: Unit) -> None:
        """``node`` takes nothing more of ``unit``: release the pieces offered and waiting for it."""
        consumers = self._consumers.get(unit)
        if consumers is None or node not in consumers:
            return
        consumers.discard(node)
        for index in range(pieces_of(unit, self._piece)):
            self._taken(node, (unit, index))

    async def taken(self, node: str, unit: Unit, index: int) -> None:
        """``node`` wrote piece ``index`` of ``unit``: once every consumer has, its object is released."""
        async with self._cv:
            if unit in self._next:
                self._next[unit][node] = index + 1
            self._taken(node, (unit, index))
            if index + 1 >= pieces_of(unit, self._piece):
                self._consumers.get(unit, set()).discard(node)
            self._cv.notify_all()

    async def release(self, node: str, unit: Unit) -> None:
        """``node`` reads the rest of ``unit`` from the source (a peer's piece was lost or wrong)."""
        async with self._cv:
            self._drop_consumer(node, unit)
            self._cv.notify_all()

    async def finished(self, node: str) -> None:
        """``node``'s download ended: it takes nothing more; what it owns and did not offer, it never will."""
        async with self._cv:
            self._finished.add(node)
            for unit in list(self._consumers):
                self._drop_consumer(node, unit)
            self._cv.notify_all()

    async def gone(self, node: str) -> None:
        """``node`` died or failed: its offers may be lost and what it owns comes from the source."""
        async with self._cv:
            self._gone.add(node)
            self._assign_if_ready()
            for unit, owner in (self._owners or {}).items():
                if owner == node:  # its objects died with it
                    for index in range(pieces_of(unit, self._piece)):
                        self._offers.pop((unit, index), None)
                        self._pending.pop((unit, index), None)
            for unit in list(self._consumers):
                self._drop_consumer(node, unit)
            self._cv.notify_all()

    async def drained(self, node: str, timeout: float) -> bool:
        """Wait until nothing ``node`` offered is still wanted by a peer."""
        return await self._wait(lambda: self._held.get(node, 0) <= 0, timeout)


def start_exchange(local_node: str, part_size_mb: int) -> Any:
    """One :class:`Exchange` actor for this init, on the replica's node (it dies with the replica).

    Started before placement (a Ray actor takes a worker process, about a second here): the
    init names its nodes with :meth:`Exchange.expect` once placement has.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return ray.remote(Exchange).options(
        num_cpus=0, max_restarts=0, name=f"{EXCHANGE_PREFIX}{uuid.uuid4().hex[:12]}",
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=local_node, soft=True),
    ).remote(piece_size(part_size_mb * 1024 * 1024))


@attrs.define
class _Tee:
    """An own range being read: the next piece to offer, and its bytes received so far."""

    next: int = 0
    buf: bytearray = attrs.Factory(bytearray)

    def position(self, unit: Unit, piece: int) -> int:
        """The source offset the bytes kept reach."""
        return unit[2] + self.next * piece + len(self.buf)


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
        self._piece = piece_size(self._part)
        self._limit = cfg.share_memory_mb * 1024 * 1024
        self._wait_s = max(1.0, cfg.stall_timeout_s / 2)
        self._tees: dict[Unit, _Tee] = {}  # own ranges being read: the piece not yet offered
        self._taken_upto: dict[Unit, int] = {}  # peers' ranges: pieces taken so far
        self._released: set[Unit] = set()  # peers' ranges read from the source instead

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
        if owner is None or unit in self._released:
            yield from self.origin.stream(file, start, end)
            return
        pos = start
        for index in range((start - unit[2]) // self._piece, pieces_of(unit, self._piece)):
            lo = unit[2] + index * self._piece
            hi = lo + _piece_bytes(unit, index, self._piece)
            data = self._take(unit, index) if self._taken_upto.get(unit, 0) <= index else None
            if data == "own":  # its owner died and this node took the range over: fetch it and offer it
                self.owners[unit] = self.node_id
                self.stats.refetched += 1
                yield from self._tee(unit, file, pos, end, takeover=True)
                return
            if not isinstance(data, bytes):
                self._released.add(unit)
                self.stats.refetched += 1
                _log.info("range from the source instead of a peer", node_id=self.node_id, file=file.key,
                          offset=pos, owner=owner)
                yield from self.origin.stream(file, pos, end)
                return
            view = memoryview(data)[pos - lo:min(end, hi) - lo]
            for i in range(0, len(view), SLICE):
                yield view[i:i + SLICE]
            self.stats.peer_bytes += len(view)
            pos += len(view)
            self._taken_upto[unit] = index + 1
            self._tell("taken", self.node_id, unit, index)
            if pos >= end:
                return

    def _tee(self, unit: Unit, file: RemoteFile, start: int, end: int, *,
             takeover: bool = False) -> Iterator[bytes | memoryview]:
        """Stream from the source, offering each piece to the peers as soon as it has passed.

        A retried read continues the pieces kept so far if it starts where they stopped; one that
        cannot, offers nothing more of the range (its peers read the rest from the source). A
        takeover reads the whole range again, so every piece a peer still needs is offered.
        """
        tee: _Tee | None = _Tee()
        if start > unit[2] and not takeover:
            tee = self._tees.get(unit)
            if tee is None or tee.position(unit, self._piece) != start:
                self._tell("skip", unit, tee.next if tee is not None else 0)
                tee = None
        if tee is not None:
            self._tees[unit] = tee
        pos = unit[2] if takeover else start
        for chunk in self.origin.stream(file, pos, end):
            if tee is not None:
                tee.buf += chunk
                while tee.next < pieces_of(unit, self._piece) and \
                        len(tee.buf) >= _piece_bytes(unit, tee.next, self._piece):
                    size = _piece_bytes(unit, tee.next, self._piece)
                    if not self._offer(unit, tee.next, bytes(tee.buf[:size])):
                        self._tees.pop(unit, None)
                        tee = None
                        break
                    del tee.buf[:size]
                    tee.next += 1
            after = pos + len(chunk)
            if after > start:
                yield chunk if pos >= start else memoryview(chunk)[start - pos:]
            pos = after
        if tee is not None and tee.next >= pieces_of(unit, self._piece):
            self._tees.pop(unit, None)

    def _offer(self, unit: Unit, index: int, data: bytes) -> bool:
        """Offer one piece; ``False`` when over the memory bound for longer than a peer would wait
        (the rest of the range is then not offered: its peers read it from the source)."""
        import ray

        try:
            if not ray.get(self.exchange.room.remote(self.node_id, len(data), self._limit, self._wait_s),
                           timeout=self._wait_s + 30):
                self._tell("skip", unit, index)
                return False
            ray.get(self.exchange.offer.remote(unit, index, [ray.put(data)], len(data)), timeout=30)
        except (ray.exceptions.RayError, TimeoutError) as exc:  # the exchange is gone: peers use the source
            _log.info("cannot offer to peers", node_id=self.node_id, file=unit[0], error=type(exc).__name__)
            return False
        self.stats.offered += 1
        return True

    def _tell(self, method: str, *args: Any) -> None:
        """A one-way note to the exchange; if it is unreachable, only the sharing stops, not the download."""
        import ray

        try:
            getattr(self.exchange, method).remote(*args)
        except ray.exceptions.RayError as exc:
            _log.info("exchange unreachable", node_id=self.node_id, method=method, error=type(exc).__name__)

    def _take(self, unit: Unit, index: int) -> bytes | str | None:
        """A piece's bytes from its owner; ``"own"`` if this node took the range over; ``None``: use the source."""
        import ray

        try:
            box = ray.get(self.exchange.take.remote(self.node_id, unit, index, self._wait_s),
                          timeout=self._wait_s + 30)
            if box is None:
                return None
            if box == "own":
                return "own"
            data = ray.get(box[0], timeout=self._wait_s)
        except (ray.exceptions.RayError, TimeoutError) as exc:  # the owner died, the object was lost
            _log.info("peer's range unavailable", node_id=self.node_id, file=unit[0], error=type(exc).__name__)
            self._tell("release", self.node_id, unit)
            return None
        if not isinstance(data, bytes) or len(data) != _piece_bytes(unit, index, self._piece):
            self._tell("release", self.node_id, unit)
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
