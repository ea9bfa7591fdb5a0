"""Faults caused for real (Ray cluster, S3 server behind a fault proxy, killed processes, file-size limits).

Every case ends within its bound in a successful init or a typed error naming phase, node and cause;
no half-written file is visible in a model cache; no placement group is left behind.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import ray
import ray.util

from eventbus.testing import RecordingBus
from node_init import (
    DownloadError,
    DownloadProgress,
    InitFailed,
    NodeInitConfig,
    PhaseError,
    initialize_node,
)
from node_init.testing import Fault, FaultProxy, S3Server, iter_files, write_model_files
from tests._configs import node_config
from tests.conftest import REPO, RayCluster

pytestmark = [pytest.mark.reliability, pytest.mark.ray, pytest.mark.anyio]
H = "tests.reliability.hooks"
SPREAD3 = {"bundles": [{"CPU": 1}] * 3, "strategy": "STRICT_SPREAD", "ready_timeout_s": 30}
WEIGHTS = {"model-00001-of-00002.safetensors": 3 << 20, "model-00002-of-00002.safetensors": 2 << 20}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> dict[str, Any]:
    local = tmp_path_factory.mktemp("rel") / "m"
    write_model_files(local, WEIGHTS)
    s3_server.upload_dir(local, "models", "reliability")
    return {"local": local, "uri": "s3://models/reliability"}


def s3(endpoint: str) -> dict[str, Any]:
    return {"endpoint_url": endpoint, "access_key_id": "testing", "secret_access_key": "testing"}


def config(source: str, **over: Any) -> NodeInitConfig:
    # Faults on the origin link: no node may take the model from another instead (download.share is
    # tested in tests/node_init/test_share.py, a killed peer included).
    defaults = {"placement": SPREAD3, "download": {"timeout_s": 30, "stall_timeout_s": 5, "share": "off"}}
    return node_config(source, prefix="r", defaults=defaults, **over)


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in iter_files(root)}


def assert_clean(cluster: RayCluster, cfg: NodeInitConfig, original: Path) -> None:
    """No placement group of this init left; every visible cache file on every node is whole."""
    left = [pg for pg in ray.util.placement_group_table().values()
            if pg["name"] == f"node-init-{cfg.model_id}" and pg["state"] != "REMOVED"]
    assert left == []
    want = digest(original)
    for node in cluster.nodes:
        dest = node.cache / cfg.model_id
        if dest.exists():
            for key, h in digest(dest).items():
                assert want.get(key) == h, f"{node.name}: {key} visible but not whole"


@pytest.mark.parametrize("kind", ["raise", "hang"])
@pytest.mark.parametrize("phase", ["before_init", "before_download", "before_engine_init", "after_init"])
async def test_a_failing_or_hanging_handler_in_each_phase(ray_cluster: RayCluster, model: dict[str, Any],
                                                          phase: str, kind: str) -> None:
    cfg = config(str(model["local"]), handlers=[f"{H}:{kind}_{phase}"])
    bus = RecordingBus()
    start = time.monotonic()
    with pytest.raises(PhaseError) as info:
        await initialize_node(cfg, bus=bus)
    assert time.monotonic() - start < 20  # hangs are bounded by the handler's 1 s timeout
    err = info.value
    assert err.phase == phase
    assert ("timed out after 1.0s" if kind == "hang" else "injected failure") in str(err)
    if phase == "before_download":  # on a worker node, in its own process
        assert err.node_id in {n.node_id for n in ray_cluster.nodes}
    failed = [e for e in bus.events if isinstance(e, InitFailed)]
    assert len(failed) == 1 and failed[0].phase == phase and failed[0].node_id == err.node_id
    assert_clean(ray_cluster, cfg, model["local"])


async def test_a_cancelled_handler_on_a_node_is_a_typed_error(ray_cluster: RayCluster,
                                                              model: dict[str, Any]) -> None:
    cfg = config(str(model["local"]), handlers=[f"{H}:cancel_before_download"])
    with pytest.raises(PhaseError) as info:
        await initialize_node(cfg)
    assert info.value.node_id in {n.node_id for n in ray_cluster.nodes}
    assert_clean(ray_cluster, cfg, model["local"])


async def test_cancelling_the_init_stops_every_node_and_leaves_nothing(
        ray_cluster: RayCluster, s3_server: S3Server, model: dict[str, Any]) -> None:
    proxy = FaultProxy(s3_server.endpoint, rate_mb_s=1.0).start()  # ~5 s per node: still running at 2 s
    try:
        cfg = config(model["uri"], download={"s3": s3(proxy.endpoint), "part_size_mb": 1})
        with anyio.move_on_after(2.0) as scope:
            await initialize_node(cfg)
        assert scope.cancelled_caught
        time.sleep(1.0)
        assert_clean(ray_cluster, cfg, model["local"])
        # The node locks were released: the same init now succeeds at full speed.
        proxy.rate = None
        result = await initialize_node(cfg)
        assert all(digest(Path(r.path)) == digest(model["local"]) for r in result.reports)
        await result.close()
    finally:
        proxy.stop()


@pytest.mark.parametrize("fault", [
    Fault(kind="status", status=503, match="model-00001", count=2),
    Fault(kind="status", status=500, match="model-00002", count=2),
    Fault(kind="reset", match="model-00001", after_bytes=200_000, count=2),
    Fault(kind="truncate", match="model-00002", after_bytes=100_000, count=2),
], ids=["throttled", "5xx", "reset", "truncated"])
async def test_transient_s3_faults_are_retried_to_success(ray_cluster: RayCluster, s3_server: S3Server,
                                                          model: dict[str, Any], fault: Fault) -> None:
    proxy = FaultProxy(s3_server.endpoint).start()
    proxy.add(Fault(**{f: getattr(fault, f) for f in fault.__struct_fields__}))
    try:
        cfg = config(model["uri"], download={"s3": s3(proxy.endpoint), "part_size_mb": 1})
        result = await initialize_node(cfg)
        await result.close()
    finally:
        proxy.stop()
    assert proxy.injected  # the fault happened
    for report in result.reports:
        assert digest(Path(report.path)) == digest(model["local"])


async def test_a_stalled_or_short_object_fails_within_its_bound_naming_node_and_file(
        ray_cluster: RayCluster, s3_server: S3Server, model: dict[str, Any]) -> None:
    proxy = FaultProxy(s3_server.endpoint).start()
    proxy.add(Fault(kind="stall", match="model-00001", after_bytes=50_000, count=1000, seconds=120))
    try:
        cfg = config(model["uri"], download={"s3": s3(proxy.endpoint), "part_size_mb": 1, "retries": 1,
                                             "stall_timeout_s": 1.0})
        start = time.monotonic()
        with pytest.raises(DownloadError) as info:
            await initialize_node(cfg)
        assert time.monotonic() - start < 20
    finally:
        proxy.stop()
    err = info.value
    assert err.node_id in {n.node_id for n in ray_cluster.nodes} and "model-00001" in str(err)
    assert err.source == model["uri"]
    assert_clean(ray_cluster, cfg, model["local"])


async def test_a_node_removed_during_its_download(ray_cluster: RayCluster, s3_server: S3Server,
                                                  model: dict[str, Any], tmp_path: Path) -> None:
    doomed = ray_cluster.cluster.add_node(num_cpus=1, resources={"doomed": 1},
                                          env_vars={"NODE_INIT_CACHE_DIR": str(tmp_path / "doomed")})
    ray_cluster.cluster.wait_for_nodes()
    proxy = FaultProxy(s3_server.endpoint, rate_mb_s=0.5).start()
    bus = RecordingBus()
    try:
        cfg = config(model["uri"], placement={"bundles": [{"doomed": 1}], "strategy": "PACK",
                                              "ready_timeout_s": 30},
                     download={"s3": s3(proxy.endpoint), "part_size_mb": 1, "timeout_s": 60})
        doomed_id = doomed.node_id

        async def remove_when_downloading() -> None:
            while not any(isinstance(e, DownloadProgress) and e.node_id == doomed_id and e.bytes_done
                          for e in bus.events):
                await anyio.sleep(0.1)
            ray_cluster.cluster.remove_node(doomed, allow_graceful=False)

        start = time.monotonic()
        with pytest.raises(DownloadError) as info:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(remove_when_downloading)
                    await initialize_node(cfg, bus=bus)
            except ExceptionGroup as group:  # our own task group's wrapping
                raise group.exceptions[0] from None
        assert time.monotonic() - start < 60
    finally:
        proxy.stop()
    assert info.value.node_id == doomed_id
    assert any(isinstance(e, InitFailed) and e.node_id == doomed_id for e in bus.events)
    assert_clean(ray_cluster, cfg, model["local"])


async def test_two_replicas_on_one_node_download_once(ray_cluster: RayCluster, s3_server: S3Server,
                                                      model: dict[str, Any]) -> None:
    proxy = FaultProxy(s3_server.endpoint, rate_mb_s=10.0).start()
    try:
        cfg = config(model["uri"], placement=None, download={"s3": s3(proxy.endpoint), "part_size_mb": 1})
        results: list[Any] = []

        async def one() -> None:
            results.append(await initialize_node(cfg))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)
    finally:
        proxy.stop()
    total = sum(p.stat().st_size for p in iter_files(model["local"]))
    fetched = sorted(r.reports[0].bytes for r in results)
    assert fetched == [0, total]  # one downloaded; the other waited on the lock and reused it
    assert digest(Path(results[0].reports[0].path)) == digest(model["local"])


_DOWNLOAD = """
import resource, signal, sys
from pathlib import Path
from node_init import Bounds, DownloadConfig, S3Config
from node_init.download import Downloader, S3Source
limit = int(sys.argv[4])
if limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
stall = float(sys.argv[5])
src = S3Source(sys.argv[1], S3Config(endpoint_url=sys.argv[2]), bounds=Bounds(stall_s=stall))
try:
    # Two ranges at a time: a weight file of several ranges is part-written (its .state on disk) for
    # seconds, not for the instant between ranges that all finish together.
    config = DownloadConfig(part_size_mb=1, retries=0, stall_timeout_s=stall, concurrency=2)
    result = Downloader(src, Path(sys.argv[3]), config).run(src.list_files())
    print("OK", result.bytes, result.cached_bytes)
