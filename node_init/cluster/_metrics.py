"""The exchange's metrics, through Ray (``ray.util.metrics``: Ray's Prometheus endpoint serves them
prefixed ``ray_``), recorded where they happen:

- ``node_init_exchange_call_seconds{call}`` (histogram): each exchange call's round trip as a node
  sees it, to the hub (``join``, ``rehome``) or to an agent (``take`` and ``drained`` include the
  wait for a peer; ``offer`` the wait for room);
- ``node_init_exchange_held_bytes{node}`` (gauge, set by each node once a second from what its
  agent says): bytes a node holds in its object store for peers that have not taken them yet.

Peer bytes and takeovers per node are in each :class:`~node_init.NodeReport` (``peer_bytes``,
``takeovers``); ``handlers.timing`` exports them. Outside Ray nothing is recorded.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Histogram buckets (seconds) of a hub call: a local round trip is about a millisecond.
CALL_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
_made: dict[str, Any] = {}
_lock = threading.Lock()


def _histogram() -> Any:
    with _lock:  # Ray registers a metric by name: one object per process
        if "calls" not in _made:
            from ray.util import metrics

            _made["calls"] = metrics.Histogram(
                "node_init_exchange_call_seconds", description="Round trip of an exchange hub call, as a node sees it",
                boundaries=CALL_BUCKETS_S, tag_keys=("call",))
        return _made["calls"]


@contextmanager
def timed_call(call: str) -> Iterator[None]:
    """Observe the block's seconds as one ``call`` (also when it raises: a failed call took that long)."""
    start = time.monotonic()
    try:
        yield
    finally:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            with contextlib.suppress(Exception):  # a metric must never fail the download it measures
                _histogram().observe(time.monotonic() - start, tags={"call": call})


def set_held(node: str, nbytes: int) -> None:
    """Set ``node_init_exchange_held_bytes{node}`` (from the node's own process, which outlives its agent)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    with contextlib.suppress(Exception):  # a metric must never fail the download it measures
        with _lock:
            if "held" not in _made:
                from ray.util import metrics

                _made["held"] = metrics.Gauge("node_init_exchange_held_bytes", tag_keys=("node",),
                                              description="Bytes a node holds in its object store for peers")
        _made["held"].set(float(max(0, nbytes)), tags={"node": node})
