"""Reading Ray's Prometheus endpoints back in tests (metrics are exported every second here)."""

from __future__ import annotations

import time
import urllib.request


def label(line: str, key: str) -> str:
    """The value of ``key`` in one exposition line (``name{key="value",...} 1.0``)."""
    return line.split(f'{key}="')[1].split('"')[0]


def scrape(name: str, *, having: str = "", nodes: set[str] | None = None, bound: float = 30.0) -> list[str]:
    """Every line of metric ``name`` (holding ``having``) on the live nodes, once some are there and, with
    ``nodes``, once every one of those nodes has a line (each node's agent exports on its own clock)."""
    import ray

    deadline = time.monotonic() + bound
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = []
        for node in ray.nodes():
            if node["Alive"] and node.get("MetricsExportPort"):
                url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
                try:
                    text = urllib.request.urlopen(url, timeout=5).read().decode()
                except OSError:
                    continue
                lines += [line for line in text.splitlines()
                          if line.startswith(name) and having in line and not line.startswith("#")]
        if lines and (nodes is None or nodes <= {label(line, "node") for line in lines if 'node="' in line}):
            return lines
        time.sleep(1)
    return lines
