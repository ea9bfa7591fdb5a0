"""One init's exchange in one process: the hub's part and an agent's together (tests, benchmarks).

On a cluster the parts live apart (:class:`~node_init.cluster.HubState` on the hub,
:class:`~node_init.cluster.AgentState` on each node's agent); docs/exchange.md describes the
messages between them. Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from ._agent_state import AgentState
from ._assign import Assignment
from ._hub_state import HubState


class Exchange(HubState, AgentState):
    """An init's whole exchange in one object: it assigns the ranges (:meth:`join`) and hands out
    their pieces (:meth:`offer`, :meth:`take` and their notes), as the hub and the agents do between
    them. A take waits for the assignment, not for an adoption.

    Args:
        piece: The piece size in bytes (:func:`~node_init.cluster.piece_size` of the downloader's range).
        nodes: The init's nodes, if known yet (else :meth:`expect` names them).
        on_held: Told each change of the bytes a node holds for its peers (node, change).
        publish: Makes the one answer every :meth:`join` returns.
    """

    _ADOPTS: ClassVar[bool] = False

    def __init__(self, piece: int, nodes: list[str] | None = None,
                 on_held: Callable[[str, int], None] | None = None,
                 publish: Callable[[Assignment], Any] | None = None) -> None:
        AgentState.__init__(self, piece, on_held)
        HubState.__init__(self, piece, nodes, publish)
