"""The exchange of a shared download: who fetches which range, and the hand-off of offered pieces.

Two kinds of long-lived actors carry it, each holding one :class:`Exchange` per init under way:

- the cluster's one :class:`ExchangeHub` (named :data:`EXCHANGE_NAME`, on the head node) assigns the
  ranges: a ``join`` per node, one :class:`Assignment` published for all of them, and a ``rehome``
  only when a node's agent died. Its work grows with the nodes (and the distinct sets of ranges
  they need), never with the pieces;
- each node's :class:`ExchangeAgent` (named :data:`AGENT_PREFIX` + protocol + node id, pinned to
  that node) hands out the pieces of the ranges its node owns: the owner offers them there, its
  peers take them there (every offer already made, in one answer), and silence is judged there.

A Ray actor takes a worker process of its own, about a second and 1.4 CPU-seconds here: the first
init that shares pays it (the hub while placement runs, an agent while the nodes join), later ones
(new replicas, scale-ups, restarts) do not; each exits once idle. This module imports nothing but
the standard library, and it is sent to Ray by value: the actors' processes start without importing
``node_init`` (about 0.75 s of CPU).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import heapq
import sys
import uuid
from collections.abc import Callable
from typing import Any

#: A range: (key, version tag, start, end).
Unit = tuple[str, str, int, int]
#: Ranges smaller than this come from the source on every node (the object store's overhead wins).
MIN_SHARED_BYTES = 256 * 1024
#: The exchange's protocol version: a library that changes the calls names a new hub rather than talk
#: to an old one (which a new hub removes once it is idle).
PROTOCOL = 6
#: The hub actor's name and namespace (``ray list actors`` shows it): the prefix and the protocol.
EXCHANGE_PREFIX = "node-init-exchange-"
#: Each node's agent: this prefix, the protocol, ``-`` and the node's id.
AGENT_PREFIX = "node-init-agent-"
EXCHANGE_NAME = f"{EXCHANGE_PREFIX}{PROTOCOL}"
EXCHANGE_NAMESPACE = "node_init"
#: How long a new hub waits for an older hub to answer whether it is idle.
OLD_HUB_CALL_S = 30.0
#: Seconds between the hub's looks at its inits (expiry, idleness, the held-bytes gauge).
WATCH_EVERY_S = 1.0
#: A piece of a range: (range, index).
Piece = tuple[Unit, int]
#: An init on the hub: (its id, the piece size, how long it may go without a call).
InitKey = tuple[str, int, float]


def piece_size(part: int) -> int:
    """Owners offer a range in pieces of this size as they arrive (a quarter of the downloader's
    range, 4 MiB by default), so peers pull a range while it still downloads."""
    return max(MIN_SHARED_BYTES, part // 4)


def pieces_of(unit: Unit, piece: int) -> int:
    """How many pieces ``unit`` is offered in."""
    return max(1, -(-(unit[3] - unit[2]) // piece))


def piece_bytes(unit: Unit, index: int, piece: int) -> int:
    return min(piece, unit[3] - unit[2] - index * piece)


#: Nodes that need the same ranges: (those ranges, the nodes).
Group = tuple["set[Unit] | frozenset[Unit]", list[str]]


def assign(needs: dict[str, set[Unit]], claims: dict[str, set[Unit]] | None = None) -> dict[Unit, str]:
    """An owner for every range two or more nodes need: a needing node that claimed it (it started
    reading it already, see :func:`provisional`), else the needing node with the fewest bytes so far."""
    groups: dict[frozenset[Unit], list[str]] = {}
    for node, units in sorted(needs.items()):
        groups.setdefault(frozenset(units), []).append(node)
    return assign_groups(list(groups.items()), claims)


def assign_groups(groups: list[Group], claims: dict[str, set[Unit]] | None = None) -> dict[Unit, str]:
    """:func:`assign` for nodes given in groups that need the same ranges (usually one: every node
    needs the whole model), in time that grows with ranges times groups, not ranges times nodes:
    each group's nodes wait in a heap by (bytes so far, name)."""
    claims = claims or {}
    group_of = {node: g for g, (_, nodes) in enumerate(groups) for node in nodes}
    wanted: dict[Unit, list[int]] = {}
    for g, (units, nodes) in enumerate(groups):
        if nodes:
            for unit in units:
                wanted.setdefault(unit, []).append(g)
    shared = sorted((u for u, gs in wanted.items() if sum(len(groups[g][1]) for g in gs) > 1),
                    key=lambda u: (u[2] - u[3], u))
    claimers: dict[Unit, list[str]] = {}
    for node, units in claims.items():
        for unit in units:
            if node in group_of and group_of[node] in wanted.get(unit, ()):
                claimers.setdefault(unit, []).append(node)
    load = dict.fromkeys(group_of, 0)
    owners: dict[Unit, str] = {}
    rest: list[Unit] = []
    for unit in shared:  # claims first, so the balance counts them
        if unit in claimers:
            owner = min(claimers[unit], key=lambda n: (load[n], n))
            owners[unit] = owner
            load[owner] += unit[3] - unit[2]
        else:
            rest.append(unit)
    heaps = [sorted((load[n], n) for n in nodes) for _, nodes in groups]  # a sorted list is a heap
    for unit in rest:
        g = min(wanted[unit], key=lambda i: heaps[i][0])
        bytes_so_far, owner = heaps[g][0]
        owners[unit] = owner
        heapq.heapreplace(heaps[g], (bytes_so_far + unit[3] - unit[2], owner))
    return owners


