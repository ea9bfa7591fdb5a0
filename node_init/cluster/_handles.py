"""The node's and the replica's handles on the exchange's actors, one init each: every call a
method that returns the call's object reference (``ray.get`` it through
:func:`~node_init.cluster._call.call`, or not, for a one-way note), and the actors' start.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from typing import Any

from ._protocol import AGENT_PREFIX, EXCHANGE_NAME, EXCHANGE_NAMESPACE, PROTOCOL, InitKey, Unit, piece_size

#: The modules the actors run, sent to Ray by value (their processes never import ``node_init``).
_BY_VALUE = ("_protocol", "_assign", "_state", "_hub_state", "_agent_state", "_actors", "_handles")


def _send_by_value() -> None:
    import ray.cloudpickle

    for name in _BY_VALUE:
        module = sys.modules[f"{__package__}.{name}"]
        ray.cloudpickle.register_pickle_by_value(module)  # type: ignore[no-untyped-call]


class Agent:
    """A node's :class:`~node_init.cluster.ExchangeAgent`, for one init. Picklable.

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


def start_agent(exchange: InitExchange, node: str, idle_s: float) -> Agent:
    """``node``'s :class:`~node_init.cluster.ExchangeAgent` (started if none runs there), for
    ``exchange``'s init; it exits after ``idle_s`` with no init (``Bounds.hub_idle_s``).

    Named per node and protocol version, detached, pinned to ``node`` (it dies with it, and never
    moves), ``num_cpus=0``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from ._actors import ExchangeAgent

    _send_by_value()
    actor: Any = ray.remote(ExchangeAgent).options(
        name=f"{AGENT_PREFIX}{PROTOCOL}-{node}", namespace=EXCHANGE_NAMESPACE, lifetime="detached",
        get_if_exists=True, num_cpus=0, max_concurrency=10_000, max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
    ).remote(node, idle_s)
    return Agent(actor, node, exchange.key)


class InitExchange:
    """One init's exchange on the hub: each hub call as a method that returns the call's object
    reference. Picklable: the replica sends it to each node task."""

    def __init__(self, hub: Any, init: str, piece: int, bound_s: float) -> None:
        self.hub, self.init, self.piece, self.bound_s = hub, init, piece, bound_s
        self.key: InitKey = (init, piece, bound_s)
        self.nodes: list[str] = []

    def __reduce__(self) -> tuple[Any, tuple[Any, str, int, float]]:
        return InitExchange, (self.hub, self.init, self.piece, self.bound_s)

    def expect(self, nodes: list[str]) -> Any:
        self.nodes = list(nodes)  # the replica's copy: whose agents to tell when it closes
        return self.hub.expect.remote(self.key, nodes)

    def join(self, node: str, digest: str, units: list[list[Unit]], timeout: float, claimed: list[Unit],
             agent: Agent | None) -> Any:
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


def start_exchange(part_size_mb: int, bound_s: float, idle_s: float, call_s: float) -> InitExchange:
    """This init's exchange, on the cluster's :class:`~node_init.cluster.ExchangeHub` (started if
    none runs).

    Called before placement, so a hub that has to start does so while placement runs: the init
    names its nodes with :meth:`InitExchange.expect` once placement has. The hub is pinned to the
    head node: placed on a worker node, it would die with that node and stop every init's sharing.

    Args:
        part_size_mb: The downloader's range size (pieces are a quarter of it).
        bound_s: Drop the init's state after this long without a call (``Bounds.exchange_idle_s``).
        idle_s: The hub exits after this long with no init open (``Bounds.hub_idle_s``).
        call_s: A new hub's bound on asking an older one whether it is idle (``Bounds.actor_call_s``).
    """
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from ._actors import ExchangeHub

    _send_by_value()
    hub: Any = ray.remote(ExchangeHub).options(
        name=EXCHANGE_NAME, namespace=EXCHANGE_NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=0, max_restarts=-1, max_concurrency=10_000, resources={"node:__internal_head__": 0.001},
        # Outside any group: a Serve replica's group captures its children, and no bundle is the head's.
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None),  # type: ignore[arg-type]
    ).remote(idle_s, call_s)
    exchange = InitExchange(hub, uuid.uuid4().hex, piece_size(part_size_mb * 1024 * 1024), bound_s)
    hub.open.remote(exchange.init, exchange.piece, bound_s, idle_s)
    return exchange


def close_exchange(exchange: InitExchange | None) -> None:
    """Drop an init's exchange, if it has one."""
    if exchange is not None:
        exchange.close()
