"""Fetch once per cluster: disjoint shares from the source, the rest from peers through Ray's object store.

The replica opens one :class:`~node_init.cluster.Exchange` per init, on the cluster's long-lived
:class:`~node_init.cluster.ExchangeHub` actor, while placement runs.
Each node task joins it after its ``BeforeDownload`` (vetoes and modes respected) with the ranges it
still has to fetch; once every node has joined (or is gone), each range that two or more nodes need
goes to one of them, balancing bytes. A node does not wait for that: it starts on its provisional
share (the assignment if every node needs what it needs) and claims it when it joins. It reads its
own share from the source first (:class:`SharedSource` wraps the source for the downloader) and
offers each range to its peers in pieces (:func:`~node_init.cluster._exchange.piece_size`) as they
arrive, with ``ray.put``: the bytes stay in its node's object store, and peers pull them through
Ray's object manager while the range still downloads. It takes the rest from the owners' offers.
Whatever a peer cannot supply (its owner died, did not offer it within the memory bound, or took
too long) comes from the source: the same pinned version through the same verified writes, only
more origin bytes. The unit of assignment is the downloader's own range (``part_size_mb``, a small
file whole), so every byte still goes through one ``Downloader`` and one cache.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import structlog

from .._bounds import Bounds
from .._config import DownloadConfig, NodeInitConfig
from ..download import RemoteFile, Source, shares
from ._exchange import (
    MIN_SHARED_BYTES,
    InitExchange,
    Unit,
    close_exchange,
    piece_bytes,
    piece_size,
    pieces_of,
    start_exchange,
)
from ._metrics import timed_call
from ._view import SourceView, piece_sum

_log = structlog.get_logger("node_init.share")

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


def share_enabled(config: NodeInitConfig) -> bool:
    """Whether ``download.share`` applies to this source (sharing within an init, holders across inits)."""
    return shares(config.model_source, config.download.share)  # the source registry says which kinds share


def sharing(config: NodeInitConfig, nodes: list[str]) -> bool:
    """Whether an init on ``nodes`` runs an exchange (``download.share``, two or more nodes)."""
    return len(nodes) >= 2 and share_enabled(config)


@contextlib.contextmanager
def open_exchange(config: NodeInitConfig, *, wanted: bool) -> Iterator[InitExchange | None]:
    """The one place an init's exchange lives: opened on the cluster's hub if ``wanted`` (else
    ``None``), closed when the block ends, however it ends."""
    bounds = Bounds.of(config)
    exchange = start_exchange(config.download.part_size_mb, bounds.exchange_idle_s, bounds.hub_idle_s) \
        if wanted else None
    try:
        yield exchange
    finally:
        with contextlib.suppress(Exception):  # the hub is gone: it dropped the state with it
            close_exchange(exchange)


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
    takeovers: int = 0  # ranges this node took over from a dead or hung owner


class SharedSource(SourceView):
    """A :class:`~node_init.download.Source` that reads a node's own share from ``origin`` (offering
    it to peers) and the peers' shares from their offers, falling back to ``origin``.

    Each piece is offered with the CRC32C of the bytes its owner read from the origin, and checked
    against it where it is taken: a piece that differs (a fault in a node's memory or object store,
    or a node that alters what it serves) is named, and the rest of its range is read from the
    origin. An owner that vouches for wrong bytes is caught by the file's origin checksum, and named
    when the file is read again from the origin (:meth:`SourceView.from_origin`).

    The download need not wait for every node to join: until the exchange answers, the node reads
    by its :func:`provisional` owners (what the assignment is when every node needs the same
    files) and keeps the pieces it reads for its peers (within ``share_memory_mb``), offering them
    once the answer comes. Where the answer differs, the exchange says so: a range this node read
    but does not own is not offered, and one it owns but expected from a peer it reads itself.

    Args:
        origin: The model's source.
        exchange: The init's :class:`Exchange` actor.
        node_id: This node.
        owners: Owner of each shared range this node needs: from :meth:`Exchange.join`, or its
            :func:`provisional` owners while ``joining`` is pending.
        cfg: ``part_size_mb``, ``share_memory_mb`` and ``stall_timeout_s`` (two thirds of it bound
            a wait on a peer, all told: the downloader's stall check must not fire while a peer is
            late, and the source then still has a third of it to send the first bytes).
        joining: The pending :meth:`Exchange.join` call (an object reference), if any.
    """

    def __init__(self, origin: Source, exchange: Any, node_id: str, owners: dict[Unit, str],
                 cfg: DownloadConfig, *, joining: Any = None) -> None:
        super().__init__(origin)
        self.exchange = exchange
        self.node_id = node_id
        self.owners = owners
        self.stats = ShareStats()
        self._part = cfg.part_size_mb * 1024 * 1024
        self._piece = piece_size(self._part)
        self._limit = cfg.share_memory_mb * 1024 * 1024
        self._bounds = bounds = Bounds.of_download(cfg)
        self._wait_s = bounds.silence_s  # an owner silent this long counts as hung
        self._join_s = bounds.rpc(bounds.join_s)  # the exchange's own bound, plus its start
        self._tees: dict[Unit, _Tee] = {}  # own ranges being read: the piece not yet offered
        self._taken_upto: dict[Unit, int] = {}  # peers' ranges: pieces taken so far
        self._released: set[Unit] = set()  # peers' ranges read from the source instead
        self._lock = threading.Lock()
        self._joined = threading.Event()
        self._closed = False
        self._early: list[tuple[Unit, int, Any, int]] = []  # pieces read before the join answered
        self._early_bytes = 0
        self._stopped: set[Unit] = set()  # own ranges no longer offered
        self._took_over: set[Unit] = set()  # ranges this node was told it owns by a take
        self._settler: threading.Thread | None = None
        if joining is None:
            self._joined.set()
        else:
            self._settler = threading.Thread(target=self._settle, args=(joining,), daemon=True,
                                             name="node-init-share-join")
            self._settler.start()

    def _settle(self, joining: Any) -> None:
        """Wait for the exchange's assignment, then offer the pieces read before it came."""
        import ray

        try:
            with timed_call("join"):
                owners: dict[Unit, str] = ray.get(joining, timeout=self._join_s)
        except (ray.exceptions.RayError, TimeoutError) as exc:  # no exchange: every range from the source
            _log.warning("no exchange: fetching every range from the source", node_id=self.node_id,
                         error=type(exc).__name__)
            owners = {}
        with self._lock:
            # Ranges taken over since the answer was sent are this node's now (see stream()).
            self.owners = {**owners, **{u: self.node_id for u in self._took_over}}
            early, self._early, self._early_bytes = self._early, [], 0
            self._joined.set()
        if early and not self._closed:
            self._send_early(early)

    def _send_early(self, early: list[tuple[Unit, int, list[Any], int]]) -> None:
        import ray

        mine = [(u, i, box, n) for u, i, box, n in early if self.owners.get(u) == self.node_id]
        for unit in {u for u, _, _, _ in early if self.owners.get(u) != self.node_id}:
            self._stopped.add(unit)  # not this node's after all: its tee offers no more of it
            self._tell(self.exchange.release, self.node_id, unit)
        if not mine:
            return
        try:
            with timed_call("offer_all"):
                answers = ray.get(self.exchange.offer_all(self.node_id, mine, self._limit, self._wait_s),
                                  timeout=self._bounds.rpc(len(mine) * self._wait_s))
        except (ray.exceptions.RayError, TimeoutError) as exc:  # the exchange is gone: peers use the source
            _log.info("cannot offer to peers", node_id=self.node_id, error=type(exc).__name__)
            self._stopped.update(u for u, _, _, _ in mine)
            return
        for (unit, _, _, _), answer in zip(mine, answers, strict=True):
            if answer == "ok":
                self.stats.offered += 1
            else:
                self._stopped.add(unit)

    def __repr__(self) -> str:
        return f"SharedSource({self.origin!r}, node_id={self.node_id!r})"

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
            hi = lo + piece_bytes(unit, index, self._piece)
            data = self._take(file, unit, index) if self._taken_upto.get(unit, 0) <= index else None
            if data in ("own", "yours"):  # taken over (its owner died or went silent), or assigned here
                with self._lock:
                    self.owners[unit] = self.node_id
                    self._took_over.add(unit)
                self.stats.refetched += 1
                self.stats.takeovers += int(data == "own")
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
            if pos >= end:  # the next take would have said so; there is none
                self._tell(self.exchange.taken, self.node_id, unit, index)
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
                self._tell(self.exchange.skip, unit, tee.next if tee is not None else 0)
                tee = None
        if tee is not None:
            self._tees[unit] = tee
        pos = unit[2] if takeover else start
        for chunk in self.origin.stream(file, pos, end):
            if tee is not None:
                tee.buf += chunk
                while tee.next < pieces_of(unit, self._piece) and \
                        len(tee.buf) >= piece_bytes(unit, tee.next, self._piece):
                    size = piece_bytes(unit, tee.next, self._piece)
                    data = bytes(tee.buf[:size])
                    if not self._offer(unit, tee.next, data, piece_sum(data)):
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

    def _offer(self, unit: Unit, index: int, data: bytes, checksum: int) -> bool:
        """Offer one piece with the checksum of the bytes read from the origin; ``False`` when this
        node does not own ``unit`` after all, or is over the memory bound for longer than a peer
        would wait (the rest of the range is then not offered: its peers read it from the source).
        Before the exchange has answered, the piece is kept to offer then."""
        if unit in self._stopped:
            return False
        with self._lock:
            if not self._joined.is_set() and self._early_bytes + len(data) <= self._limit:
                self._early.append((unit, index, self._box(data, checksum), len(data)))
                self._early_bytes += len(data)
                return True
        if not self._joined.wait(self._wait_s):
            self._tell(self.exchange.skip, unit, index)
            return False
        return self._send(unit, index, self._box(data, checksum), len(data))

    def _box(self, data: bytes, checksum: int) -> list[Any]:
        """What an offer carries: the piece's object (Ray passes the reference), its checksum, its sender."""
        import ray

        return [ray.put(data), checksum, self.node_id]

    def _send(self, unit: Unit, index: int, box: list[Any], nbytes: int) -> bool:
        import ray

        if self.owners.get(unit) != self.node_id:  # the exchange gave it to another node, or shares nothing
            self._tell(self.exchange.release, self.node_id, unit)
            return False
        try:
            with timed_call("offer"):
                answer = ray.get(self.exchange.offer(self.node_id, unit, index, box, nbytes, self._limit,
                                                     self._wait_s), timeout=self._bounds.rpc(self._wait_s))
        except (ray.exceptions.RayError, TimeoutError) as exc:  # the exchange is gone: peers use the source
            _log.info("cannot offer to peers", node_id=self.node_id, file=unit[0], error=type(exc).__name__)
            return False
        if answer != "ok":
            return False
        self.stats.offered += 1
        return True

    def _tell(self, call: Callable[..., Any], *args: Any) -> None:
        """A one-way note to the exchange; if it is unreachable, only the sharing stops, not the download."""
        import ray

        try:
            call(*args)
        except ray.exceptions.RayError as exc:
            _log.info("exchange unreachable", node_id=self.node_id, method=call.__name__, error=type(exc).__name__)

    def _take(self, file: RemoteFile, unit: Unit, index: int) -> bytes | str | None:
        """A piece's bytes from its owner; ``"own"`` if this node took the range over, ``"yours"`` if the
        exchange assigned it here; ``None``: use the source.

        The wait for the offer is at most two waits (:attr:`_wait_s`, a third of the stall bound)
        however often the range changes hands meanwhile, so a late peer leaves the source a third
        of the stall bound to send the range's first bytes. Reading a piece's object, and taking it
        again after a lost one (twice at most), take what is left of those two waits, or half a
        wait if less is left: Ray's get of a hung owner's object was seen to return seconds late.
        """
        import ray

        end = time.monotonic() + self._bounds.peer_wait_s

        def remaining() -> float:  # a retry still gives the new owner half a wait
            return max(end - time.monotonic(), self._bounds.retry_s)

        data: object = None
        for _ in range(3):  # a piece whose object was lost: taken over here, or taken again from its new owner
            left = remaining()
            try:
                with timed_call("take"):
                    box = ray.get(self.exchange.take(self.node_id, unit, index, self._wait_s, left),
                                  timeout=self._bounds.rpc(left))
            except (ray.exceptions.RayError, TimeoutError) as exc:  # the exchange is gone
                _log.info("peer's range unavailable", node_id=self.node_id, file=unit[0], error=type(exc).__name__)
                return None
            if box is None:
                return None
            if box in ("own", "yours"):
                return str(box)
            get_s = min(self._wait_s, remaining())
            try:
                data = ray.get(box[0], timeout=get_s)
                break
            except (ray.exceptions.RayError, TimeoutError) as exc:  # the owner's node died, or it hangs
                _log.info("peer's piece lost", node_id=self.node_id, file=unit[0], index=index,
                          error=type(exc).__name__)
                if isinstance(exc, TimeoutError) and get_s < self._wait_s:
                    # Out of time, not proof of a lost piece: read the range alone, leave it to its owner.
                    self._tell(self.exchange.release, self.node_id, unit)
                    return None
                try:
                    with timed_call("lost"):
                        answer = ray.get(self.exchange.lost(self.node_id, unit, index, box),
                                         timeout=self._bounds.rpc(0))
                except (ray.exceptions.RayError, TimeoutError):
                    answer = None
                if answer in ("own", "yours"):
                    return str(answer)
                if answer != "retry":
                    self._tell(self.exchange.release, self.node_id, unit)
                    return None
        if not isinstance(data, bytes) or len(data) != piece_bytes(unit, index, self._piece):
            self._tell(self.exchange.release, self.node_id, unit)
            return None
        sender = str(box[2]) if len(box) > 2 else "?"
        lo = unit[2] + index * self._piece
        checksum = piece_sum(data)
        if len(box) < 2 or checksum != box[1]:  # not the bytes its owner read from the origin
            self.blame(sender, file, lo, "a piece differs from its owner's checksum")
            self._tell(self.exchange.release, self.node_id, unit)
            return None
        self.received(file, lo, data, sender, checksum)
        return data

    def finish(self, timeout: float) -> None:
        """This node's download ended: tell the exchange, then keep offered objects alive (bounded)
        until every peer has taken them (this worker owns them: they go when it exits)."""
        import ray

        if self._settler is not None and timeout > 0:  # what was read before the join goes out first
            self._settler.join(self._join_s)
        self._closed = True
        try:
            with timed_call("finished"):
                ray.get(self.exchange.finished(self.node_id), timeout=self._bounds.rpc(0))
            if self.stats.offered and timeout > 0:
                with timed_call("drained"):
                    drained = ray.get(self.exchange.drained(self.node_id, timeout), timeout=self._bounds.rpc(timeout))
                if not drained:
                    _log.warning("peers did not take every offered range in time", node_id=self.node_id)
        except (ray.exceptions.RayError, TimeoutError) as exc:  # the init is over (its exchange is gone)
            _log.info("exchange gone before this node finished", node_id=self.node_id, error=type(exc).__name__)