def provisional(units: list[Unit], nodes: list[str]) -> dict[Unit, str]:
    """The owners :func:`assign` picks if every node of ``nodes`` needs ``units``: what a node reads
    for its peers while the exchange still waits for the others (the common case, so it claims them)."""
    return assign_groups([(set(units), sorted(nodes))]) if len(nodes) > 1 else {}


def needs_digest(units: list[Unit]) -> str:
    """What a node's needs are known by on the hub: nodes that need the same ranges send them once."""
    return hashlib.blake2b(repr(units).encode(), digest_size=16).hexdigest()


@dataclasses.dataclass(frozen=True)
class Assignment:
    """The exchange's answer to every node of an init, made once (the hub puts it in the object
    store once; every node reads that one object).

    Attributes:
        owners: The owner of every shared range.
        agents: Each node's :class:`ExchangeAgent` (where the ranges it owns are handed out).
        needs: Who needs what, in groups of nodes that need the same ranges (nodes that joined late
            or are gone are in none: they take nothing from peers).
    """

    owners: dict[Unit, str]
    agents: dict[str, Any]
    needs: list[Group]

    def member(self, node: str) -> bool:
        """Whether ``node`` takes part (it joined in time)."""
        return any(node in nodes for _, nodes in self.needs)


class Exchange:
    """One init's exchange: who owns which range, and the hand-off of offered pieces.

    It plays two parts. On the cluster's :class:`ExchangeHub` it assigns the ranges (:meth:`join`)
    and nothing else: one call per node. On each node's :class:`ExchangeAgent` it hands the ranges
    that node owns to the peers that take them (:meth:`adopt`, then :meth:`offer`, :meth:`take`
    and their notes), so the hub's work grows with the nodes, and each agent's with its own ranges.
    The same class serves both, and a single one serves both parts in process (tests).

    An owner offers each range in pieces (:func:`piece_size`) as they arrive from the source, so its
    peers pull a range while it still downloads. A consumer takes a range's pieces in order. It holds
    only object references (the bytes stay where they were put) and bookkeeping; every wait has a
    bound and returns ``None``/``False`` at it, after which the caller uses the source.

    Args:
        piece: The piece size in bytes (:func:`piece_size` of the downloader's range).
        nodes: The init's nodes, if known yet (else :meth:`expect` names them).
        on_held: Told each change of the bytes a node holds for its peers (node, change).
        publish: Makes the one answer every :meth:`join` returns (the hub puts it in Ray's object
            store, so it is serialized once, not once per node).
        agent: It serves an :class:`ExchangeAgent` (a take for a range not adopted yet waits for it).
    """

    def __init__(self, piece: int, nodes: list[str] | None = None,
                 on_held: Callable[[str, int], None] | None = None,
                 publish: Callable[[Assignment], Any] | None = None, agent: bool = False) -> None:
        self._piece = piece
        self._agent = agent  # an agent learns its ranges by adopt() and home(): a take waits for them
        self._on_held = on_held
        self._publish = publish or (lambda a: a)
        self._expected: set[str] | None = set(nodes) if nodes is not None else None
        self._groups: dict[str, tuple[set[Unit], list[str]]] = {}  # needs digest -> (ranges, nodes)
        self._joined: set[str] = set()
        self._agents: dict[str, Any] = {}
        self._claims: dict[str, set[Unit]] = {}
        self._owners: dict[Unit, str] | None = None
        self._answer: Any = None
        self._needs: list[Group] = []  # who needs what, once assigned (or adopted)
        self._consumers: dict[Unit, set[str]] = {}  # nodes still taking the range's pieces
        self._next: dict[Unit, dict[str, int]] = {}  # consumer -> the next piece it takes
        self._offers: dict[Piece, list[Any]] = {}
        self._pending: dict[Piece, set[str]] = {}  # consumers yet to take an offered piece
        self._skipped: dict[Unit, int] = {}  # unit -> first piece its owner will not offer
        self._held: dict[str, int] = {}  # owner -> bytes offered and not yet taken by every consumer
        self._finished: set[str] = set()
        self._gone: set[str] = set()
        self._offered_by: dict[Piece, str] = {}
        self._taken_over: dict[Unit, float] = {}  # range -> when a consumer took it over (loop time)
        self._heard: dict[str, float] = {}  # owner -> when it last offered (or waited for room to)
        self._homes: dict[Unit, str] = {}  # on the hub: where a range is handed out, once its home died
        self.adopted = False  # on an agent: it knows the assignment
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
        if self._owners is None and self._expected is not None and self._expected <= self._joined | self._gone:
            needs: list[Group] = [(units, [n for n in nodes if n not in self._gone])
                                  for units, nodes in self._groups.values()]
            self._needs = [(units, nodes) for units, nodes in needs if nodes]
            self._owners = assign_groups(self._needs, self._claims)
            self._answer = self._publish(Assignment(self._owners, dict(self._agents), self._needs))

    def knows(self, digest: str) -> bool:
        """Whether a node already sent the ranges known by ``digest`` (see :func:`needs_digest`)."""
        return digest in self._groups

    async def join(self, node: str, units: list[Unit] | None, timeout: float, claimed: list[Unit] | None = None,
                   *, agent: Any = None, digest: str | None = None) -> Any:
        """Record what ``node`` needs (``units``, known by ``digest``: ``None`` if the hub has them
        under it already), the ranges it already reads for its peers (``claimed``) and its
        :class:`ExchangeAgent`; once all have joined, the :class:`Assignment` (published)."""
        async with self._cv:
            if self._owners is None:
                key = digest if digest is not None else f"node:{node}"
                if key not in self._groups:
                    self._groups[key] = (set(units or ()), [])
                self._groups[key][1].append(node)
                self._joined.add(node)
                self._claims[node] = set(claimed or ())
                if agent is not None:
                    self._agents[node] = agent
                self._assign_if_ready()
                if self._owners is not None:  # the others wait for the assignment, not each join
                    self._cv.notify_all()
        if not await self._wait(lambda: self._owners is not None, timeout):
            async with self._cv:  # a node that never joined: share among those that did
                self._gone |= (self._expected or self._joined) - self._joined
                self._expected = self._expected or set(self._joined)
                self._assign_if_ready()
                self._cv.notify_all()
        return self._answer

    async def adopt(self, assignment: Assignment, home: str) -> None:
        """On ``home``'s agent: hand out the ranges ``home`` owns, to the nodes that need them."""
        async with self._cv:
            if self.adopted:
                return  # once: by the owner, or by a peer's take that came first (the owner may hang)
            self.adopted = True
            self._needs = assignment.needs
            self._owners = {u: o for u, o in assignment.owners.items() if o == home} | (self._owners or {})
            self._heard[home] = asyncio.get_running_loop().time()  # its silence counts from here
            self._cv.notify_all()

    async def rehome(self, node: str, unit: Unit, home: str) -> str | None:
        """On the hub: ``unit``'s agent, on ``home``, is unreachable (its node died). ``"own"`` to the
        first node to say so (it reads the range and hands it out from its own agent, see
        :meth:`home`), the node whose agent hands it out now to the others, ``None`` if unshared."""
        async with self._cv:
            owner = (self._owners or {}).get(unit)
            if owner is None:
                return None
            now = self._homes.get(unit, owner)
            if now != home:
                return now
            self._homes[unit] = node
            return "own"

    async def home(self, unit: Unit, node: str) -> None:
        """On ``node``'s agent: ``node`` took ``unit`` over from a node that died, and hands it out here."""
        async with self._cv:
            self._owners = {**(self._owners or {}), unit: node}
            self._taken_over[unit] = asyncio.get_running_loop().time()
            self._cv.notify_all()

    def _ensure(self, unit: Unit) -> set[str]:
        """The consumers still taking ``unit`` (worked out on first use: most ranges of a large model
        are never asked about on a given agent, and the hub asks about none)."""
        consumers = self._consumers.get(unit)
        if consumers is None:
            owner = (self._owners or {}).get(unit)
            if owner is None:
                return set()  # not handed out here
            out = self._finished | self._gone
            consumers = self._consumers[unit] = {n for units, nodes in self._needs if unit in units
                                                 for n in nodes if n != owner and n not in out}
            self._next[unit] = dict.fromkeys(consumers, 0)
        return consumers

    async def room(self, node: str, nbytes: int, limit: int, timeout: float) -> bool:
        """Wait until ``node`` may hold ``nbytes`` more for its peers within ``limit``."""
        return await self._wait(lambda: self._held.get(node, 0) + nbytes <= limit, timeout)

    async def offer(self, node: str, unit: Unit, index: int, box: list[Any], nbytes: int,
                    limit: int | None = None, timeout: float = 0.0) -> str:
        """``node`` read piece ``index`` of ``unit``: ``box[0]`` is its object (boxed, so Ray passes
        the reference). Only consumers that have not taken that piece yet wait for it.

        Returns ``"ok"``; ``"refused"`` when ``node`` does not own ``unit`` (its provisional view
        was wrong: it takes nothing of it from a peer either); ``"full"`` when ``node`` holds
        ``limit`` bytes for its peers for longer than ``timeout`` (it offers no more of the range,
        whose consumers read the rest from the source). One call per piece, room included.
        """
        self._heard[node] = asyncio.get_running_loop().time()  # busy offering, or waiting for room: alive
        if limit is not None and not await self.room(node, nbytes, limit, timeout):
            await self.skip(unit, index)
            return "full"
        async with self._cv:
            self._heard[node] = asyncio.get_running_loop().time()
            if self._owners is None or self._owners.get(unit) != node:
                self._drop_consumer(node, unit)
                self._cv.notify_all()
                return "refused"
            pending = {n for n in self._ensure(unit) if self._next[unit].get(n, 0) <= index}
            if pending:
                replaced = self._offered_by.get((unit, index))
                if replaced is not None and (unit, index) in self._pending and replaced in self._held:
                    self._hold(replaced, -nbytes)  # an old owner's offer of it, never to be taken
                self._offers[(unit, index)] = box
                self._offered_by[(unit, index)] = node
                self._pending[(unit, index)] = pending
                self._hold(node, nbytes)
            self._cv.notify_all()
            return "ok"

    async def offer_all(self, node: str, offers: list[tuple[Unit, int, list[Any], int]], limit: int,
                        timeout: float) -> list[str]:
        """:meth:`offer` each of ``offers`` in order, in one call (the pieces read before the
        assignment); after a range's first answer other than ``"ok"``, its later pieces are ``"stopped"``."""
        out: list[str] = []
        stopped: set[Unit] = set()
        for unit, index, box, nbytes in offers:
            answer = "stopped" if unit in stopped else await self.offer(node, unit, index, box, nbytes, limit, timeout)
            if answer != "ok":
                stopped.add(unit)
            out.append(answer)
        return out

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

    async def take(self, node: str, unit: Unit, index: int, timeout: float,
                   budget: float | None = None) -> list[Any] | str | None:
        """The owner's offer of piece ``index`` of ``unit`` once made; ``None`` when it will not come
        in time (``node`` then reads the rest of the range from the source). Asking for piece
        ``index`` says ``node`` has written piece ``index - 1`` (see :meth:`taken`).

        ``"yours"`` when the assignment gave ``node`` the range (it differs from its provisional
        view). ``"own"`` when the range's owner is gone, or offered nothing at all (of any range) for
        a whole ``timeout`` without finishing, and ``node`` is the first to ask (a takeover): either
        way ``node`` then fetches it from the source and offers it, so a dead or hung node's share is
        fetched once more, not once per survivor.
        The old owner's later offers of it are refused. Silence is the owner's, not the range's: an
        owner busy offering its other ranges is not hung, and the wait then ends at the budget with
        ``None`` (``node`` reads the rest alone; the range stays its owner's).

        Args:
            node: The asking node.
            unit: The range.
            index: The piece of it.
            timeout: How long an owner may be silent before it counts as hung.
            budget: The whole wait, however often the range changes hands meanwhile (default
                ``2 * timeout``). A range taken over while ``node`` waited gives its new owner up
                to ``timeout`` more, within this; a wait shorter than ``timeout`` never takes over.
        """
        piece = (unit, index)
        loop = asyncio.get_running_loop()
        start = loop.time()
        budget = 2 * timeout if budget is None else budget
        cap = start + budget
        if index > 0:  # a consumer asks for a piece once it has written the one before (one call, not two)
            await self.taken(node, unit, index - 1)
        if not await self._wait(lambda: self._owners is not None and (not self._agent or unit in self._owners),
                                max(0.0, min(cap, start + timeout) - loop.time())):
            return None  # asked before every node joined, and they did not in time
        owner = (self._owners or {}).get(unit)
        if owner is None or owner == node:
            return None if owner is None else "yours"

        def silent_until() -> float:
            """When the range's owner counts as hung if it stays silent: a whole ``timeout`` after this
            wait began, its last offer, or its taking the range over, whichever is last."""
            holder = (self._owners or {}).get(unit, "")
            return max(start, self._heard.get(holder, start), self._taken_over.get(unit, start)) + timeout

        while True:
            ready = await self._wait(lambda: piece in self._offers or self._unavailable(piece),
                                     max(0.0, min(cap, silent_until()) - loop.time()))
            async with self._cv:
                if piece in self._offers:
                    return self._offers[piece]
                now = loop.time()
                owners = self._owners or {}
                # Its owner is gone, or silent for a whole wait though not finished (a node Ray has
                # not declared dead yet, or hung): the first node to ask reads the range and offers
                # it, so it crosses the origin link once more, not once per waiting node.
                silent = not ready and now >= silent_until() and owners.get(unit) not in self._finished
                if not ready and not silent and now < cap:
                    continue  # its owner was heard from meanwhile (or just took it over): wait on
                if (silent or (ready and owners.get(unit) in self._gone)) and unit not in self._skipped:
                    owners[unit] = node
                    self._taken_over[unit] = now
                    self._drop_consumer(node, unit)
                    self._cv.notify_all()
                    return "own"
                if not ready or self._unavailable(piece):
                    self._drop_consumer(node, unit)
                    self._cv.notify_all()
                    return None
                # Another survivor took the range over since this one woke: wait for its offer.

    async def take_run(self, node: str, unit: Unit, index: int, timeout: float,
                       budget: float | None = None) -> list[list[Any]] | str | None:
        """:meth:`take`, answered with piece ``index``'s offer and every offer of the range after it
        that is already made (a consumer behind its owner asks once for all of them)."""
        first = await self.take(node, unit, index, timeout, budget)
        if not isinstance(first, list):
            return first
        run = [first]
        while (unit, index + len(run)) in self._offers:
            run.append(self._offers[(unit, index + len(run))])
        return run

    def _taken(self, node: str, piece: Piece) -> None:
        pending = self._pending.get(piece)
        if pending is None:
            return
        pending.discard(node)
        if not pending:
            del self._pending[piece]
            self._offers.pop(piece, None)
            offerer = self._offered_by.pop(piece, None)  # the owner then: a range may have changed hands
            if offerer is not None and offerer in self._held:
                self._hold(offerer, -piece_bytes(piece[0], piece[1], self._piece))

    def _drop_consumer(self, node: str, unit: Unit) -> None:
        """``node`` takes nothing more of ``unit``: release the pieces offered and waiting for it."""
        consumers = self._ensure(unit)
        if node not in consumers:
            return
        consumers.discard(node)
        for index in range(pieces_of(unit, self._piece)):
            self._taken(node, (unit, index))

    async def taken(self, node: str, unit: Unit, index: int) -> None:
        """``node`` wrote piece ``index`` of ``unit`` (and every piece of it before, which a
        :meth:`take_run` may have handed it in one answer): once every consumer has, an object is released."""
        async with self._cv:
            first = index
            if (self._owners or {}).get(unit) is not None:
                self._ensure(unit)
                first = min(self._next[unit].get(node, index), index)
                self._next[unit][node] = index + 1
            for i in range(first, index + 1):
                self._taken(node, (unit, i))
            if index + 1 >= pieces_of(unit, self._piece):
                self._consumers.get(unit, set()).discard(node)
            self._cv.notify_all()

    async def lost(self, node: str, unit: Unit, index: int, box: list[Any] | None = None) -> str | None:
        """``node`` could not read the object of piece ``index`` that :meth:`take` gave it (its owner's
        node died, or the owner hangs and cannot say where the object is).

        Returns ``"own"`` to the first node to say so about that owner: it reads the range from the
        source and offers it; the owner's offers of it are withdrawn, so the others wait for the
        new owner's, and the range crosses the origin link once more, not once per node. ``"retry"``
        when another node took it over already, or the piece was offered again since ``box`` (the
        offer ``node`` could not read) was: take the piece again; ``"yours"``: ``node`` owns the
        range already; ``None``: use the source.
        """
        async with self._cv:
            owners = self._owners or {}
            owner, offerer = owners.get(unit), self._offered_by.get((unit, index))
            if owner == node:
                return "yours"
            if owner is None or unit in self._skipped:
                self._drop_consumer(node, unit)
                self._cv.notify_all()
                return None
            current = self._offers.get((unit, index))
            if box is not None and current is not None and current[0] != box[0]:
                return "retry"  # a newer offer of the piece (its new owner's) waits to be taken
            if unit in self._taken_over and offerer != owner:
                return "retry"  # taken over since that offer: its new owner offers again
            owners[unit] = node
            self._taken_over[unit] = asyncio.get_running_loop().time()
            self._drop_consumer(node, unit)
            for i in range(pieces_of(unit, self._piece)):  # the old owner's objects are unreadable
                for consumer in list(self._pending.get((unit, i), ())):
                    self._taken(consumer, (unit, i))
            self._cv.notify_all()
            return "own"

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

    async def drained(self, node: str | None, timeout: float) -> bool:
        """Wait until nothing ``node`` offered (any node: ``None``) is still wanted by a peer."""
        if node is None:
            return await self._wait(lambda: all(n <= 0 for n in self._held.values()), timeout)
        return await self._wait(lambda: self._held.get(node, 0) <= 0, timeout)

    def _hold(self, node: str, delta: int) -> None:
        self._held[node] = self._held.get(node, 0) + delta
        if self._on_held is not None:
            self._on_held(node, delta)

    def held(self) -> dict[str, int]:
        """Bytes each node holds in its object store for peers that have not taken them yet."""
        return {node: n for node, n in self._held.items() if n > 0}


