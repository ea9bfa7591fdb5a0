"""A node's side of one init's exchange: its join and the settling that follows it (a thread), the
agents it calls, its one-way notes, and its finish. :class:`~node_init.cluster.SharedSource` reads
through it; every call waits through :func:`~node_init.cluster._call.call`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
import structlog

from .._bounds import WATCH_EVERY_S, Bounds
from .._config import DownloadConfig
from ..download import Source
from ._call import Unanswered, answering, call
from ._handles import Agent
from ._metrics import set_held
from ._protocol import Answer, Unit, piece_size, pieces_of
from ._view import SourceView

_log = structlog.get_logger("node_init.share")


@attrs.define
class ShareStats:
    """What one node's shared download took from where."""

    peer_bytes: int = 0
    offered: int = 0
    refetched: int = 0
    takeovers: int = 0  # ranges this node took over from a dead or hung owner



class ExchangeClient(SourceView):
    """This node's calls to the exchange for one init (see :class:`~node_init.cluster.SharedSource`,
    which documents the arguments).

    Until the join answers, the node reads by its provisional owners and keeps the pieces it
    reads for its peers (within ``share_memory_mb``): a thread waits for the answer, has this
    node's agent adopt it, then offers those pieces (:meth:`_settle`).
    """

    def __init__(self, origin: Source, exchange: Any, node_id: str, owners: dict[Unit, str],
                 cfg: DownloadConfig, *, joining: Any = None, agent: Agent | None = None,
                 needs: list[Unit] | None = None) -> None:
        super().__init__(origin)
        self.exchange = exchange
        self.node_id = node_id
        self.owners = owners
        self.agent = agent
        self.agents: dict[str, Agent] = {node_id: agent} if agent is not None else {}
        self._needs = needs or list(owners)
        self._assigned: dict[Unit, str] = {}  # the exchange's owners, as it answered (whose agent hands out what)
        self._homes: dict[Unit, str] = {}  # ranges handed out elsewhere than by their first owner's agent
        self._offered_to: set[str] = set()  # other nodes' agents this node offered pieces to (takeovers)
        self._runs: dict[Unit, dict[int, list[Any]]] = {}  # offers a take handed over ahead of need
        self._published: Any = None  # the exchange's answer (its object reference, on Ray)
        self.stats = ShareStats()
        self._part = cfg.part_size_mb * 1024 * 1024
        self._piece = piece_size(self._part)
        self._limit = cfg.share_memory_mb * 1024 * 1024
        self._bounds = bounds = Bounds.of_download(cfg)
        self._wait_s = bounds.silence_s  # an owner silent this long counts as hung
        self._join_s = bounds.rpc(bounds.join_s)  # the exchange's own bound, plus its start
        self._taken_upto: dict[Unit, int] = {}  # peers' ranges: pieces taken so far
        self._released: set[Unit] = set()  # peers' ranges read from the source instead
        self._lock = threading.Lock()
        self._joined = threading.Event()
        self._adopted = threading.Event()  # its agent hands out what this node owns
        self._ready = threading.Event()  # offers go out now (adopted, or never to be)
        self._settled = threading.Event()  # the join answered and what was read before it was offered
        self._closing = threading.Event()  # the settler's held-bytes reports stop
        self._closed = False
        self._early: list[tuple[Unit, int, Any, int]] = []  # pieces read before the join answered
        self._early_bytes = 0
        self._stopped: set[Unit] = set()  # own ranges no longer offered
        self._took_over: set[Unit] = set()  # ranges this node was told it owns by a take
        self._settler: threading.Thread | None = None
        if joining is None:
            self._joined.set()
            self._ready.set()
        else:
            self._settler = threading.Thread(target=self._settle, args=(joining,), daemon=True,
                                             name="node-init-share-join")
            self._settler.start()

    def _settle(self, joining: Any) -> None:
        """Wait for the exchange's assignment, have this node's agent hand out what it owns, then
        offer the pieces read before it came."""
        import ray

        owners: dict[Unit, str] = {}
        published: Any = None
        try:
            with answering("join"):
                box = ray.get(joining, timeout=self._join_s)
                published = box[0]
                assignment = ray.get(published, timeout=self._join_s) if isinstance(published, ray.ObjectRef) \
                    else published
            if assignment.member(self.node_id):
                self._published = published  # its takes carry it: an agent whose node hung adopts it from them
                self.agents = {node: agent for node, agent in assignment.agents.items() if agent is not None}
                owners = self._assigned = assignment.owners
            else:
                _log.warning("joined too late: fetching every range from the source", node_id=self.node_id)
        except Unanswered as exc:  # no exchange: every range from the source
            _log.warning("no exchange: fetching every range from the source", node_id=self.node_id, error=exc.kind)
        with self._lock:
            # Ranges taken over since the answer was sent are this node's now (see stream()).
            self.owners = {**owners, **{u: self.node_id for u in self._took_over}}
            self._joined.set()  # its takes may go to peers' agents now; its offers wait for its own
        if owners and self.agent is not None:
            try:
                # Its agent learns what it hands out before any offer reaches it (a first agent on a
                # node is a process to start: the pieces read meanwhile wait here, within the memory bound).
                call("adopt", self._join_s, self.agent.adopt, published)
                self._adopted.set()
            except Unanswered as exc:
                _log.warning("no agent: peers fetch this node's share from the source", node_id=self.node_id,
                             error=exc.kind)
        with self._lock:
            early, self._early, self._early_bytes = self._early, [], 0
            self._ready.set()
        if early and not self._closed:
            self._send_early(early)
        self._settled.set()
        while self._adopted.is_set() and self.agent is not None and not self._closing.wait(WATCH_EVERY_S):
            with contextlib.suppress(Unanswered):  # a metric, best effort: the next look tries again
                set_held(self.node_id, call(None, self._join_s, self.agent.held).get(self.node_id, 0))

    def _home(self, unit: Unit) -> str:
        """The node whose agent hands ``unit`` out: its owner's, unless that agent died."""
        return self._homes.get(unit) or self._assigned.get(unit) or self.node_id

    def _agent_of(self, unit: Unit) -> Agent | None:
        return self.agents.get(self._home(unit))

    def _send_early(self, early: list[tuple[Unit, int, list[Any], int]]) -> None:
        """Offer the pieces read before the offers could go out: one call per agent they go to (its
        own, and that of a range it took over from a silent owner meanwhile)."""
        mine = [(u, i, box, n) for u, i, box, n in early if self.owners.get(u) == self.node_id]
        for unit in {u for u, _, _, _ in early if self.owners.get(u) != self.node_id}:
            self._stopped.add(unit)  # not this node's after all: its tee offers no more of it
            self._release(unit)
        by_agent: dict[str, list[tuple[Unit, int, list[Any], int]]] = {}
        for offer in mine:
            agent = self._agent_of(offer[0])
            if agent is None or (agent is self.agent and not self._adopted.is_set()):
                self._stopped.add(offer[0])
            else:
                by_agent.setdefault(agent.node, []).append(offer)
        for node, offers in by_agent.items():
            if node != self.node_id:
                self._offered_to.add(node)
            try:
                answers = call("offer_all", self._bounds.rpc(len(offers) * self._wait_s), self.agents[node].offer_all,
                               self.node_id, offers, self._limit, self._wait_s)
            except Unanswered as exc:  # the agent is gone: peers use the source
                _log.info("cannot offer to peers", node_id=self.node_id, agent=node, error=exc.kind)
                self._stopped.update(u for u, _, _, _ in offers)
                continue
            for (unit, index, _, _), answer in zip(offers, answers, strict=True):
                if answer == Answer.OK:
                    self.stats.offered += 1
                elif unit not in self._stopped:
                    _log.info("offer not taken up", node_id=self.node_id, file=unit[0], index=index, answer=answer)

    def _release(self, unit: Unit) -> None:
        """This node reads the rest of ``unit`` from the source: it takes nothing more of it."""
        self._released.add(unit)
        self._note(unit, lambda a: a.release(self.node_id, unit))

    def _note(self, unit: Unit, send: Callable[[Agent], Any]) -> None:
        """A one-way note to the agent that hands ``unit`` out; if it is unreachable, only the
        sharing stops, not the download."""
        agent = self._agent_of(unit)
        if agent is None:
            return
        try:
            with answering(None):
                send(agent)
        except Unanswered as exc:
            _log.info("exchange agent unreachable", node_id=self.node_id, agent=agent.node, error=exc.kind)


    def finish(self, timeout: float) -> None:
        """This node's download ended: tell the agents it dealt with, then keep offered objects alive
        (bounded) until every peer has taken them (this worker owns them: they go when it exits),
        then end its own agent."""
        import ray

        if self._settler is not None and timeout > 0:  # what was read before the join goes out first
            self._settled.wait(self._join_s)
        self._closed = True
        deadline = time.monotonic() + timeout
        try:
            # Its own agent (it offers no more), those it offered to, those it still expected pieces from.
            homes = {self.node_id, *self._offered_to, *(self._home(u) for u in self._expected_from())}
            with answering(None):
                notes = [agent.finished(self.node_id) for home in sorted(homes) if (agent := self.agents.get(home))]
            with answering("finished"):  # notes: an agent gone with its node is not waited for
                ray.wait(notes, num_returns=len(notes), timeout=self._bounds.retry_s)
            with answering(None):
                waits = [agent.drained(None if home == self.node_id else self.node_id, timeout)
                         for home in sorted({self.node_id, *self._offered_to}) if (agent := self.agents.get(home))]
            if timeout > 0 and waits:
                with answering("drained"):
                    done, _ = ray.wait(waits, num_returns=len(waits),
                                       timeout=self._bounds.rpc(max(0.0, deadline - time.monotonic())))
                    drained = len(done) == len(waits) and all(ray.get(done))
                if not drained:
                    _log.warning("peers did not take every offered range in time", node_id=self.node_id)
                else:
                    set_held(self.node_id, 0)
        except Unanswered as exc:  # the init is over (its exchange is gone)
            _log.info("exchange gone before this node finished", node_id=self.node_id, error=exc.kind)
        finally:
            self._closing.set()
            if self.agent is not None and timeout <= 0:
                # Failed: what it owns comes from the source, read once by the first peer to ask.
                try:
                    with answering(None):
                        self.agent.gone(self.node_id)
                except Unanswered as exc:  # its agent is gone too: peers find it so and ask the hub
                    _log.info("exchange agent unreachable", node_id=self.node_id, error=exc.kind)

    def _expected_from(self) -> list[Unit]:
        """Peers' ranges this node needed and neither took whole nor let go of (it ended early)."""
        return [u for u in self._needs if self._assigned.get(u, self.node_id) != self.node_id
                and u not in self._released and self._taken_upto.get(u, 0) < pieces_of(u, self._piece)]
