"""An agent's part of one init's exchange: the hand-off of the pieces of the ranges its node owns.

The owner offers each range in pieces (:func:`~node_init.cluster.piece_size`) as they arrive from
the source, so its peers pull a range while it still downloads; a consumer takes a range's pieces in
order. Silence is judged here, where the owner's offers arrive. Only object references (the bytes
stay where they were put) and bookkeeping are held; every wait has a bound and returns ``None`` or
``False`` at it, after which the caller uses the source. Sent by value: the standard library, and
numbers from ``_bounds`` (``TAKE_SILENCES``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

from .._bounds import TAKE_SILENCES
from ._assign import Assignment
from ._protocol import Answer, Piece, Unit, piece_bytes, pieces_of
from ._state import State


class AgentState(State):
    """One init on a node's agent: the ranges its node owns (:meth:`adopt`, :meth:`home`), their
    offers, their consumers and the owner's silence (docs/exchange.md draws a range's states).

    Args:
        piece: The piece size in bytes.
        on_held: Told each change of the bytes a node holds for its peers (node, change).
    """

    #: A take for a range not adopted here yet waits for it (an agent learns its ranges by
    #: :meth:`adopt` and :meth:`home`; the in-process :class:`~node_init.cluster.Exchange` assigns them).
    _ADOPTS: ClassVar[bool] = True

    def __init__(self, piece: int, on_held: Callable[[str, int], None] | None = None) -> None:
        State.__init__(self, piece)
        self._on_held = on_held
        self._consumers: dict[Unit, set[str]] = {}  # nodes still taking the range's pieces
        self._next: dict[Unit, dict[str, int]] = {}  # consumer -> the next piece it takes
        self._offers: dict[Piece, list[Any]] = {}
        self._pending: dict[Piece, set[str]] = {}  # consumers yet to take an offered piece
        self._skipped: dict[Unit, int] = {}  # unit -> first piece its owner will not offer
        self._held: dict[str, int] = {}  # owner -> bytes offered and not yet taken by every consumer
        self._finished: set[str] = set()
        self._offered_by: dict[Piece, str] = {}
        self._taken_over: dict[Unit, float] = {}  # range -> when a consumer took it over (loop time)
        self._heard: dict[str, float] = {}  # owner -> when it last offered (or waited for room to)
        self.adopted = False  # it knows the assignment

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
                    limit: int | None = None, timeout: float = 0.0) -> Answer:
        """``node`` read piece ``index`` of ``unit``: ``box[0]`` is its object (boxed, so Ray passes
        the reference). Only consumers that have not taken that piece yet wait for it.

        Returns :attr:`Answer.OK`; :attr:`Answer.REFUSED` when ``node`` does not own ``unit`` (its provisional view
        was wrong: it takes nothing of it from a peer either); :attr:`Answer.FULL` when ``node`` holds
        ``limit`` bytes for its peers for longer than ``timeout`` (it offers no more of the range,
        whose consumers read the rest from the source). One call per piece, room included.
        """
        self._heard[node] = asyncio.get_running_loop().time()  # busy offering, or waiting for room: alive
        if limit is not None and not await self.room(node, nbytes, limit, timeout):
            await self.skip(unit, index)
            return Answer.FULL
        async with self._cv:
            self._heard[node] = asyncio.get_running_loop().time()
            if self._owners is None or self._owners.get(unit) != node:
                self._drop_consumer(node, unit)
                self._cv.notify_all()
                return Answer.REFUSED
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
            return Answer.OK

    async def offer_all(self, node: str, offers: list[tuple[Unit, int, list[Any], int]], limit: int,
                        timeout: float) -> list[Answer]:
        """:meth:`offer` each of ``offers`` in order, in one call (the pieces read before the
        assignment); after a range's first answer other than :attr:`Answer.OK`, its later pieces
        are :attr:`Answer.STOPPED`."""
        out: list[Answer] = []
        stopped: set[Unit] = set()
        for unit, index, box, nbytes in offers:
            answer = Answer.STOPPED if unit in stopped else \
                await self.offer(node, unit, index, box, nbytes, limit, timeout)
            if answer != Answer.OK:
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
                   budget: float | None = None) -> list[Any] | Answer | None:
        """The owner's offer of piece ``index`` of ``unit`` once made; ``None`` when it will not come
        in time (``node`` then reads the rest of the range from the source). Asking for piece
        ``index`` says ``node`` has written piece ``index - 1`` (see :meth:`taken`).

        :attr:`Answer.YOURS` when the assignment gave ``node`` the range (it differs from its provisional
        view). :attr:`Answer.OWN` when the range's owner is gone, or offered nothing at all (of any range) for
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
            budget: The whole wait, however often the range changes hands meanwhile (default: two
                silences, ``TAKE_SILENCES * timeout``). A range taken over while ``node`` waited gives
                its new owner up to ``timeout`` more, within this; a wait shorter than ``timeout``
                never takes over.
        """
        piece = (unit, index)
        loop = asyncio.get_running_loop()
        start = loop.time()
        budget = TAKE_SILENCES * timeout if budget is None else budget
        cap = start + budget
        if index > 0:  # a consumer asks for a piece once it has written the one before (one call, not two)
            await self.taken(node, unit, index - 1)
        if not await self._wait(lambda: self._owners is not None and (not self._ADOPTS or unit in self._owners),
                                max(0.0, min(cap, start + timeout) - loop.time())):
            return None  # asked before every node joined, and they did not in time
        owner = (self._owners or {}).get(unit)
        if owner is None or owner == node:
            return None if owner is None else Answer.YOURS

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
                    return Answer.OWN
                if not ready or self._unavailable(piece):
                    self._drop_consumer(node, unit)
                    self._cv.notify_all()
                    return None
                # Another survivor took the range over since this one woke: wait for its offer.

    async def take_run(self, node: str, unit: Unit, index: int, timeout: float,
                       budget: float | None = None) -> list[list[Any]] | Answer | None:
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

    async def lost(self, node: str, unit: Unit, index: int, box: list[Any] | None = None) -> Answer | None:
        """``node`` could not read the object of piece ``index`` that :meth:`take` gave it (its owner's
        node died, or the owner hangs and cannot say where the object is).

        Returns :attr:`Answer.OWN` to the first node to say so about that owner: it reads the range from the
        source and offers it; the owner's offers of it are withdrawn, so the others wait for the
        new owner's, and the range crosses the origin link once more, not once per node. :attr:`Answer.RETRY`
        when another node took it over already, or the piece was offered again since ``box`` (the
        offer ``node`` could not read) was: take the piece again; :attr:`Answer.YOURS`: ``node`` owns the
        range already; ``None``: use the source.
        """
        async with self._cv:
            owners = self._owners or {}
            owner, offerer = owners.get(unit), self._offered_by.get((unit, index))
            if owner == node:
                return Answer.YOURS
            if owner is None or unit in self._skipped:
                self._drop_consumer(node, unit)
                self._cv.notify_all()
                return None
            current = self._offers.get((unit, index))
            if box is not None and current is not None and current[0] != box[0]:
                return Answer.RETRY  # a newer offer of the piece (its new owner's) waits to be taken
            if unit in self._taken_over and offerer != owner:
                return Answer.RETRY  # taken over since that offer: its new owner offers again
            owners[unit] = node
            self._taken_over[unit] = asyncio.get_running_loop().time()
            self._drop_consumer(node, unit)
            for i in range(pieces_of(unit, self._piece)):  # the old owner's objects are unreadable
                for consumer in list(self._pending.get((unit, i), ())):
                    self._taken(consumer, (unit, i))
            self._cv.notify_all()
            return Answer.OWN

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

    def _mark_gone(self, node: str) -> None:
        super()._mark_gone(node)
        for unit, owner in (self._owners or {}).items():
            if owner == node:  # its objects died with it
                for index in range(pieces_of(unit, self._piece)):
                    self._offers.pop((unit, index), None)
                    self._pending.pop((unit, index), None)
        for unit in list(self._consumers):
            self._drop_consumer(node, unit)

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