class _Keeper:
    """A long-lived actor that holds one :class:`Exchange` per init under way (the hub, an agent).

    An init's state is made by its first call and dropped by :meth:`close`, or once nothing called
    it for its ``bound_s`` (a replica that died mid-init). Calls for a closed init raise
    ``LookupError``: a late node then reads from the source, as it does when the actor is
    unreachable. With no init open for ``idle_s`` it exits, and the next init that needs it starts
    a new one.
    """

    def __init__(self, idle_s: float = 600.0) -> None:
        self._inits: dict[str, Exchange] = {}
        self._expires: dict[str, float] = {}
        self._closed: collections.deque[str] = collections.deque(maxlen=4096)
        self._idle_s = idle_s
        self._last_call = 0.0
        self._watcher: asyncio.Task[None] | None = None

    def _make(self, piece: int) -> Exchange:
        raise NotImplementedError

    async def _started(self) -> None:
        """Once, when the first call arrives."""

    def _get(self, init: str, piece: int, bound_s: float) -> Exchange:
        now = asyncio.get_running_loop().time()  # the loop's clock: the exchanges' waits use it too
        self._last_call = now
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        self._expire(now, keep=init)
        if init in self._closed:
            raise LookupError(f"exchange {init} is closed: its init ended")
        exchange = self._inits.get(init)
        if exchange is None:
            exchange = self._inits[init] = self._make(piece)
        self._expires[init] = now + bound_s
        return exchange

    def _expire(self, now: float, keep: str = "") -> None:
        for old in [i for i, at in self._expires.items() if at < now and i != keep]:
            self._drop(old)

    async def _watch(self) -> None:
        """Exit once idle for ``idle_s`` (checked a few times per bound)."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):  # best effort: what it does first is never worth the actor
            await self._started()
        while True:
            await asyncio.sleep(min(self._idle_s / 4, WATCH_EVERY_S))
            now = loop.time()
            self._expire(now)
            if self._inits:
                self._last_call = now  # idle is measured from the last open init, not the last call
            elif now - self._last_call >= self._idle_s:
                self._exit()
                return

    def _exit(self) -> None:
        """End this actor for good (a detached actor restarts after a crash, not after this)."""
        import ray

        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    async def exit_if_idle(self) -> bool:
        """Exit if no init is open (a newer hub asks); whether it will."""
        if self._inits:
            return False
        asyncio.get_running_loop().call_soon(self._exit)  # after this answer is sent
        return True

    async def close(self, init: str) -> None:
        """Drop ``init``'s exchange (its references with it, so Ray frees the pieces)."""
        self._last_call = asyncio.get_running_loop().time()
        self._drop(init)

    def _drop(self, init: str) -> None:
        self._inits.pop(init, None)
        self._expires.pop(init, None)
        if init not in self._closed:
            self._closed.append(init)

    async def inits(self) -> list[str]:
        """The inits whose exchange is held (for tests and ``ray`` debugging)."""
        return sorted(self._inits)


