"""A local Ray cluster whose nodes reach one S3-compatible server through one shared origin link.

Node i is a ``ray.cluster_utils.Cluster`` node with one CPU and the custom resource ``n{i}`` (a bundle
``{"n{i}": 1}`` pins to it). It reaches the server (moto, ``node_init.testing.S3Server``) through its
own proxy (its ``AWS_ENDPOINT_URL``), which goes through one shared proxy: capping a node proxy gives
that node its own link, capping the shared one gives all nodes one origin link. What crossed the
shared proxy (``shared.bytes_sent``) is what the origin sent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

#: Seconds of quiet before each measured init (after the last one's bundles are back).
QUIET_S = 1.0


@dataclass
class OriginLink:
    """The running pieces: the server, the shared proxy, one proxy per node, the cluster."""

    server: Any
    shared: Any
    proxies: list[Any]
    cluster: Any
    #: The nodes added after the head (node i is ``added[i - 1]``).
    added: list[Any]


@contextmanager
def origin_link_cluster(nodes: int, node_env: Callable[[int], dict[str, str]]) -> Iterator[OriginLink]:
    """Start the server, the proxies and a ``nodes``-node cluster (``ray.init`` connected); stop all after.

    Args:
        nodes: How many nodes (the head is node 0).
        node_env: Node i's extra environment (its caches); ``AWS_ENDPOINT_URL`` is added.
    """
    import ray
    from ray.cluster_utils import Cluster

    from node_init.testing import FaultProxy, S3Server

    server = S3Server().start()
    shared = FaultProxy(server.endpoint).start()
    proxies = [FaultProxy(shared.endpoint).start() for _ in range(nodes)]
    os.environ["PYTHONPATH"] = str(REPO)
    os.environ["RAY_AUTH_MODE"] = "disabled"

    def env(i: int) -> dict[str, str]:
        return {**node_env(i), "AWS_ENDPOINT_URL": proxies[i].endpoint}

    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"n0": 1},
                                                                "env_vars": env(0), "include_dashboard": False})
        added = [cluster.add_node(num_cpus=1, resources={f"n{i}": 1}, env_vars=env(i)) for i in range(1, nodes)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield OriginLink(server, shared, proxies, cluster, added)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()  # type: ignore[no-untyped-call]
        for p in [*proxies, shared]:
            p.stop()
        server.stop()


def quiet_cluster(nodes: int) -> None:
    """Wait until the previous init's placement group has given every node's bundle back, then
    :data:`QUIET_S`: each run starts on an idle cluster, so the last run's teardown (the group's
    removal, which delays a new group's scheduling by up to ~1 s here, its workers and objects
    going) is not measured into the next run, for either flow."""
    import ray

    def idle() -> bool:
        free = ray.available_resources()  # type: ignore[no-untyped-call]
        return all(free.get(f"n{i}", 0) >= 1 for i in range(nodes))

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not idle():
        time.sleep(0.02)
    time.sleep(QUIET_S)
