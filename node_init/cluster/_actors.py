"""The exchange's long-lived Ray actors, each holding one init's state per init under way:

- the cluster's one :class:`ExchangeHub` (named :data:`EXCHANGE_NAME`, on the head node) assigns the
  ranges (:class:`HubState`): a ``join`` per node, one :class:`Assignment` published for all of
  them, and a ``rehome`` only when a node's agent died. Its work grows with the nodes (and the
  distinct sets of ranges they need), never with the pieces;
- each node's :class:`ExchangeAgent` (named :data:`AGENT_PREFIX` + protocol + node id, pinned to
  that node) hands out the pieces of the ranges its node owns (:class:`AgentState`).

A Ray actor takes a worker process of its own, about a second and 1.4 CPU-seconds here: the first
init that shares pays it (the hub while placement runs, an agent while the nodes join), later ones
(new replicas, scale-ups, restarts) do not; each exits once idle. Sent to Ray by value, the actors'
processes start without importing ``node_init`` (about 0.75 s of CPU): these modules import the
standard library and numbers from ``_bounds`` (which travel as values), and log through the standard
library (Ray keeps an actor's log with its worker's).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from typing import Any, Generic, TypeVar

from .._bounds import IDLE_LOOKS, WATCH_EVERY_S
from ._agent_state import AgentState
from ._assign import Assignment
from ._hub_state import HubState
from ._protocol import EXCHANGE_NAMESPACE, EXCHANGE_PREFIX, PROTOCOL, Answer, InitKey, Unit

_log = logging.getLogger("node_init.exchange")
S = TypeVar("S", HubState, AgentState)


class _Keeper(Generic[S]):
    """A long-lived actor that holds one init's state per init under way (the hub, an agent).

    An init's state is made by its first call and dropped by :meth:`close`, or once nothing called
    it for its ``bound_s`` (a replica that died mid-init). Calls for a closed init raise
    ``LookupError``: a late node then reads from the source, as it does when the actor is
    unreachable. With no init open for ``idle_s`` it exits, and the next init that needs it starts
    a new one.
    """

    def __init__(self, idle_s: float) -> None:
        self._inits: dict[str, S] = {}
        self._expires: dict[str, float] = {}
        self._closed: collections.deque[str] = collections.deque(maxlen=4096)
        self._idle_s = idle_s
        self._last_call = 0.0
        self._watcher: asyncio.Task[None] | None = None

    def _make(self, piece: int) -> S:
        raise NotImplementedError

    async def _started(self) -> None:
        """Once, when the first call arrives."""

    def _get(self, init: str, piece: int, bound_s: float) -> S:
        now = asyncio.get_running_loop().time()  # the loop's clock: the exchanges' waits use it too
        self._last_call = now
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        self._expire(now, keep=init)
        if init in self._closed:
            raise LookupError(f"exchange {init} is closed: its init ended")
        state = self._inits.get(init)
        if state is None:
            state = self._inits[init] = self._make(piece)
        self._expires[init] = now + bound_s
        return state

    def _expire(self, now: float, keep: str = "") -> None:
        for old in [i for i, at in self._expires.items() if at < now and i != keep]:
            self._drop(old)

    async def _watch(self) -> None:
        """Exit once idle for ``idle_s`` (checked a few times per bound)."""
        loop = asyncio.get_running_loop()
        try:
            await self._started()
        except Exception:  # what it does first (removing older hubs) is never worth the actor
            _log.warning("exchange actor: start-up step failed", exc_info=True)
        while True:
            await asyncio.sleep(min(self._idle_s / IDLE_LOOKS, WATCH_EVERY_S))
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


class ExchangeHub(_Keeper[HubState]):
    """The cluster's one long-lived actor that assigns the ranges of every init under way.

    An init's state is made by its first call (the replica's :meth:`open`, or a node's call that
    overtook it); see :class:`_Keeper` for its end. Dropping an init tells its nodes' agents.
    The hub ends: with no init open and no call for ``idle_s`` (the latest :meth:`open` says how
    long, from ``download.share_hub_idle_s``), it exits, and the next shared init starts a new one.
    Started, it removes the hubs of older protocol versions that are idle (never one with an init
    open: a rolling upgrade's older replicas may still use it).

    Args:
        idle_s: It exits after this long with no init open (``Bounds.hub_idle_s``).
        call_s: The bound on its call asking an older hub whether it is idle (``Bounds.actor_call_s``).
    """

    def __init__(self, idle_s: float, call_s: float) -> None:
        super().__init__(idle_s)
        self._call_s = call_s
        self.removed: list[str] = []  # older hubs this one removed

    def _make(self, piece: int) -> HubState:
        return HubState(piece, publish=_put)

    async def _started(self) -> None:
        await self._remove_older()

    def _drop(self, init: str) -> None:
        state = self._inits.get(init)
        for agent in (state.agents().values() if state is not None else ()):
            if _reachable(agent):
                try:
                    agent.close()
                except Exception:  # a dead node's agent: nothing to drop (it ends at its own bound)
                    _log.info("exchange hub: an agent could not be told of an init's end", exc_info=True)
        super()._drop(init)

    async def open(self, init: str, piece: int, bound_s: float, idle_s: float) -> None:
        """Make ``init``'s exchange; it is dropped after ``bound_s`` seconds without a call. The hub
        exits after ``idle_s`` with no init open."""
        self._idle_s = idle_s
        self._get(init, piece, bound_s)

    async def _remove_older(self) -> None:
        """End every idle hub of an older protocol version in this cluster, recording each in
        ``removed`` as it goes (before it ends, so whoever sees an older hub gone finds it there)."""
        import ray
        from ray.util import list_named_actors

        if not ray.is_initialized():  # a hub outside Ray (tests): no other hubs, and no Ray to start
            return
        for entry in await asyncio.to_thread(list_named_actors, True):
            name, version = entry["name"], entry["name"].removeprefix(EXCHANGE_PREFIX)
            if entry["namespace"] != EXCHANGE_NAMESPACE or not version.isdigit() or int(version) >= PROTOCOL:
                continue
            old = ray.get_actor(name, namespace=EXCHANGE_NAMESPACE)
            try:
                ask: Any = old.exit_if_idle
            except AttributeError:  # before version 5 a hub cannot end itself: ask, then end it here
                if await asyncio.wait_for(old.inits.remote(), self._call_s):
                    continue
                self.removed.append(name)
                ray.kill(old, no_restart=True)
            else:
                if await asyncio.wait_for(ask.remote(), self._call_s):
                    self.removed.append(name)

    # One method per call a node makes of the hub (a type checker sees each: no dispatch by name).
    # ``key`` is the init's (id, piece size, idle bound): the first call of an init makes its state.
    # The pieces themselves never pass through here: each node's ExchangeAgent hands out its own.

    async def expect(self, key: InitKey, nodes: list[str]) -> None:
        await self._get(*key).expect(nodes)

    async def join(self, key: InitKey, node: str, digest: str, units: list[list[Unit]], timeout: float,
                   claimed: list[Unit], agent: list[Any]) -> list[Any]:
        """:meth:`HubState.join`; ``units`` boxes the node's ranges, made into the exchange's sets only
        if no node sent the same ones (``digest``) before; ``agent`` boxes its :class:`ExchangeAgent`.
        The answer boxes the one published :class:`Assignment`."""
        state = self._get(*key)
        wanted = None if state.knows(digest) else units[0]
        return [await state.join(node, wanted, timeout, claimed, agent=agent[0], digest=digest)]

    async def rehome(self, key: InitKey, node: str, unit: Unit, home: str) -> Answer | str | None:
        return await self._get(*key).rehome(node, unit, home)

    async def gone(self, key: InitKey, node: str) -> None:
        """:meth:`HubState.gone`, told to every other node's agent too: what they hold for ``node``
        is released (its owners stop waiting for it to take), and what it offered there is withdrawn."""
        state = self._get(*key)
        await state.gone(node)
        for peer, agent in state.agents().items():
            if peer != node and _reachable(agent):
                try:
                    agent.gone(node)
                except Exception:  # an agent gone too: nothing to tell
                    _log.info("exchange hub: an agent could not be told of a node gone", exc_info=True)

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
    return await value if inspect.isawaitable(value) else value


class ExchangeAgent(_Keeper[AgentState]):
    """A node's long-lived actor (``num_cpus=0``, pinned to it, one per node like the hub is one
    per cluster) that hands the ranges its node owns, in every init under way, to the peers that
    take them: so the hub sees one call per node, not one per piece and peer, and each agent's work
    grows with its own node's share.

    The first shared init on a node starts it (a worker process: about a second, overlapped with
    the join); later inits find it running. An init's state goes when the hub drops the init (it
    tells the agents), or at its bound; with no init for ``idle_s`` the agent exits. A node that
    dies takes its agent with it, and its peers then ask the hub who hands its ranges out instead
    (:meth:`HubState.rehome`). Silence is judged here, where the owner's offers arrive: a hung
    owner's range is taken over by the first peer to find it silent.

    Args:
        node: The node it serves.
        idle_s: It exits after this long with no init (``Bounds.hub_idle_s``).
    """

    def __init__(self, node: str, idle_s: float) -> None:
        super().__init__(idle_s)
        self.node = node
        self._adopting: dict[str, asyncio.Future[Any]] = {}  # init -> its answer, being read

    def _drop(self, init: str) -> None:
        self._adopting.pop(init, None)
        super()._drop(init)

    def _make(self, piece: int) -> AgentState:
        return AgentState(piece)

    # One method per call (a type checker sees each); ``key`` is the init's, as on the hub.

    async def adopt(self, key: InitKey, assignment: Assignment) -> None:
        await self._get(*key).adopt(assignment, self.node)

    async def home(self, key: InitKey, unit: Unit, node: str) -> None:
        await self._get(*key).home(unit, node)

    async def offer(self, key: InitKey, node: str, unit: Unit, index: int, box: list[Any], nbytes: int,
                    limit: int | None = None, timeout: float = 0.0) -> Answer:
        return await self._get(*key).offer(node, unit, index, box, nbytes, limit, timeout)

    async def offer_all(self, key: InitKey, node: str, offers: list[tuple[Unit, int, list[Any], int]], limit: int,
                        timeout: float) -> list[Answer]:
        return await self._get(*key).offer_all(node, offers, limit, timeout)

    async def skip(self, key: InitKey, unit: Unit, index: int) -> None:
        await self._get(*key).skip(unit, index)

    async def take_run(self, key: InitKey, node: str, unit: Unit, index: int, timeout: float,
                       budget: float | None = None,
                       assignment: list[Any] | None = None) -> list[list[Any]] | Answer | None:
        """:meth:`AgentState.take_run`. ``assignment`` boxes the published answer: an agent whose own
        node has not adopted it yet (a node that hung right after it joined) adopts it from its peers'
        takes, so its silence is judged, and its ranges taken over, as if it had."""
        state = self._get(*key)
        if assignment and not state.adopted:
            reading = self._adopting.get(key[0])
            if reading is None:  # peers ask at once: one read of the answer
                reading = self._adopting[key[0]] = asyncio.ensure_future(_resolve(assignment[0]))
            await state.adopt(await reading, self.node)
        return await state.take_run(node, unit, index, timeout, budget)

    async def taken(self, key: InitKey, node: str, unit: Unit, index: int) -> None:
        await self._get(*key).taken(node, unit, index)

    async def lost(self, key: InitKey, node: str, unit: Unit, index: int,
                   box: list[Any] | None = None) -> Answer | None:
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