class ExchangeHub(_Keeper):
    """The cluster's one long-lived actor that assigns the ranges of every init under way.

    An init's state is made by its first call (the replica's :meth:`open`, or a node's call that
    overtook it); see :class:`_Keeper` for its end. Dropping an init tells its nodes' agents.
    The hub ends: with no init open and no call for ``idle_s`` (the latest :meth:`open` says how
    long, from ``download.share_hub_idle_s``), it exits, and the next shared init starts a new one.
    Started, it removes the hubs of older protocol versions that are idle (never one with an init
    open: a rolling upgrade's older replicas may still use it).
    """

    def __init__(self) -> None:
        super().__init__()
        self.removed: list[str] = []  # older hubs this one removed
        self._reading: dict[tuple[str, str], asyncio.Future[Any]] = {}  # (init, digest) -> its ranges, being read

    def _make(self, piece: int) -> Exchange:
        return Exchange(piece, publish=_put)

    async def _started(self) -> None:
        self.removed = await self._remove_older()

    def _drop(self, init: str) -> None:
        exchange = self._inits.get(init)
        for agent in (exchange._agents.values() if exchange is not None else ()):
            if _reachable(agent):
                with contextlib.suppress(Exception):  # a dead node's agent: nothing to drop
                    agent.close()
        for read in [k for k in self._reading if k[0] == init]:
            del self._reading[read]
        super()._drop(init)

    async def open(self, init: str, piece: int, bound_s: float, idle_s: float = 600.0) -> None:
        """Make ``init``'s exchange; it is dropped after ``bound_s`` seconds without a call. The hub
        exits after ``idle_s`` with no init open."""
        self._idle_s = idle_s
        self._get(init, piece, bound_s)

    async def _remove_older(self) -> list[str]:
        """End every idle hub of an older protocol version in this cluster; their names."""
        import ray
        from ray.util import list_named_actors

        removed: list[str] = []
        if not ray.is_initialized():  # a hub outside Ray (tests): no other hubs, and no Ray to start
            return removed
        for entry in await asyncio.to_thread(list_named_actors, True):
            name, version = entry["name"], entry["name"].removeprefix(EXCHANGE_PREFIX)
            if entry["namespace"] != EXCHANGE_NAMESPACE or not version.isdigit() or int(version) >= PROTOCOL:
                continue
            old = ray.get_actor(name, namespace=EXCHANGE_NAMESPACE)
            try:
                ask: Any = old.exit_if_idle
            except AttributeError:  # before version 5 a hub cannot end itself: ask, then end it here
                if await asyncio.wait_for(old.inits.remote(), OLD_HUB_CALL_S):
                    continue
                ray.kill(old, no_restart=True)
            else:
                if not await asyncio.wait_for(ask.remote(), OLD_HUB_CALL_S):
                    continue
            removed.append(name)
        return removed

    # One method per call a node makes of the hub (a type checker sees each: no dispatch by name).
    # ``key`` is the init's (id, piece size, idle bound): the first call of an init makes its state.
    # The pieces themselves never pass through here: each node's ExchangeAgent hands out its own.

    async def expect(self, key: InitKey, nodes: list[str]) -> None:
        await self._get(*key).expect(nodes)

    async def join(self, key: InitKey, node: str, digest: str, units: list[Any], timeout: float,
                   claimed: list[Unit], agent: list[Any]) -> list[Any]:
        """:meth:`Exchange.join`; ``units`` boxes the node's ranges, made into the exchange's sets only
        if no node sent the same ones (``digest``) before; ``agent`` boxes its :class:`ExchangeAgent`.
        The answer boxes the one published :class:`Assignment`."""
        exchange = self._get(*key)
        wanted = None
        if not exchange.knows(digest):  # nodes join at once: the first to ask reads, the others wait for it
            reading = self._reading.get((key[0], digest))
            if reading is None:
                reading = self._reading[(key[0], digest)] = asyncio.ensure_future(_resolve(units[0]))
            wanted = await reading
        return [await exchange.join(node, wanted, timeout, claimed, agent=agent[0], digest=digest)]

    async def rehome(self, key: InitKey, node: str, unit: Unit, home: str) -> str | None:
        return await self._get(*key).rehome(node, unit, home)

    async def gone(self, key: InitKey, node: str) -> None:
        """:meth:`Exchange.gone`, told to every other node's agent too: what they hold for ``node``
        is released (its owners stop waiting for it to take), and what it offered there is withdrawn."""
        exchange = self._get(*key)
        await exchange.gone(node)
        for peer, agent in exchange._agents.items():
            if peer != node and _reachable(agent):
                with contextlib.suppress(Exception):  # an agent gone too: nothing to tell
                    agent.gone(node)

    async def removed_hubs(self) -> list[str]:
        """The older hubs this one removed when it started (for tests and ``ray`` debugging)."""
        return list(self.removed)


