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
    WATCH_EVERY_S,
    Agent,
    InitExchange,
    Unit,
    close_exchange,
    piece_bytes,
    piece_size,
    pieces_of,
    start_exchange,
)
from ._metrics import set_held, timed_call
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

    The pieces travel node to node: an owner offers them to its own :class:`ExchangeAgent`, and a
    peer takes them there; the hub is asked only who owns what (once per node) and, when an
    agent's node died, who hands out its ranges now.

    Args:
        origin: The model's source.
        exchange: The init's :class:`InitExchange` (the hub).
        node_id: This node.
        owners: Owner of each shared range this node needs: from :meth:`Exchange.join`, or its
            :func:`provisional` owners while ``joining`` is pending.
        cfg: ``part_size_mb``, ``share_memory_mb`` and ``stall_timeout_s`` (two thirds of it bound
            a wait on a peer, all told: the downloader's stall check must not fire while a peer is
            late, and the source then still has a third of it to send the first bytes).
        joining: The pending :meth:`ExchangeHub.join` call (an object reference), if any.
        agent: This node's :class:`Agent`.
        needs: The shared ranges this node fetches (default: those of ``owners``).
    """

    def __init__(self, origin: Source, exchange: Any, node_id: str, owners: dict[Unit, str],
                 cfg: DownloadConfig, *, joining: Any = None, agent: Agent | None = None,
                 needs: list[Unit] | None = None) -> None:
        super().__init__(origin)
        self.exchange = exchange
        self.node_id = node_id
        self.owners = owners
        self.agent = agent
        self.agents: dict[str, Agent] = {node_id: agent} if agent is not None else {}
        self._needs = needs or list(owners)
        self._assigned: dict[Unit, str] = {}  # the exchange's owners, as it answered (whose agent hands out what)
        self._homes: dict[Unit, str] = {}  # ranges handed out elsewhere than by their first owner's agent
        self._offered_to: set[str] = set()  # other nodes' agents this node offered pieces to (takeovers)
        self._runs: dict[Unit, dict[int, list[Any]]] = {}  # offers a take handed over ahead of need
        self._published: Any = None  # the exchange's answer (its object reference, on Ray)
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
        self._adopted = threading.Event()  # its agent hands out what this node owns
        self._ready = threading.Event()  # offers go out now (adopted, or never to be)
        self._settled = threading.Event()  # the join answered and what was read before it was offered
        self._closing = threading.Event()  # the settler's held-bytes reports stop
        self._closed = False
        self._early: list[tuple[Unit, int, Any, int]] = []  # pieces read before the join answered
        self._early_bytes = 0
        self._stopped: set[Unit] = set()  # own ranges no longer offered
        self._took_over: set[Unit] = set()  # ranges this node was told it owns by a take
        self._settler: threading.Thread | None = None
        if joining is None:
            self._joined.set()
            self._ready.set()
        else:
            self._settler = threading.Thread(target=self._settle, args=(joining,), daemon=True,
                                             name="node-init-share-join")
            self._settler.start()

    def _settle(self, joining: Any) -> None:
        """Wait for the exchange's assignment, have this node's agent hand out what it owns, then
        offer the pieces read before it came."""
        import ray

        owners: dict[Unit, str] = {}
        published: Any = None
        try:
            with timed_call("join"):
                box = ray.get(joining, timeout=self._join_s)
                published = box[0]
                assignment = ray.get(published, timeout=self._join_s) if isinstance(published, ray.ObjectRef) \
                    else published
            if assignment.member(self.node_id):
                self._published = published  # its takes carry it: an agent whose node hung adopts it from them
                self.agents = {node: agent for node, agent in assignment.agents.items() if agent is not None}
                owners = self._assigned = assignment.owners
            else:
                _log.warning("joined too late: fetching every range from the source", node_id=self.node_id)
        except (ray.exceptions.RayError, TimeoutError) as exc:  # no exchange: every range from the source
            _log.warning("no exchange: fetching every range from the source", node_id=self.node_id,
                         error=type(exc).__name__)
        with self._lock:
            # Ranges taken over since the answer was sent are this node's now (see stream()).
            self.owners = {**owners, **{u: self.node_id for u in self._took_over}}
            self._joined.set()  # its takes may go to peers' agents now; its offers wait for its own
        if owners and self.agent is not None:
            try:
                # Its agent learns what it hands out before any offer reaches it (a first agent on a
                # node is a process to start: the pieces read meanwhile wait here, within the memory bound).
                with timed_call("adopt"):
                    ray.get(self.agent.adopt(published), timeout=self._join_s)
                self._adopted.set()
            except (ray.exceptions.RayError, TimeoutError) as exc:
                _log.warning("no agent: peers fetch this node's share from the source", node_id=self.node_id,
                             error=type(exc).__name__)
        with self._lock:
            early, self._early, self._early_bytes = self._early, [], 0
            self._ready.set()
        if early and not self._closed:
            self._send_early(early)
        self._settled.set()
        while self._adopted.is_set() and self.agent is not None and not self._closing.wait(WATCH_EVERY_S):
            with contextlib.suppress(ray.exceptions.RayError, TimeoutError):  # a metric: best effort
                set_held(self.node_id, ray.get(self.agent.held(), timeout=self._join_s).get(self.node_id, 0))

    def _home(self, unit: Unit) -> str:
        """The node whose agent hands ``unit`` out: its owner's, unless that agent died."""
        return self._homes.get(unit) or self._assigned.get(unit) or self.node_id

    def _agent_of(self, unit: Unit) -> Agent | None:
        return self.agents.get(self._home(unit))

    def _send_early(self, early: list[tuple[Unit, int, list[Any], int]]) -> None:
        """Offer the pieces read before the offers could go out: one call per agent they go to (its
        own, and that of a range it took over from a silent owner meanwhile)."""
        import ray

        mine = [(u, i, box, n) for u, i, box, n in early if self.owners.get(u) == self.node_id]
        for unit in {u for u, _, _, _ in early if self.owners.get(u) != self.node_id}:
            self._stopped.add(unit)  # not this node's after all: its tee offers no more of it
            self._release(unit)
        by_agent: dict[str, list[tuple[Unit, int, list[Any], int]]] = {}
        for offer in mine:
            agent = self._agent_of(offer[0])
            if agent is None or (agent is self.agent and not self._adopted.is_set()):
                self._stopped.add(offer[0])
            else:
                by_agent.setdefault(agent.node, []).append(offer)
        for node, offers in by_agent.items():
            if node != self.node_id:
                self._offered_to.add(node)
            try:
                with timed_call("offer_all"):
                    answers = ray.get(self.agents[node].offer_all(self.node_id, offers, self._limit, self._wait_s),
                                      timeout=self._bounds.rpc(len(offers) * self._wait_s))
            except (ray.exceptions.RayError, TimeoutError) as exc:  # the agent is gone: peers use the source
                _log.info("cannot offer to peers", node_id=self.node_id, agent=node, error=type(exc).__name__)
                self._stopped.update(u for u, _, _, _ in offers)
                continue
            for (unit, index, _, _), answer in zip(offers, answers, strict=True):
                if answer == "ok":
                    self.stats.offered += 1
                elif unit not in self._stopped:
                    _log.info("offer not taken up", node_id=self.node_id, file=unit[0], index=index, answer=answer)
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
                self._note(unit, lambda a, i=index: a.taken(self.node_id, unit, i))  # type: ignore[misc]
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
                skip_at = tee.next if tee is not None else 0
                self._note(unit, lambda a: a.skip(unit, skip_at))
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
            if not self._ready.is_set() and self._early_bytes + len(data) <= self._limit:
                self._early.append((unit, index, self._box(data, checksum), len(data)))
                self._early_bytes += len(data)
                return True
        if not self._ready.wait(self._wait_s):
            self._note(unit, lambda a: a.skip(unit, index))
            return False
        return self._send(unit, index, self._box(data, checksum), len(data))

    def _box(self, data: bytes, checksum: int) -> list[Any]:
        """What an offer carries: the piece's object (Ray passes the reference), its checksum, its sender."""
        import ray

        return [ray.put(data), checksum, self.node_id]

    def _send(self, unit: Unit, index: int, box: list[Any], nbytes: int) -> bool:
        import ray

        if self.owners.get(unit) != self.node_id:  # the exchange gave it to another node, or shares nothing
            self._release(unit)
            return False
        agent = self._agent_of(unit)
        if agent is None or (agent is self.agent and not self._adopted.is_set()):
            return False
        if agent.node != self.node_id:
            self._offered_to.add(agent.node)
        try:
            with timed_call("offer"):
                answer = ray.get(agent.offer(self.node_id, unit, index, box, nbytes, self._limit, self._wait_s),
                                 timeout=self._bounds.rpc(self._wait_s))
        except (ray.exceptions.RayError, TimeoutError) as exc:  # the agent is gone: peers use the source
            _log.info("cannot offer to peers", node_id=self.node_id, file=unit[0], error=type(exc).__name__)
            return False
        if answer != "ok":
            _log.info("offer not taken up", node_id=self.node_id, file=unit[0], index=index, answer=answer)
            return False
        self.stats.offered += 1
        return True

    def _release(self, unit: Unit) -> None:
        """This node reads the rest of ``unit`` from the source: it takes nothing more of it."""
        self._released.add(unit)
        self._note(unit, lambda a: a.release(self.node_id, unit))

    def _note(self, unit: Unit, call: Callable[[Agent], Any]) -> None:
        """A one-way note to the agent that hands ``unit`` out; if it is unreachable, only the
        sharing stops, not the download."""
        import ray

        agent = self._agent_of(unit)
        if agent is None:
            return
        try:
            call(agent)
        except ray.exceptions.RayError as exc:
            _log.info("exchange agent unreachable", node_id=self.node_id, agent=agent.node, error=type(exc).__name__)

    def _take(self, file: RemoteFile, unit: Unit, index: int) -> bytes | str | None:
        """A piece's bytes from its owner; ``"own"`` if this node took the range over, ``"yours"`` if the
        exchange assigned it here; ``None``: use the source.

        The wait for the offer is at most two waits (:attr:`_wait_s`, a third of the stall bound)
        however often the range changes hands meanwhile, so a late peer leaves the source a third
        of the stall bound to send the range's first bytes. Reading a piece's object, and taking it
        again after a lost one (twice at most), take what is left of those two waits, or half a
        wait if less is left: Ray's get of a hung owner's object was seen to return seconds late.
        A take answers with every offer of the range already made from ``index`` on, so a node
        behind its peer asks once per range, not once per piece.
        """
        import ray

        end = time.monotonic() + self._bounds.peer_wait_s

        def remaining() -> float:  # a retry still gives the new owner half a wait
            return max(end - time.monotonic(), self._bounds.retry_s)

        if not self._joined.wait(self._wait_s):  # who owns it is not known yet, nor which agent hands it out
            return None
        owner = self.owners.get(unit)
        if owner is None or owner == self.node_id:
            return None if owner is None else "yours"
        box = self._runs.get(unit, {}).pop(index, None)
        data: object = None
        for _ in range(3):  # a piece whose object was lost: taken over here, or taken again from its new owner
            if box is None:
                left = remaining()
                agent = self._agent_of(unit)
                if agent is None:
                    return None
                try:
                    with timed_call("take"):
                        run = ray.get(agent.take_run(self.node_id, unit, index, self._wait_s, left,
                                                     [self._published]), timeout=self._bounds.rpc(left))
                except ray.exceptions.RayActorError:  # the agent died with its node: who hands it out now?
                    answer = self._rehome(unit)
                    if answer != "retry":
                        return answer
                    continue
                except (ray.exceptions.RayError, TimeoutError) as exc:
                    _log.info("peer's range unavailable", node_id=self.node_id, file=unit[0],
                              error=type(exc).__name__)
                    return None
                if run is None or run in ("own", "yours"):
                    return None if run is None else str(run)
                box = run[0]
                self._runs[unit] = {index + k: later for k, later in enumerate(run[1:], 1)}
            get_s = min(self._wait_s, remaining())
            try:
                data = ray.get(box[0], timeout=get_s)
                break
            except (ray.exceptions.RayError, TimeoutError) as exc:  # the owner's node died, or it hangs
                _log.info("peer's piece lost", node_id=self.node_id, file=unit[0], index=index,
                          error=type(exc).__name__)
                self._runs.pop(unit, None)
                if isinstance(exc, TimeoutError) and get_s < self._wait_s:
                    # Out of time, not proof of a lost piece: read the range alone, leave it to its owner.
                    self._release(unit)
                    return None
                answer = self._lost(unit, index, box)
                if answer != "retry":
                    if answer is None:
                        self._release(unit)
                    return answer
                box = None
        if box is None or not isinstance(data, bytes) or len(data) != piece_bytes(unit, index, self._piece):
            self._release(unit)
            return None
        sender = str(box[2]) if len(box) > 2 else "?"
        lo = unit[2] + index * self._piece
        checksum = piece_sum(data)
        if len(box) < 2 or checksum != box[1]:  # not the bytes its owner read from the origin
            self.blame(sender, file, lo, "a piece differs from its owner's checksum")
            self._release(unit)
            return None
        self.received(file, lo, data, sender, checksum)
        return data

    def _lost(self, unit: Unit, index: int, box: list[Any]) -> str | None:
        """Tell the range's agent its piece could not be read: ``"own"``, ``"yours"``, ``"retry"`` or
        ``None`` (see :meth:`Exchange.lost`); its agent's node died too: ask the hub."""
        import ray

        agent = self._agent_of(unit)
        if agent is None:
            return None
        try:
            with timed_call("lost"):
                answer: str | None = ray.get(agent.lost(self.node_id, unit, index, box), timeout=self._bounds.rpc(0))
        except ray.exceptions.RayActorError:
            return self._rehome(unit)
        except (ray.exceptions.RayError, TimeoutError):
            return None
        if answer == "own":
            self._homes.setdefault(unit, self._home(unit))  # still handed out there, now offered by this node
        return answer

    def _rehome(self, unit: Unit) -> str | None:
        """The agent that handed ``unit`` out died (with its node): ask the hub. ``"own"``: this node
        reads the range and hands it out from its own agent; ``"retry"``: take it from the agent the
        hub named; ``None``: use the source."""
        import ray

        home = self._home(unit)
        try:
            with timed_call("rehome"):
                answer = ray.get(self.exchange.rehome(self.node_id, unit, home), timeout=self._bounds.rpc(0))
            if answer == "own" and self.agent is not None:
                ray.get(self.agent.home(unit, self.node_id), timeout=self._bounds.rpc(0))
        except (ray.exceptions.RayError, TimeoutError) as exc:
            _log.info("cannot reach the exchange", node_id=self.node_id, file=unit[0], error=type(exc).__name__)
            return None
        _log.info("a peer's agent is gone", node_id=self.node_id, file=unit[0], agent=home, now=answer)
        if answer is None:
            return None
        self._homes[unit] = self.node_id if answer == "own" else str(answer)
        return "own" if answer == "own" else "retry"

    def finish(self, timeout: float) -> None:
        """This node's download ended: tell the agents it dealt with, then keep offered objects alive
        (bounded) until every peer has taken them (this worker owns them: they go when it exits),
        then end its own agent."""
        import ray

        if self._settler is not None and timeout > 0:  # what was read before the join goes out first
            self._settled.wait(self._join_s)
        self._closed = True
        deadline = time.monotonic() + timeout
        try:
            # Its own agent (it offers no more), those it offered to, those it still expected pieces from.
            homes = {self.node_id, *self._offered_to, *(self._home(u) for u in self._expected_from())}
            notes = [agent.finished(self.node_id) for home in sorted(homes) if (agent := self.agents.get(home))]
            with timed_call("finished"):  # notes: an agent gone with its node is not waited for
                ray.wait(notes, num_returns=len(notes), timeout=self._bounds.retry_s)
            waits = [agent.drained(None if home == self.node_id else self.node_id, timeout)
                     for home in sorted({self.node_id, *self._offered_to}) if (agent := self.agents.get(home))]
            if timeout > 0 and waits:
                with timed_call("drained"):
                    done, _ = ray.wait(waits, num_returns=len(waits),
                                       timeout=self._bounds.rpc(max(0.0, deadline - time.monotonic())))
                    drained = len(done) == len(waits) and all(ray.get(done))
                if not drained:
                    _log.warning("peers did not take every offered range in time", node_id=self.node_id)
                else:
                    set_held(self.node_id, 0)
        except (ray.exceptions.RayError, TimeoutError) as exc:  # the init is over (its exchange is gone)
            _log.info("exchange gone before this node finished", node_id=self.node_id, error=type(exc).__name__)
        finally:
            self._closing.set()
            if self.agent is not None and timeout <= 0:
                # Failed: what it owns comes from the source, read once by the first peer to ask.
                with contextlib.suppress(ray.exceptions.RayError):
                    self.agent.gone(self.node_id)

    def _expected_from(self) -> list[Unit]:
        """Peers' ranges this node needed and neither took whole nor let go of (it ended early)."""
        return [u for u in self._needs if self._assigned.get(u, self.node_id) != self.node_id
                and u not in self._released and self._taken_upto.get(u, 0) < pieces_of(u, self._piece)]
