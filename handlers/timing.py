"""Phase timing: per-phase and per-node durations as Ray metrics, and one structured log line.

Config: ``handlers: [handlers.timing:handlers]``. On ``AfterInit`` it records the
metrics below (labelled by model, phase and node) through ``ray.util.metrics``,
so they reach Ray's Prometheus endpoint (prefixed ``ray_``); on ``InitFailed``
it counts the failure by phase. Durations are histograms, not gauges: an init
happens once per replica start, and Ray drops gauge series nobody re-sets.
Prometheus sums of a histogram approximate from bucket boundaries; the exact
figures are in the structured log line ``node init timings``.

- ``node_init_phase_seconds{model, phase}`` (histogram)
- ``node_init_node_download_seconds{model, node}`` (histogram)
- ``node_init_node_download_bytes{model, node}`` (counter; not incremented by a warm cache's 0)
- ``node_init_node_cached_bytes{model, node}`` (counter: bytes reused from the node's cache)
- ``node_init_checksum_rereads{model, node}`` (counter: files read again after their bytes differed
  from the origin's checksum)
- ``node_init_bad_node_ranges{model, node, sender}`` (counter: pieces or ranges another node sent
  that differed from their owner's checksum or the origin's, read from the origin instead)
- ``node_init_peer_bytes{model, node}`` (counter: bytes a node took from other nodes, ``download.share``)
- ``node_init_exchange_takeovers{model, node}`` (counter: ranges a node took over from a dead or silent owner)
- ``node_init_failures{model, phase}`` (counter)

The exchange's own metrics (hub call latency, bytes held for peers) are recorded by
``node_init.cluster`` where they happen, with or without this handler.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog

from eventbus import HandlerSet
from node_init import AfterInit, InitFailed

handlers = HandlerSet()
_log = structlog.get_logger("handlers.timing")
_metrics: dict[str, Any] = {}
#: Histogram buckets (seconds): from a cached tiny model to a large cold download.
BUCKETS_S = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000]
_lock = threading.Lock()


def _metric(kind: str, name: str, description: str, tags: tuple[str, ...]) -> Any:
    """Ray metric objects are made once per process (Ray registers them by name)."""
    with _lock:
        if name not in _metrics:
            from ray.util import metrics

            if kind == "histogram":
                _metrics[name] = metrics.Histogram(name, description=description, boundaries=BUCKETS_S,
                                                   tag_keys=tags)
            else:
                _metrics[name] = metrics.Counter(name, description=description, tag_keys=tags)
        return _metrics[name]


def _ray_ready() -> bool:
    try:
        import ray

        return bool(ray.is_initialized())
    except ImportError:
        return False


@handlers.on(AfterInit, priority=-100, on_error="log")
def record_timings(event: AfterInit, ctx: Any) -> None:
    """Log the timings and export them as Ray histograms and counters."""
    _log.info("node init timings", model_id=event.model_id,
              **{f"{k}_s": round(v, 4) for k, v in event.timings.items()},
              nodes={r.node_id[:12]: round(r.seconds, 3) for r in event.reports})
    if not _ray_ready():
        return
    phase = _metric("histogram", "node_init_phase_seconds", "Seconds per node-init phase", ("model", "phase"))
    for name, seconds in event.timings.items():
        phase.observe(seconds, tags={"model": event.model_id, "phase": name})
    node_s = _metric("histogram", "node_init_node_download_seconds", "Seconds of a node's download task",
                     ("model", "node"))
    node_b = _metric("counter", "node_init_node_download_bytes", "Bytes a node fetched", ("model", "node"))
    node_c = _metric("counter", "node_init_node_cached_bytes", "Bytes a node reused from its cache",
                     ("model", "node"))
    rereads = _metric("counter", "node_init_checksum_rereads",
                      "Files read again after their bytes differed from the origin's checksum", ("model", "node"))
    bad = _metric("counter", "node_init_bad_node_ranges",
                  "Pieces or ranges a node sent that differed from the origin's bytes", ("model", "node", "sender"))
    peer = _metric("counter", "node_init_peer_bytes", "Bytes a node took from other nodes of its init",
                   ("model", "node"))
    takeovers = _metric("counter", "node_init_exchange_takeovers",
                        "Ranges a node took over from a dead or silent owner", ("model", "node"))
    for report in event.reports:
        tags = {"model": event.model_id, "node": report.node_id}
        node_s.observe(report.seconds, tags=tags)
        if report.peer_bytes:
            peer.inc(float(report.peer_bytes), tags=tags)
        if report.takeovers:
            takeovers.inc(float(report.takeovers), tags=tags)
        if report.rereads:
            rereads.inc(float(len(report.rereads)), tags=tags)
        for sender, count in report.bad_nodes.items():
            bad.inc(float(count), tags={**tags, "sender": sender})
        # Ray's Counter refuses an increment of 0 (a warm cache fetches nothing): skip it.
        if report.bytes > 0:
            node_b.inc(float(report.bytes), tags=tags)
        if report.cached_bytes > 0:
            node_c.inc(float(report.cached_bytes), tags=tags)


@handlers.on(InitFailed, on_error="log")
def count_failure(event: InitFailed, ctx: Any) -> None:
    """Count a failed init by phase."""
    if _ray_ready():
        counter = _metric("counter", "node_init_failures", "Failed node inits", ("model", "phase"))
        counter.inc(1.0, tags={"model": event.model_id, "phase": event.phase})


__all__ = ["count_failure", "handlers", "record_timings"]