def _reachable(agent: Any) -> bool:
    """Whether ``agent`` is a node's :class:`Agent` (in-process tests name agents by strings). Not an
    ``isinstance`` check: the class travels by value, and each process that sends one has its own."""
    return hasattr(agent, "actor") and hasattr(agent, "key")


def _put(assignment: Assignment) -> Any:
    """The hub's one copy of an init's answer, in Ray's object store (as is outside an actor: tests)."""
    import ray

    in_actor = ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    return ray.put(assignment) if in_actor else assignment


async def _resolve(value: Any) -> Any:
    """An object reference's value (a plain value as is: in-process tests pass values)."""
    return value if isinstance(value, list | dict | tuple) or value is None else await value


class ExchangeAgent(_Keeper):
    """A node's long-lived actor (``num_cpus=0``, pinned to it, one per node like the hub is one
    per cluster) that hands the ranges its node owns, in every init under way, to the peers that
    take them: so the hub sees one call per node, not one per piece and peer, and each agent's work
    grows with its own node's share.

    The first shared init on a node starts it (a worker process: about a second, overlapped with
    the join); later inits find it running. An init's state goes when the hub drops the init (it
    tells the agents), or at its bound; with no init for ``idle_s`` the agent exits. A node that
    dies takes its agent with it, and its peers then ask the hub who hands its ranges out instead
    (:meth:`Exchange.rehome`). Silence is judged here, where the owner's offers arrive: a hung
    owner's range is taken over by the first peer to find it silent.

    Args:
        node: The node it serves.
        idle_s: It exits after this long with no init.
    """

    def __init__(self, node: str, idle_s: float = 600.0) -> None:
        super().__init__(idle_s)
        self.node = node
        self._adopting: dict[str, asyncio.Future[Any]] = {}  # init -> its answer, being read

    def _drop(self, init: str) -> None:
        self._adopting.pop(init, None)
        super()._drop(init)

    def _make(self, piece: int) -> Exchange:
        return Exchange(piece, agent=True)

    # One method per call (a type checker sees each); ``key`` is the init's, as on the hub.

    async def adopt(self, key: InitKey, assignment: Assignment) -> None:
        await self._get(*key).adopt(assignment, self.node)

    async def home(self, key: InitKey, unit: Unit, node: str) -> None:
        await self._get(*key).home(unit, node)

    async def offer(self, key: InitKey, node: str, unit: Unit, index: int, box: list[Any], nbytes: int,
                    limit: int | None = None, timeout: float = 0.0) -> str:
        return await self._get(*key).offer(node, unit, index, box, nbytes, limit, timeout)

    async def offer_all(self, key: InitKey, node: str, offers: list[tuple[Unit, int, list[Any], int]], limit: int,
                        timeout: float) -> list[str]:
        return await self._get(*key).offer_all(node, offers, limit, timeout)

    async def skip(self, key: InitKey, unit: Unit, index: int) -> None:
        await self._get(*key).skip(unit, index)

    async def take_run(self, key: InitKey, node: str, unit: Unit, index: int, timeout: float,
                       budget: float | None = None,
                       assignment: list[Any] | None = None) -> list[list[Any]] | str | None:
        """:meth:`Exchange.take_run`. ``assignment`` boxes the published answer: an agent whose own node
        has not adopted it yet (a node that hung right after it joined) adopts it from its peers' takes,
        so its silence is judged, and its ranges taken over, as if it had."""
        exchange = self._get(*key)
        if assignment and not exchange.adopted:
            reading = self._adopting.get(key[0])
            if reading is None:  # peers ask at once: one read of the answer
                reading = self._adopting[key[0]] = asyncio.ensure_future(_resolve(assignment[0]))
            await exchange.adopt(await reading, self.node)
        return await exchange.take_run(node, unit, index, timeout, budget)

    async def taken(self, key: InitKey, node: str, unit: Unit, index: int) -> None:
        await self._get(*key).taken(node, unit, index)

    async def lost(self, key: InitKey, node: str, unit: Unit, index: int, box: list[Any] | None = None) -> str | None:
        return await self._get(*key).lost(node, unit, index, box)

    async def release(self, key: InitKey, node: str, unit: Unit) -> None:
        await self._get(*key).release(node, unit)

    async def finished(self, key: InitKey, node: str) -> None:
        await self._get(*key).finished(node)

    async def drained(self, key: InitKey, node: str | None, timeout: float) -> bool:
        return await self._get(*key).drained(node, timeout)

    async def gone(self, key: InitKey, node: str) -> None:
        await self._get(*key).gone(node)

    async def held(self, key: InitKey) -> dict[str, int]:
        return self._get(*key).held()


