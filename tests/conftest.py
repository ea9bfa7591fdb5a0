"""Session-wide fixtures: one Ray cluster (head + 2 nodes, a cache root each) for the Ray tiers."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import psutil
import pytest

from tests._procs import (
    SESSION_MARK,
    SESSION_VAR,
    alive,
    descendants,
    describe,
    holders,
    marked,
    opened_ports,
    wait_gone,
)

if TYPE_CHECKING:
    from node_init.testing import AzuriteServer, FaultProxy, GCSServer, S3Server

REPO = Path(__file__).resolve().parent.parent
# vLLM on CPU: a small KV cache (GB) is plenty for the tiny test models.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
#: The session Ray cluster's nodes' ``VLLM_CPU_KVCACHE_SPACE`` (see ``ray_cluster``).
CLUSTER_KV_GIB = "2"
# The AWS credential chain must never query the instance metadata address from a test, nor Google's
# the GCE metadata server (google-auth reads NO_GCE_CHECK; its host, if asked anyway, is a closed port).
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["NO_GCE_CHECK"] = "true"
os.environ["GCE_METADATA_HOST"] = os.environ["GCE_METADATA_IP"] = "127.0.0.1:9"
# Nor Azure's: a managed identity asked anyway (azure-identity installed, no key) goes to the App Service
# endpoint these name, a closed port, never the instance metadata address.
os.environ["IDENTITY_ENDPOINT"] = "http://127.0.0.1:9/msi/token"
os.environ["IDENTITY_HEADER"] = "test"
# Every process the session starts inherits this mark, so one left running is found at the end even
# after its parent ended and it was re-parented (see ``_nothing_left_behind``).
os.environ[SESSION_VAR] = SESSION_MARK
# How long the session's end waits for what the suite started to end: a Ray worker notices its raylet's
# end on its own next check, a second or two later.
LEFT_BEHIND_GRACE_S = 30.0


def pytest_report_header() -> str:
    # A full disk fails tests far from its cause (ENOSPC in a fixture); say up front how much there was.
    tmp = tempfile.gettempdir()
    return f"free disk at {tmp}: {shutil.disk_usage(tmp).free / 2**30:.1f} GiB"


@dataclass(frozen=True)
class SimNode:
    """One simulated node: its name (NODE_NAME there), Ray node id and cache root."""

    name: str
    node_id: str
    cache: Path


@dataclass(frozen=True)
class RayCluster:
    address: str
    nodes: tuple[SimNode, ...]
    cluster: Any = None  # ray.cluster_utils.Cluster, for tests that add and remove their own nodes
    root: Path = Path()

    def by_id(self, node_id: str) -> SimNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    @property
    def head(self) -> SimNode:
        return self.nodes[0]


def _interpreter_helper(proc: psutil.Process, me: psutil.Process) -> bool:
    """multiprocessing's resource tracker or fork server of this process (vLLM's engines start one): it
    belongs to the interpreter, and ends when this process does (its pipe closes)."""
    try:
        cmdline = " ".join(proc.cmdline())
        return proc.ppid() == me.pid and re.search(r"from multiprocessing\.(resource_tracker|forkserver) import main",
                                                   cmdline) is not None
    except psutil.Error:
        return False


def _left_behind(ports: set[int]) -> list[str]:
    """Processes the session started that still run (descendants of this process, or carrying the
    session's mark), ``ports`` one of them (or this process) still listens on, and any other socket
    this process still listens on. A port another program holds is not the suite's doing."""
    me = psutil.Process()
    procs = {p.pid: p for p in [*me.children(recursive=True), *marked(SESSION_VAR, SESSION_MARK)]
             if alive(p) and not _interpreter_helper(p, me)}
    found = [f"process {describe(p)}" for p in procs.values()]
    for port in sorted(ports):
        found += [f"port {port}: {what}" for pid, what in holders(port) if pid in procs or pid == me.pid]
    found += [f"port {c.laddr.port}: this test process ({c.laddr.ip})"
              for c in me.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port not in ports]
    return found


def _ray_processes(cluster: Any) -> list[psutil.Process]:
    """Every process of a ``ray.cluster_utils.Cluster``'s nodes (GCS, raylets, their workers)."""
    roots = []
    for node in [cluster.head_node, *cluster.worker_nodes]:
        for infos in (node.all_processes.values() if node is not None else ()):
            for info in infos:
                with contextlib.suppress(psutil.Error):
                    roots.append(psutil.Process(info.process.pid))
    return descendants(roots)


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    """The suite leaves no process and no listening port behind.

    Set up before every other session fixture, so torn down after them (the Ray cluster and the store
    servers have stopped by then): whatever the session started and still runs, and the ports it opened
    (Serve's 8000, the store servers') still listening after a bounded grace, fail the session by name,
    and are then killed so they do not outlive it.
    """
    yield
    deadline = time.monotonic() + LEFT_BEHIND_GRACE_S
    while (found := _left_behind(opened_ports)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if found:
        me = psutil.Process()
        for proc in [*me.children(recursive=True), *marked(SESSION_VAR, SESSION_MARK)]:
            if not _interpreter_helper(proc, me):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        raise AssertionError(f"the test session left behind, {LEFT_BEHIND_GRACE_S:g}s after its last test "
                             "(now killed):\n  " + "\n  ".join(found))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Ray's awaitables need asyncio; tests/eventbus runs on trio too


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """A real 3-node Ray cluster on this machine, shared by the whole session.

    Each node has its own ``NODE_INIT_CACHE_DIR`` (simulated nodes share one
    disk: without this every node but the first would reuse the first's files)
    and a ``NODE_NAME`` the test hooks read. ``PYTHONPATH`` is set first, so
    workers import ``tests.*`` hook modules by path.
    """
    import ray
    from ray.cluster_utils import Cluster

    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p
    )
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    root = tmp_path_factory.mktemp("nodes")
    # Logical CPUs: each Serve LLM replica takes 2 on one node (bundle + actor), each ingress 1. The
    # Serve module holds two applications while a third deploys (3 + 3 + 3 on the head: the stock one's
    # other bundles fill node1 and node2), so the head has room for all three.
    specs = [("head", 10), ("node1", 1), ("node2", 1)]
    # The nodes' own KV cache size differs from the 1 GiB every example writes: an example whose setting
    # does not reach its engine shows 2 GiB in vLLM's log instead of passing on the session's value.
    kv = {"VLLM_CPU_KVCACHE_SPACE": CLUSTER_KV_GIB}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": specs[0][1], "resources": {"head": 1},
            "env_vars": {"NODE_INIT_CACHE_DIR": str(root / "head"), "NODE_NAME": "head", **kv},
            "include_dashboard": False,
            # Export metrics every second, so tests read them back from Prometheus promptly.
            # Faster node-death detection, for the node-removal fault.
            "_system_config": {"metrics_report_interval_ms": 1000, "health_check_period_ms": 1000,
                               "health_check_failure_threshold": 3},
        },
    )
    for name, cpus in specs[1:]:
        cluster.add_node(num_cpus=cpus, resources={name: 1},
                         env_vars={"NODE_INIT_CACHE_DIR": str(root / name), "NODE_NAME": name, **kv})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    os.environ["NODE_INIT_CACHE_DIR"] = str(root / "head")  # the driver lives on the head node
    os.environ["NODE_NAME"] = "head"
    ids: dict[str, str] = {}
    for node in ray.nodes():
        for name, _ in specs:
            if node["Alive"] and name in node["Resources"]:
                ids[name] = node["NodeID"]
    nodes = tuple(SimNode(name, ids[name], root / name) for name, _ in specs)
    try:
        yield RayCluster(cluster.address, nodes, cluster, root)
    finally:
        ours = _ray_processes(cluster)
        ray.shutdown()
        cluster.shutdown()
        # Its raylets are gone; their workers end on their own next check. Every one of them, before the
        # session's end looks for what was left behind.
        left = wait_gone(ours, LEFT_BEHIND_GRACE_S)
        assert not left, "Ray's processes outlived the cluster's shutdown: " + "; ".join(describe(p) for p in left)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One real S3-compatible server (moto over HTTP) on 127.0.0.1 for the session."""
    from node_init.testing import S3Server

    server = S3Server().start()
    opened_ports.add(int(urlsplit(server.endpoint).port or 0))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GCSServer]:
    """One real GCS emulator (fake-gcs-server) on 127.0.0.1 for the session."""
    from node_init.testing import GCSServer

    server = GCSServer().start()
    opened_ports.add(int(urlsplit(server.endpoint).port or 0))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def azure_server() -> Iterator[AzuriteServer]:
    """One real Azure Blob Storage emulator (Azurite, installed by ``make setup``) on 127.0.0.1 for the session."""
    from node_init.testing import AzuriteServer

    server = AzuriteServer().start()
    opened_ports.add(int(urlsplit(server.root).port or 0))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fault_proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A fault-injecting, bandwidth-capping proxy in front of the session's S3 server."""
    from node_init.testing import FaultProxy

    proxy = FaultProxy(s3_server.endpoint).start()
    try:
        yield proxy
    finally:
        proxy.stop()
