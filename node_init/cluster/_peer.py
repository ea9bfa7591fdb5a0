"""A node's view of the model's source when the init shares (:class:`SharedSource`): its own share
from the origin, offered to its peers piece by piece, and the rest taken from its peers' offers,
falling back to the origin. The calls themselves are :class:`~node_init.cluster._client.ExchangeClient`'s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import attrs
import structlog

from .._bounds import TAKE_ATTEMPTS
from .._config import DownloadConfig
from ..download import RemoteFile, Source
from ._call import Unanswered, call, read
from ._client import ExchangeClient
from ._handles import Agent
from ._protocol import Answer, Unit, piece_bytes, pieces_of
from ._share import SLICE, unit_at
from ._view import piece_sum

_log = structlog.get_logger("node_init.share")


@attrs.define
class _Tee:
    """An own range being read: the next piece to offer, and its bytes received so far."""

    next: int = 0
    buf: bytearray = attrs.Factory(bytearray)

    def position(self, unit: Unit, piece: int) -> int:
        """The source offset the bytes kept reach."""
        return unit[2] + self.next * piece + len(self.buf)



class SharedSource(ExchangeClient):
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
        self._tees: dict[Unit, _Tee] = {}  # own ranges being read: the piece not yet offered
        super().__init__(origin, exchange, node_id, owners, cfg, joining=joining, agent=agent, needs=needs)


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
            if data in (Answer.OWN, Answer.YOURS):  # taken over (its owner died or went silent), or assigned here
                with self._lock:
                    self.owners[unit] = self.node_id
                    self._took_over.add(unit)
                self.stats.refetched += 1
                self.stats.takeovers += int(data == Answer.OWN)
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
        if self.owners.get(unit) != self.node_id:  # the exchange gave it to another node, or shares nothing
            self._release(unit)
            return False
        agent = self._agent_of(unit)
        if agent is None or (agent is self.agent and not self._adopted.is_set()):
            return False
        if agent.node != self.node_id:
            self._offered_to.add(agent.node)
        try:
            answer = call("offer", self._bounds.rpc(self._wait_s), agent.offer, self.node_id, unit, index, box,
                          nbytes, self._limit, self._wait_s)
        except Unanswered as exc:  # the agent is gone: peers use the source
            _log.info("cannot offer to peers", node_id=self.node_id, file=unit[0], error=exc.kind)
            return False
        if answer != Answer.OK:
            _log.info("offer not taken up", node_id=self.node_id, file=unit[0], index=index, answer=str(answer))
            return False
        self.stats.offered += 1
        return True

    def _take(self, file: RemoteFile, unit: Unit, index: int) -> bytes | Answer | None:
        """A piece's bytes from its owner; :attr:`Answer.OWN` if this node took the range over,
        :attr:`Answer.YOURS` if the exchange assigned it here; ``None``: use the source.

        The wait for the offer is at most two waits (:attr:`_wait_s`, a third of the stall bound)
        however often the range changes hands meanwhile, so a late peer leaves the source a third
        of the stall bound to send the range's first bytes. Reading a piece's object, and taking it
        again after a lost one (``TAKE_ATTEMPTS`` in all), take what is left of those two waits, or
        half a wait if less is left: Ray's get of a hung owner's object was seen to return seconds late.
        A take answers with every offer of the range already made from ``index`` on, so a node
        behind its peer asks once per range, not once per piece.
        """
        end = time.monotonic() + self._bounds.peer_wait_s

        def remaining() -> float:  # a retry still gives the new owner half a wait
            return max(end - time.monotonic(), self._bounds.retry_s)

        if not self._joined.wait(self._wait_s):  # who owns it is not known yet, nor which agent hands it out
            return None
        owner = self.owners.get(unit)
        if owner is None or owner == self.node_id:
            return None if owner is None else Answer.YOURS
        box = self._runs.get(unit, {}).pop(index, None)
        data: object = None
        for _ in range(TAKE_ATTEMPTS):  # a piece whose object was lost: taken over here, or taken again
            if box is None:
                left = remaining()
                agent = self._agent_of(unit)
                if agent is None:
                    return None
                try:
                    run = call("take", self._bounds.rpc(left), agent.take_run, self.node_id, unit, index,
                               self._wait_s, left, [self._published])
                except Unanswered as exc:
                    if not exc.dead:
                        _log.info("peer's range unavailable", node_id=self.node_id, file=unit[0], error=exc.kind)
                        return None
                    answer = self._rehome(unit)  # the agent died with its node: who hands it out now?
                    if answer != Answer.RETRY:
                        return answer
                    continue
                if run is None or isinstance(run, str):
                    return None if run is None else Answer(run)
                box = run[0]
                self._runs[unit] = {index + k: later for k, later in enumerate(run[1:], 1)}
            get_s = min(self._wait_s, remaining())
            try:
                data = read(box[0], get_s)
                break
            except Unanswered as exc:  # the owner's node died, or it hangs
                _log.info("peer's piece lost", node_id=self.node_id, file=unit[0], index=index, error=exc.kind)
                self._runs.pop(unit, None)
                if exc.late and get_s < self._wait_s:
                    # Out of time, not proof of a lost piece: read the range alone, leave it to its owner.
                    self._release(unit)
                    return None
                lost = self._lost(unit, index, box)
                if lost != Answer.RETRY:
                    if lost is None:
                        self._release(unit)
                    return lost
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

    def _lost(self, unit: Unit, index: int, box: list[Any]) -> Answer | None:
        """Tell the range's agent its piece could not be read: :attr:`Answer.OWN`, :attr:`Answer.YOURS`,
        :attr:`Answer.RETRY` or ``None`` (see :meth:`AgentState.lost`); its agent's node died too: ask the hub."""
        agent = self._agent_of(unit)
        if agent is None:
            return None
        try:
            answer = call("lost", self._bounds.actor_call_s, agent.lost, self.node_id, unit, index, box)
        except Unanswered as exc:
            if exc.dead:
                return self._rehome(unit)
            _log.info("cannot reach the exchange", node_id=self.node_id, file=unit[0], error=exc.kind)
            return None
        if answer == Answer.OWN:
            self._homes.setdefault(unit, self._home(unit))  # still handed out there, now offered by this node
        return None if answer is None else Answer(answer)

    def _rehome(self, unit: Unit) -> Answer | None:
        """The agent that handed ``unit`` out died (with its node): ask the hub. :attr:`Answer.OWN`:
        this node reads the range and hands it out from its own agent; :attr:`Answer.RETRY`: take it
        from the agent the hub named; ``None``: use the source."""
        home = self._home(unit)
        try:
            answer = call("rehome", self._bounds.actor_call_s, self.exchange.rehome, self.node_id, unit, home)
            if answer == Answer.OWN and self.agent is not None:
                call(None, self._bounds.actor_call_s, self.agent.home, unit, self.node_id)
        except Unanswered as exc:
            _log.info("cannot reach the exchange", node_id=self.node_id, file=unit[0], error=exc.kind)
            return None
        _log.info("a peer's agent is gone", node_id=self.node_id, file=unit[0], agent=home, now=str(answer))
        if answer is None:
            return None
        self._homes[unit] = self.node_id if answer == Answer.OWN else str(answer)
        return Answer.OWN if answer == Answer.OWN else Answer.RETRY