class Agent:
    """A node's :class:`ExchangeAgent`, for one init: each of its calls as a method that returns
    the call's object reference (``ray.get`` it, or not, for a one-way note). Picklable.

    Args:
        actor: The agent's actor handle.
        node: The node it serves.
        key: The init's key (see :class:`InitExchange`).
    """

    def __init__(self, actor: Any, node: str, key: InitKey) -> None:
        self.actor, self.node, self.key = actor, node, key

    def __reduce__(self) -> tuple[Any, tuple[Any, str, InitKey]]:
        return Agent, (self.actor, self.node, self.key)

    def __repr__(self) -> str:
        return f"Agent({self.node!r}, {self.key[0]!r})"

    def adopt(self, assignment: Any) -> Any:
        return self.actor.adopt.remote(self.key, assignment)

    def home(self, unit: Unit, node: str) -> Any:
        return self.actor.home.remote(self.key, unit, node)

    def offer(self, node: str, unit: Unit, index: int, box: list[Any], nbytes: int, limit: int | None = None,
              timeout: float = 0.0) -> Any:
        return self.actor.offer.remote(self.key, node, unit, index, box, nbytes, limit, timeout)

    def offer_all(self, node: str, offers: list[tuple[Unit, int, list[Any], int]], limit: int, timeout: float) -> Any:
        return self.actor.offer_all.remote(self.key, node, offers, limit, timeout)

    def skip(self, unit: Unit, index: int) -> Any:
        return self.actor.skip.remote(self.key, unit, index)

    def take_run(self, node: str, unit: Unit, index: int, timeout: float, budget: float | None = None,
                 assignment: list[Any] | None = None) -> Any:
        return self.actor.take_run.remote(self.key, node, unit, index, timeout, budget, assignment)

    def taken(self, node: str, unit: Unit, index: int) -> Any:
        return self.actor.taken.remote(self.key, node, unit, index)

    def lost(self, node: str, unit: Unit, index: int, box: list[Any] | None = None) -> Any:
        return self.actor.lost.remote(self.key, node, unit, index, box)

    def release(self, node: str, unit: Unit) -> Any:
        return self.actor.release.remote(self.key, node, unit)

    def finished(self, node: str) -> Any:
        return self.actor.finished.remote(self.key, node)

    def drained(self, node: str | None, timeout: float) -> Any:
        return self.actor.drained.remote(self.key, node, timeout)

    def held(self) -> Any:
        return self.actor.held.remote(self.key)

    def close(self) -> Any:
        """Drop this init's state on the agent (the hub does, as it drops the init)."""
        return self.actor.close.remote(self.key[0])

    def gone(self, node: str) -> Any:
        return self.actor.gone.remote(self.key, node)


