"""No secret reaches a log line, an error, a repr or an event: a failing S3 run, every log grepped."""

from __future__ import annotations

import pickle
from pathlib import Path

import msgspec
import pytest
import ray

from eventbus import Event, EventBus
from node_init import DownloadError, NodeInitError, initialize_node, parse_config
from node_init.testing import Fault, FaultProxy, S3Server, write_model_files
from tests.conftest import RayCluster

pytestmark = [pytest.mark.ray, pytest.mark.reliability, pytest.mark.anyio]
SECRET = "wJalrXUtnFEMI-K7MDENG-node-init-test-secret"


def ray_logs() -> list[Path]:
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    return [p for p in logs.rglob("*") if p.is_file()]


async def test_a_failing_s3_run_logs_no_secret(ray_cluster: RayCluster, s3_server: S3Server,
                                                capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # On each node a handler holding the secret in a local fails (logged with its traceback), then
    # the store refuses every read of the weights: the init fails, and every log is grepped.
    local = tmp_path / "m"
    write_model_files(local, {"model.safetensors": 1 << 20})
    s3_server.upload_dir(local, "models", "secret-run")
    proxy = FaultProxy(s3_server.endpoint).start()
    proxy.add(Fault(kind="status", status=403, match="model.safetensors", count=1000))
    config = parse_config({
        "model_id": "secret-run", "model_source": "s3://models/secret-run",
        "handlers": ["tests.reliability.hooks:leaky"],
        "placement": {"bundles": [{"CPU": 1}] * 3, "strategy": "STRICT_SPREAD", "ready_timeout_s": 30},
        "download": {"timeout_s": 30, "retries": 1,
                     "s3": {"endpoint_url": proxy.endpoint, "access_key_id": "AKIDSECRETTEST",
                            "secret_access_key": SECRET}},
    })
    bus, events = EventBus(), []
    bus.subscribe(Event, lambda e, c: events.append(e))
    try:
        with pytest.raises(NodeInitError) as info:
            await initialize_node(config, bus=bus)
    finally:
        proxy.stop()
    assert SECRET not in repr(config) and SECRET not in str(config)
    bus, events = EventBus(), []
    bus.subscribe(Event, lambda e, c: events.append(e))
    with pytest.raises(NodeInitError) as info:
        await initialize_node(config, bus=bus)
    assert isinstance(info.value, DownloadError)
    err = info.value
    for text in (str(err), repr(err), err.cause, repr(pickle.loads(pickle.dumps(err)))):
        assert SECRET not in text
    for event in events:
        assert SECRET.encode() not in msgspec.json.encode(event)
    out, errtext = capfd.readouterr()
    assert SECRET not in out and SECRET not in errtext
    logs = ray_logs()
    assert logs, "no Ray worker logs found to check"
    # The nodes' lines, the failing handler's included, are forwarded to this process and logged here.
    handler_failures = (out + errtext).count("fail_holding_the_secret")
    for path in logs:
        data = path.read_bytes()
        assert SECRET.encode() not in data, f"the secret is in {path}"
        handler_failures += data.count(b"fail_holding_the_secret")
    assert handler_failures, "the failing handler's log lines were not found: the grep would prove nothing"
