"""Who fetches which range: the assignment the hub makes once every node of an init has joined.

Standard library only (sent to Ray by value with the actors).
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
from typing import Any

from ._protocol import Unit

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
        agents: Each node's :class:`~node_init.cluster.ExchangeAgent` (where the ranges it owns are
            handed out).
        needs: Who needs what, in groups of nodes that need the same ranges (nodes that joined late
            or are gone are in none: they take nothing from peers).
    """

    owners: dict[Unit, str]
    agents: dict[str, Any]
    needs: list[Group]

    def member(self, node: str) -> bool:
        """Whether ``node`` takes part (it joined in time)."""
        return any(node in nodes for _, nodes in self.needs)
