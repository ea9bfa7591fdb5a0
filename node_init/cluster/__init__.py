"""Node init across a Ray cluster: the placement group, and one task per node of it.

- :func:`resolve_placement_group` picks the group (a handler's, the Serve replica's,
  or one made from config) and :func:`placement_nodes` lists its distinct nodes.
- :func:`run_on_nodes` runs :func:`node_task` pinned to each node, concurrently. On its
  node, the task builds that process's bus, publishes ``BeforeDownload``
  (:func:`node_download`), streams back its :class:`Decision`, progress, and finally a
  :class:`~node_init.NodeReport`; the replica's :class:`NodeObserver` receives them.
- With ``download.share`` in force (:func:`sharing`), the nodes fetch the model once between
  them: the init's :class:`HubState` on the cluster's one :class:`ExchangeHub` actor
  :func:`assign` s each range several nodes need to one of them (a node starts on its
  :func:`provisional` share meanwhile) and answers every node with one :class:`Assignment`; each
  node's :class:`ExchangeAgent` hands out the ranges it owns (its :class:`AgentState`), and a
  :class:`SharedSource` reads a node's share from the source and the rest from its peers through
  Ray's object store. docs/exchange.md describes every message and a range's states.
  Across inits, nodes record what they hold in Ray's internal KV, and a node that joins later
  reads from a holder before the origin (``_holders``).

Ray is imported lazily, inside the functions that need it.
"""

from ._actors import ExchangeAgent as ExchangeAgent
from ._actors import ExchangeHub as ExchangeHub
from ._agent_state import AgentState as AgentState
from ._assign import Assignment as Assignment
from ._assign import assign as assign
from ._assign import assign_groups as assign_groups
from ._assign import needs_digest as needs_digest
from ._assign import provisional as provisional
from ._exchange import Exchange as Exchange
from ._handles import Agent as Agent
from ._handles import InitExchange as InitExchange
from ._handles import close_exchange as close_exchange
from ._handles import start_agent as start_agent
from ._handles import start_exchange as start_exchange
from ._holders import forget_holdings as forget_holdings
from ._hub_state import HubState as HubState
from ._hub_tree import share_tree as share_tree
from ._hub_tree import shared_tree as shared_tree
from ._node import Decision as Decision
from ._node import local_model_path as local_model_path
from ._node import node_download as node_download
from ._peer import SharedSource as SharedSource
from ._placement import may_span_nodes as may_span_nodes
from ._placement import placement_nodes as placement_nodes
from ._placement import remove_placement_group as remove_placement_group
from ._placement import resolve_placement_group as resolve_placement_group
from ._protocol import AGENT_PREFIX as AGENT_PREFIX
from ._protocol import EXCHANGE_NAME as EXCHANGE_NAME
from ._protocol import EXCHANGE_NAMESPACE as EXCHANGE_NAMESPACE
from ._protocol import EXCHANGE_PREFIX as EXCHANGE_PREFIX
from ._protocol import PROTOCOL as PROTOCOL
from ._protocol import Answer as Answer
from ._protocol import piece_size as piece_size
from ._protocol import pieces_of as pieces_of
from ._remote import STOP_NAMESPACE as STOP_NAMESPACE
from ._remote import NodeLog as NodeLog
from ._remote import NodeObserver as NodeObserver
from ._remote import NodeStatus as NodeStatus
from ._remote import node_task as node_task
from ._remote import run_on_nodes as run_on_nodes
from ._share import open_exchange as open_exchange
from ._share import share_enabled as share_enabled
from ._share import sharing as sharing
from ._share import units_of as units_of
from ._view import SourceView as SourceView
from ._view import piece_sum as piece_sum

__all__ = [
    "share_tree",
    "shared_tree",
    "AGENT_PREFIX",
    "EXCHANGE_NAME",
    "EXCHANGE_NAMESPACE",
    "EXCHANGE_PREFIX",
    "PROTOCOL",
    "STOP_NAMESPACE",
    "Agent",
    "AgentState",
    "Answer",
    "Assignment",
    "Decision",
    "Exchange",
    "ExchangeAgent",
    "ExchangeHub",
    "HubState",
    "InitExchange",
    "NodeLog",
    "NodeObserver",
    "NodeStatus",
    "SharedSource",
    "SourceView",
    "assign",
    "assign_groups",
    "close_exchange",
    "forget_holdings",
    "local_model_path",
    "may_span_nodes",
    "needs_digest",
    "node_download",
    "node_task",
    "open_exchange",
    "piece_size",
    "piece_sum",
    "pieces_of",
    "placement_nodes",
    "provisional",
    "remove_placement_group",
    "resolve_placement_group",
    "run_on_nodes",
    "share_enabled",
    "sharing",
    "start_agent",
    "start_exchange",
    "units_of",
]