def start_agent(exchange: InitExchange, node: str, idle_s: float = 600.0) -> Agent:
    """``node``'s :class:`ExchangeAgent` (started if none runs there), for ``exchange``'s init.

    Named per node and protocol version, detached, pinned to ``node`` (it dies with it, and never
    moves), ``num_cpus=0``."""
    import ray
    import ray.cloudpickle
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # type: ignore[no-untyped-call]
    actor: Any = ray.remote(ExchangeAgent).options(
        name=f"{AGENT_PREFIX}{PROTOCOL}-{node}", namespace=EXCHANGE_NAMESPACE, lifetime="detached",
        get_if_exists=True, num_cpus=0, max_concurrency=10_000, max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
    ).remote(node, idle_s)
    return Agent(actor, node, exchange.key)


class InitExchange:
    """One init's exchange on the hub: each :class:`Exchange` call as a method that returns the hub
    call's object reference (``ray.get`` it, or not, for a one-way note).

    Picklable: the replica sends it to each node task.
    """

    def __init__(self, hub: Any, init: str, piece: int, bound_s: float) -> None:
        self.hub, self.init, self.piece, self.bound_s = hub, init, piece, bound_s
        self.key: InitKey = (init, piece, bound_s)
        self.nodes: list[str] = []

    def __reduce__(self) -> tuple[Any, tuple[Any, str, int, float]]:
        return InitExchange, (self.hub, self.init, self.piece, self.bound_s)

    def expect(self, nodes: list[str]) -> Any:
        self.nodes = list(nodes)  # the replica's copy: whose agents to tell when it closes
        return self.hub.expect.remote(self.key, nodes)

    def join(self, node: str, digest: str, units: list[Any], timeout: float, claimed: list[Unit],
             agent: Agent) -> Any:
        return self.hub.join.remote(self.key, node, digest, units, timeout, claimed, [agent])

    def rehome(self, node: str, unit: Unit, home: str) -> Any:
        return self.hub.rehome.remote(self.key, node, unit, home)

    def gone(self, node: str) -> Any:
        return self.hub.gone.remote(self.key, node)

    def close(self) -> None:
        """Drop this init's state on the hub and on its nodes' agents (fire and forget; each also drops
        it at its bound). The agents are told here too, not only by the hub: a hub that died mid-init
        cannot tell them."""
        import ray

        with contextlib.suppress(ray.exceptions.RayError):  # the hub is gone, and the state with it
            self.hub.close.remote(self.init)
        for node in self.nodes:
            with contextlib.suppress(ValueError, ray.exceptions.RayError):  # no agent there (or gone with its node)
                ray.get_actor(f"{AGENT_PREFIX}{PROTOCOL}-{node}", namespace=EXCHANGE_NAMESPACE).close.remote(self.init)

    def __repr__(self) -> str:
        return f"InitExchange({self.init!r})"


