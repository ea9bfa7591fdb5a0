"""Cancelling an init reaches the transfer: the node's network reads stop within about a second."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from node_init import Bounds, initialize_node, parse_config
from node_init.testing import FaultProxy, S3Server, write_model_files
from tests.conftest import RayCluster

pytestmark = [pytest.mark.ray, pytest.mark.reliability, pytest.mark.anyio]
MB = 1 << 20


async def test_a_cancelled_init_stops_the_links_traffic(ray_cluster: RayCluster, s3_server: S3Server,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    # The node task is asked to stop, and does: no ray.cancel (which can crash the caller when it
    # races the task's start, a Ray bug), and the init returns soon after its cancel.
    cancels: list[object] = []
    real_cancel = ray.cancel
    monkeypatch.setattr(ray, "cancel", lambda *a, **k: (cancels.append(a), real_cancel(*a, **k))[1])
    local = tmp_path / "m"
    write_model_files(local, {"model.safetensors": 60 * MB})
    s3_server.upload_dir(local, "models", "cancel-me")
    proxy = FaultProxy(s3_server.endpoint, rate_mb_s=5.0).start()
    try:
        config = parse_config({
            "model_id": f"cancel-{time.monotonic_ns()}", "model_source": "s3://models/cancel-me", "placement": None,
            "download": {"timeout_s": 120, "s3": {"endpoint_url": proxy.endpoint, "access_key_id": "testing",
                                                  "secret_access_key": "testing"}},
        })
        started = time.monotonic()
        with anyio.move_on_after(4) as scope:
            await initialize_node(config)
        assert scope.cancelled_caught, "the download finished before the cancel: make the model larger"
        cancelled_at, sent_at_cancel = time.monotonic(), proxy.bytes_sent
        # Returned within the node task's own stop bound (it is asked to stop, then cancelled past stop_s).
        assert cancels == [] and cancelled_at - started < 4 + Bounds().stop_s
        assert sent_at_cancel > MB  # it was moving
        await anyio.sleep(1.0)
        settled = proxy.bytes_sent
        await anyio.sleep(2.0)
        assert proxy.bytes_sent - settled < 256 * 1024, "reads went on after the cancel"
        assert time.monotonic() - cancelled_at < 5
    finally:
        proxy.stop()
