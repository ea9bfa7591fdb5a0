"""Phase timing: per-phase and per-node durations as Ray metrics, and one structured log line.

Config: ``handlers: [handlers.timing:handlers]``. On ``AfterInit`` it sets the
gauges below (labelled by model, phase and node), which reach Ray's Prometheus
endpoint; on ``InitFailed`` it counts the failure by phase.

- ``node_init_phase_seconds{model, phase}``
- ``node_init_node_download_seconds{model, node}`` and ``node_init_node_download_bytes{model, node}``
- ``node_init_failures_total{model, phase}``
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
_lock = threading.Lock()


def _metric(kind: str, name: str, description: str, tags: tuple[str, ...]) -> Any:
    """Ray metric objects are made once per process (Ray registers them by name)."""
    with _lock:
        if name not in _metrics:
            from ray.util import metrics

            cls = {"gauge": metrics.Gauge, "counter": metrics.Counter}[kind]
            _metrics[name] = cls(name, description=description, tag_keys=tags)
        return _metrics[name]


def _ray_ready() -> bool:
    try:
        import ray

        return bool(ray.is_initialized())
    except ImportError:
        return False


@handlers.on(AfterInit, priority=-100, on_error="log")
def record_timings(event: AfterInit, ctx: Any) -> None:
    """Log the timings and export them as Ray gauges."""
    _log.info("node init timings", model_id=event.model_id,
              **{f"{k}_s": round(v, 4) for k, v in event.timings.items()},
              nodes={r.node_id[:12]: round(r.seconds, 3) for r in event.reports})
    if not _ray_ready():
        return
    phase = _metric("gauge", "node_init_phase_seconds", "Seconds per node-init phase", ("model", "phase"))
    for name, seconds in event.timings.items():
        phase.set(seconds, tags={"model": event.model_id, "phase": name})
    node_s = _metric("gauge", "node_init_node_download_seconds", "Seconds of a node's download task",
                     ("model", "node"))
    node_b = _metric("gauge", "node_init_node_download_bytes", "Bytes a node fetched", ("model", "node"))
    for report in event.reports:
        tags = {"model": event.model_id, "node": report.node_id}
        node_s.set(report.seconds, tags=tags)
        node_b.set(report.bytes, tags=tags)


@handlers.on(InitFailed, on_error="log")
def count_failure(event: InitFailed, ctx: Any) -> None:
    """Count a failed init by phase."""
    if _ray_ready():
        counter = _metric("counter", "node_init_failures_total", "Failed node inits", ("model", "phase"))
        counter.inc(1.0, tags={"model": event.model_id, "phase": event.phase})


__all__ = ["count_failure", "handlers", "record_timings"]
