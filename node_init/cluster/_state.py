"""What the hub's and an agent's part of one init's exchange share: the owners, who needs what,
the nodes gone, and one condition every wait is on. Standard library only (sent by value)."""

from __future__ import annotations

import asyncio
from typing import Any

from ._assign import Group
from ._protocol import Unit


class State:
    """The state both parts of an init's exchange keep (see :class:`~node_init.cluster.HubState`
    and :class:`~node_init.cluster.AgentState`); every wait has a bound and returns ``False`` at it.

    Args:
        piece: The piece size in bytes (:func:`~node_init.cluster.piece_size` of the downloader's range).
    """

    def __init__(self, piece: int) -> None:
        self._piece = piece
        self._owners: dict[Unit, str] | None = None  # assigned (hub), or adopted (agent)
        self._needs: list[Group] = []  # who needs what, once assigned (or adopted)
        self._gone: set[str] = set()
        self._cv = asyncio.Condition()

    async def _wait(self, predicate: Any, timeout: float) -> bool:
        async with self._cv:
            try:
                await asyncio.wait_for(self._cv.wait_for(predicate), timeout)
            except TimeoutError:
                return bool(predicate())
            return True

    def _mark_gone(self, node: str) -> None:
        """``node`` died or failed (each part adds what that means to it; called under the lock)."""
        self._gone.add(node)

    async def gone(self, node: str) -> None:
        """``node`` died or failed: its offers may be lost and what it owns comes from the source."""
        async with self._cv:
            self._mark_gone(node)
            self._cv.notify_all()
