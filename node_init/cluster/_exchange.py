"""The exchange of a shared download: who fetches which range, and the hand-off of offered pieces.

Every init's :class:`Exchange` lives in one long-lived actor per cluster, the
:class:`ExchangeHub` (named :data:`EXCHANGE_NAME`, on the head node). A Ray actor takes a worker
process of its own, about a second and 1.4 CPU-seconds here, on the cores the downloads need: the
first init that shares pays it, later ones (new replicas, scale-ups, restarts) do not. This module
imports nothing but the standard library, and :func:`start_exchange` sends it to Ray by value: the
hub's process starts without importing ``node_init`` (about 0.75 s of CPU).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
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
PROTOCOL = 5
#: The hub actor's name and namespace (``ray list actors`` shows it): the prefix and the protocol.
EXCHANGE_PREFIX = "node-init-exchange-"
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


def assign(needs: dict[str, set[Unit]], claims: dict[str, set[Unit]] | None = None) -> dict[Unit, str]:
    """An owner for every range two or more nodes need: a needing node that claimed it (it started
    reading it already, see :func:`provisional`), else the needing node with the fewest bytes so far."""
    claims = claims or {}
    wanted: dict[Unit, list[str]] = {}
    for node, units in sorted(needs.items()):
        for unit in units:
            wanted.setdefault(unit, []).append(node)
    load = dict.fromkeys(needs, 0)
    owners: dict[Unit, str] = {}
    shared = sorted((u for u, n in wanted.items() if len(n) > 1), key=lambda u: (u[2] - u[3], u))
    claimed = {u: [n for n in wanted[u] if u in claims.get(n, ())] for u in shared}
    for unit in sorted(shared, key=lambda u: not claimed[u]):  # claims first, so the balance counts them
        owner = min(claimed[unit] or wanted[unit], key=lambda n: (load[n], n))
        owners[unit] = owner
        load[owner] += unit[3] - unit[2]
    return owners


def provisional(units: list[Unit], nodes: list[str]) -> dict[Unit, str]:
    """The owners :func:`assign` picks if every node of ``nodes`` needs ``units``: what a node reads
    for its peers while the exchange still waits for the others (the common case, so it claims them)."""
    return assign({n: set(units) for n in nodes}) if len(nodes) > 1 else {}


class Exchange:
    """The Ray actor that assigns shares and hands offers from owners to the nodes that take them.

    An owner offers each range in pieces (:func:`piece_size`) as they arrive from the source, so its
    peers pull a range while it still downloads. A consumer takes a range's pieces in order. The
    actor holds only object references (the bytes stay where they were put) and bookkeeping; every
    wait has a bound and returns ``None``/``False`` at it, after which the caller uses the source.

    Args:
        piece: The piece size in bytes (:func:`piece_size` of the downloader's range).
        nodes: The init's nodes, if known yet (else :meth:`expect` names them).
        on_held: Told each change of the bytes a node holds for its peers (node, change).
    """

    def __init__(self, piece: int, nodes: list[str] | None = None,
                 on_held: Callable[[str, int], None] | None = None) -> None:
        self._piece = piece
        self._on_held = on_held
        self._expected: set[str] | None = set(nodes) if nodes is not None else None
        self._needs: dict[str, set[Unit]] = {}
        self._claims: dict[str, set[Unit]] = {}
        self._owners: dict[Unit, str] | None = None
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
            self._owners = assign({n: u for n, u in self._needs.items() if n not in self._gone}, self._claims)
            for unit, owner in self._owners.items():
                self._consumers[unit] = {n for n, u in self._needs.items() if unit in u and n != owner}
                self._next[unit] = dict.fromkeys(self._consumers[unit], 0)

    async def join(self, node: str, units: list[Unit], timeout: float,
                   claimed: list[Unit] | None = None) -> dict[Unit, str]:
        """Record what ``node`` needs (and the ranges it already reads for its peers: ``claimed``);
        once all have joined, the owners of the ranges it needs."""
        async with self._cv:
            if self._owners is None:
                self._needs[node] = set(units)
                self._claims[node] = set(claimed or ())
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
            pending = {n for n in self._consumers.get(unit, ()) if self._next[unit].get(n, 0) <= index}
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
        if not await self._wait(lambda: self._owners is not None, max(0.0, min(cap, start + timeout) - loop.time())):
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

    async def drained(self, node: str, timeout: float) -> bool:
        """Wait until nothing ``node`` offered is still wanted by a peer."""
        return await self._wait(lambda: self._held.get(node, 0) <= 0, timeout)

    def _hold(self, node: str, delta: int) -> None:
        self._held[node] = self._held.get(node, 0) + delta
        if self._on_held is not None:
            self._on_held(node, delta)

    def held(self) -> dict[str, int]:
        """Bytes each node holds in its object store for peers that have not taken them yet."""
        return {node: n for node, n in self._held.items() if n > 0}


class ExchangeHub:
    """The cluster's one long-lived actor that holds the :class:`Exchange` of every init under way.

    An init's state is made by its first call (the replica's :meth:`open`, or a node's call that
    overtook it) and dropped by :meth:`close`, or once nothing called it for its ``bound_s``
    (a replica that died mid-init). Calls for a closed init raise ``LookupError``: a late node
    then reads from the source, as it does when the hub itself is unreachable.

    The hub ends: with no init open and no call for ``idle_s`` (the latest :meth:`open` says how
    long, from ``download.share_hub_idle_s``), it exits, and the next shared init starts a new one.
    Started, it removes the hubs of older protocol versions that are idle (never one with an init
    open: a rolling upgrade's older replicas may still use it).
    """

    def __init__(self) -> None:
        self._inits: dict[str, Exchange] = {}
        self._expires: dict[str, float] = {}
        self._closed: collections.deque[str] = collections.deque(maxlen=4096)
        self._idle_s = 600.0
        self._last_call = 0.0
        self._watcher: asyncio.Task[None] | None = None
        self.removed: list[str] = []  # older hubs this one removed
        self._gauge: Any = None
        self._held: dict[str, int] = {}  # node -> bytes held for peers, over every init
        self._held_dirty: set[str] = set()  # nodes whose holding changed since the gauge was last set

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
            exchange = self._inits[init] = Exchange(piece, on_held=self._held_changed)
        self._expires[init] = now + bound_s
        return exchange

    def _expire(self, now: float, keep: str = "") -> None:
        for old in [i for i, at in self._expires.items() if at < now and i != keep]:
            self._drop(old)

    async def open(self, init: str, piece: int, bound_s: float, idle_s: float = 600.0) -> None:
        """Make ``init``'s exchange; it is dropped after ``bound_s`` seconds without a call. The hub
        exits after ``idle_s`` with no init open."""
        self._idle_s = idle_s
        self._get(init, piece, bound_s)

    async def _watch(self) -> None:
        """Remove idle older hubs once; then exit once idle for ``idle_s`` (checked a few times per bound)."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):  # best effort: an older hub left running costs one idle process
            self.removed = await self._remove_older()
        while True:
            await asyncio.sleep(min(self._idle_s / 4, WATCH_EVERY_S))
            now = loop.time()
            self._expire(now)
            with contextlib.suppress(Exception):  # a metric must never stop the hub
                self._report_held()
            if self._inits:
                self._last_call = now  # idle is measured from the last open init, not the last call
            elif now - self._last_call >= self._idle_s:
                self._exit()
                return

    def _held_changed(self, node: str, delta: int) -> None:
        """What ``node`` holds for its peers, over every init (told by each exchange, on each change)."""
        self._held[node] = self._held.get(node, 0) + delta
        self._held_dirty.add(node)

    def _report_held(self) -> None:
        """Set ``node_init_exchange_held_bytes{node}`` for the nodes whose holding changed since the last
        look: from the watch, once a second, not on each piece (the hub's calls are its hot path)."""
        import ray

        if not self._held_dirty or not ray.is_initialized():
            return
        if self._gauge is None:
            from ray.util import metrics

            self._gauge = metrics.Gauge("node_init_exchange_held_bytes", tag_keys=("node",),
                                        description="Bytes a node holds in its object store for peers")
        dirty, self._held_dirty = self._held_dirty, set()
        for node in dirty:
            self._gauge.set(float(max(0, self._held.get(node, 0))), tags={"node": node})

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

    # One method per Exchange call, so a type checker sees each (no dispatch by name). ``key`` is the
    # init's (id, piece size, idle bound): the first call of an init makes its state.

    async def expect(self, key: InitKey, nodes: list[str]) -> None:
        await self._get(*key).expect(nodes)

    async def join(self, key: InitKey, node: str, units: list[Unit], timeout: float,
                   claimed: list[Unit] | None = None) -> dict[Unit, str]:
        return await self._get(*key).join(node, units, timeout, claimed)

    async def offer(self, key: InitKey, node: str, unit: Unit, index: int, box: list[Any], nbytes: int,
                    limit: int | None = None, timeout: float = 0.0) -> str:
        return await self._get(*key).offer(node, unit, index, box, nbytes, limit, timeout)

    async def offer_all(self, key: InitKey, node: str, offers: list[tuple[Unit, int, list[Any], int]], limit: int,
                        timeout: float) -> list[str]:
        return await self._get(*key).offer_all(node, offers, limit, timeout)

    async def skip(self, key: InitKey, unit: Unit, index: int) -> None:
        await self._get(*key).skip(unit, index)

    async def take(self, key: InitKey, node: str, unit: Unit, index: int, timeout: float,
                   budget: float | None = None) -> list[Any] | str | None:
        return await self._get(*key).take(node, unit, index, timeout, budget)

    async def taken(self, key: InitKey, node: str, unit: Unit, index: int) -> None:
        await self._get(*key).taken(node, unit, index)

    async def lost(self, key: InitKey, node: str, unit: Unit, index: int, box: list[Any] | None = None) -> str | None:
        return await self._get(*key).lost(node, unit, index, box)

    async def release(self, key: InitKey, node: str, unit: Unit) -> None:
        await self._get(*key).release(node, unit)

    async def finished(self, key: InitKey, node: str) -> None:
        await self._get(*key).finished(node)

    async def gone(self, key: InitKey, node: str) -> None:
        await self._get(*key).gone(node)

    async def drained(self, key: InitKey, node: str, timeout: float) -> bool:
        return await self._get(*key).drained(node, timeout)

    async def close(self, init: str) -> None:
        """Drop ``init``'s exchange (its references with it, so Ray frees the pieces)."""
        self._last_call = asyncio.get_running_loop().time()
        self._drop(init)

    def _drop(self, init: str) -> None:
        exchange = self._inits.pop(init, None)
        for node, n in (exchange.held() if exchange is not None else {}).items():
            self._held_changed(node, -n)  # its references go with it: Ray frees the pieces
        self._expires.pop(init, None)
        if init not in self._closed:
            self._closed.append(init)

    async def inits(self) -> list[str]:
        """The inits whose exchange is held (for tests and ``ray`` debugging)."""
        return sorted(self._inits)

    async def removed_hubs(self) -> list[str]:
        """The older hubs this one removed when it started (for tests and ``ray`` debugging)."""
        return list(self.removed)


class InitExchange:
    """One init's exchange on the hub: each :class:`Exchange` call as a method that returns the hub
    call's object reference (``ray.get`` it, or not, for a one-way note).

    Picklable: the replica sends it to each node task.
    """

    def __init__(self, hub: Any, init: str, piece: int, bound_s: float) -> None:
        self.hub, self.init, self.piece, self.bound_s = hub, init, piece, bound_s
        self.key: InitKey = (init, piece, bound_s)

    def __reduce__(self) -> tuple[Any, tuple[Any, str, int, float]]:
        return InitExchange, (self.hub, self.init, self.piece, self.bound_s)

    def expect(self, nodes: list[str]) -> Any:
        return self.hub.expect.remote(self.key, nodes)

    def join(self, node: str, units: list[Unit], timeout: float, claimed: list[Unit] | None = None) -> Any:
        return self.hub.join.remote(self.key, node, units, timeout, claimed)

    def offer(self, node: str, unit: Unit, index: int, box: list[Any], nbytes: int, limit: int | None = None,
              timeout: float = 0.0) -> Any:
        return self.hub.offer.remote(self.key, node, unit, index, box, nbytes, limit, timeout)

    def offer_all(self, node: str, offers: list[tuple[Unit, int, list[Any], int]], limit: int, timeout: float) -> Any:
        return self.hub.offer_all.remote(self.key, node, offers, limit, timeout)

    def skip(self, unit: Unit, index: int) -> Any:
        return self.hub.skip.remote(self.key, unit, index)

    def take(self, node: str, unit: Unit, index: int, timeout: float, budget: float | None = None) -> Any:
        return self.hub.take.remote(self.key, node, unit, index, timeout, budget)

    def taken(self, node: str, unit: Unit, index: int) -> Any:
        return self.hub.taken.remote(self.key, node, unit, index)

    def lost(self, node: str, unit: Unit, index: int, box: list[Any] | None = None) -> Any:
        return self.hub.lost.remote(self.key, node, unit, index, box)

    def release(self, node: str, unit: Unit) -> Any:
        return self.hub.release.remote(self.key, node, unit)

    def finished(self, node: str) -> Any:
        return self.hub.finished.remote(self.key, node)

    def gone(self, node: str) -> Any:
        return self.hub.gone.remote(self.key, node)

    def drained(self, node: str, timeout: float) -> Any:
        return self.hub.drained.remote(self.key, node, timeout)

    def close(self) -> None:
        """Drop this init's state on the hub (fire and forget; the hub also drops it at its bound)."""
        import ray

        with contextlib.suppress(ray.exceptions.RayError):  # the hub is gone, and the state with it
            self.hub.close.remote(self.init)

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
