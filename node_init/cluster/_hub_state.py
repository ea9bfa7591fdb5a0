"""The hub's part of one init's exchange: every node joins once, and once all have (or are gone)
each range two or more need is assigned, in one :class:`~node_init.cluster.Assignment` for all.
Standard library only (sent by value)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._assign import Assignment, Group, assign_groups
from ._protocol import Answer, Unit
from ._state import State


class HubState(State):
    """One init on the hub: who joined, what they need, the assignment, and where a range is handed
    out once its first home died. Its work grows with the nodes, never with the pieces.

    Args:
        piece: The piece size in bytes.
        nodes: The init's nodes, if known yet (else :meth:`expect` names them).
        publish: Makes the one answer every :meth:`join` returns (the hub puts it in Ray's object
            store, so it is serialized once, not once per node).
    """

    def __init__(self, piece: int, nodes: list[str] | None = None,
                 publish: Callable[[Assignment], Any] | None = None) -> None:
        State.__init__(self, piece)
        self._publish = publish or (lambda a: a)
        self._expected: set[str] | None = set(nodes) if nodes is not None else None
        self._groups: dict[str, tuple[set[Unit], list[str]]] = {}  # needs digest -> (ranges, nodes)
        self._joined: set[str] = set()
        self._agents: dict[str, Any] = {}
        self._claims: dict[str, set[Unit]] = {}
        self._answer: Any = None
        self._homes: dict[Unit, str] = {}  # where a range is handed out, once its home died

    def agents(self) -> dict[str, Any]:
        """Each joined node's agent (what the hub tells of a node gone, or of the init's end)."""
        return dict(self._agents)

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

    def _mark_gone(self, node: str) -> None:
        self._gone.add(node)
        self._assign_if_ready()  # the init no longer waits for it to join
        super()._mark_gone(node)

    def knows(self, digest: str) -> bool:
        """Whether a node already sent the ranges known by ``digest`` (see :func:`needs_digest`)."""
        return digest in self._groups

    async def join(self, node: str, units: list[Unit] | None, timeout: float, claimed: list[Unit] | None = None,
                   *, agent: Any = None, digest: str | None = None) -> Any:
        """Record what ``node`` needs (``units``, known by ``digest``: ``None`` if the hub has them
        under it already), the ranges it already reads for its peers (``claimed``) and its
        :class:`~node_init.cluster.ExchangeAgent`; once all have joined (or ``timeout`` passed:
        those that did not are left out), the :class:`~node_init.cluster.Assignment` (published)."""
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

    async def rehome(self, node: str, unit: Unit, home: str) -> Answer | str | None:
        """``unit``'s agent, on ``home``, is unreachable (its node died). :attr:`Answer.OWN` to the
        first node to say so (it reads the range and hands it out from its own agent, see
        :meth:`AgentState.home`), the node whose agent hands it out now to the others, ``None`` if unshared."""
        async with self._cv:
            owner = (self._owners or {}).get(unit)
            if owner is None:
                return None
            now = self._homes.get(unit, owner)
            if now != home:
                return now
            self._homes[unit] = node
            return Answer.OWN