def start_exchange(part_size_mb: int, bound_s: float, idle_s: float = 600.0) -> InitExchange:
    """This init's :class:`Exchange`, on the cluster's :class:`ExchangeHub` (started if none runs).

    Called before placement, so a hub that has to start does so while placement runs: the init
    names its nodes with :meth:`Exchange.expect` once placement has. The hub is pinned to the head
    node: placed on a worker node, it would die with that node and stop every init's sharing.

    Args:
        part_size_mb: The downloader's range size (pieces are a quarter of it).
        bound_s: Drop the init's state after this long without a call (its replica died).
        idle_s: The hub exits after this long with no init open (``download.share_hub_idle_s``).
    """
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # type: ignore[no-untyped-call]
    hub: Any = ray.remote(ExchangeHub).options(
        name=EXCHANGE_NAME, namespace=EXCHANGE_NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=0, max_restarts=-1, max_concurrency=10_000, resources={"node:__internal_head__": 0.001},
    ).remote()
    exchange = InitExchange(hub, uuid.uuid4().hex, piece_size(part_size_mb * 1024 * 1024), bound_s)
    hub.open.remote(exchange.init, exchange.piece, bound_s, idle_s)
    return exchange


def close_exchange(exchange: Any) -> None:
    """Drop an init's exchange, if it has one."""
    if exchange is not None:
        exchange.close()