except Exception as exc:
    print(type(exc).__name__, exc)
    sys.exit(3)
"""


def run_downloader(uri: str, endpoint: str, dest: Path, fsize_limit: int = 0,
                   stall_s: float = 10) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    return subprocess.Popen([sys.executable, "-c", _DOWNLOAD, uri, endpoint, str(dest), str(fsize_limit),
                             str(stall_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)


def test_downloader_killed_mid_file_then_run_again(s3_server: S3Server, model: dict[str, Any],
                                                   tmp_path: Path) -> None:
    proxy = FaultProxy(s3_server.endpoint, rate_mb_s=1.0).start()
    dest = tmp_path / "m"
    partial = tmp_path / ".node-init" / "m" / "partial"
    try:
        proc = run_downloader(model["uri"], proxy.endpoint, dest)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list(partial.glob("*.state")):
            time.sleep(0.05)  # until a range of a weight file is written and recorded
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proxy.stop()
    assert list(partial.glob("*.state")), "the kill came before any range was recorded"
    want = digest(model["local"])
    assert not dest.exists()  # nothing half-written is visible
    again = run_downloader(model["uri"], s3_server.endpoint, dest)
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0, out
    _, fetched, _cached = out.strip().splitlines()[-1].split()
    assert int(fetched) < sum(WEIGHTS.values())  # resumed from the ranges written, not redone
    assert digest(dest) == want and list(partial.iterdir()) == []


def test_a_downloader_paused_past_the_stall_bound_finishes_when_it_resumes(s3_server: S3Server,
                                                                          model: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    """A node whose process is stopped (SIGSTOP: a hung host, a debugger, a starved VM) for longer than
    the stall bound, then resumed, finishes: the link was never silent while it could read, so the
    stall bound does not count the pause."""
    proxy = FaultProxy(s3_server.endpoint, rate_mb_s=1.0).start()
    dest = tmp_path / "m"
    partial = tmp_path / ".node-init" / "m" / "partial"
    try:
        proc = run_downloader(model["uri"], proxy.endpoint, dest, stall_s=2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list(partial.glob("*.state")):
            time.sleep(0.05)  # until a range is written: the pause comes mid-download
        proc.send_signal(signal.SIGSTOP)
        time.sleep(5)  # 2.5 stall bounds
        proc.send_signal(signal.SIGCONT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proxy.stop()
    assert proc.returncode == 0, out
    assert digest(dest) == digest(model["local"])


def test_disk_refusing_writes_is_a_download_error_and_nothing_partial(s3_server: S3Server,
                                                                      model: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    dest = tmp_path / "m"
    proc = run_downloader(model["uri"], s3_server.endpoint, dest, fsize_limit=1 << 20)  # 1 MiB file-size limit
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3
    last = out.strip().splitlines()[-1]
    assert last.startswith("DownloadError") and "cannot write to the cache" in last and "File too large" in last
    want = digest(model["local"])
    for key, h in digest(dest).items():
        assert want[key] == h
    assert not any(k.endswith(".safetensors") for k in digest(dest))
