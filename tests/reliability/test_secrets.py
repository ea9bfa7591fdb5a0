"""No secret reaches a log line, an error, a repr or an event: a failing S3 or Azure run, every log grepped."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import msgspec
import pytest
import ray

from eventbus import Event, EventBus
from node_init import DownloadError, NodeInitError, initialize_node, parse_config
from node_init.testing import AZURITE_KEY, AzuriteServer, Fault, FaultProxy, S3Server, write_model_files
from tests.conftest import RayCluster

pytestmark = [pytest.mark.ray, pytest.mark.reliability, pytest.mark.anyio]
SECRET = "wJalrXUtnFEMI-K7MDENG-node-init-test-secret"


def ray_logs() -> list[Path]:
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    return [p for p in logs.rglob("*") if p.is_file()]


@pytest.mark.parametrize("store", ["s3", "azure"])
async def test_a_failing_run_logs_no_secret(ray_cluster: RayCluster, s3_server: S3Server,
                                            request: pytest.FixtureRequest, capfd: pytest.CaptureFixture[str],
                                            tmp_path: Path, store: str) -> None:
    # On each node a handler holding the secret in a local fails (logged with its traceback), then
    # the store refuses every read of the weights: the init fails, and every log is grepped. (Azure's
    # secret is Azurite's account key: public, but a secret to the library, which must show it nowhere.)
    local = tmp_path / "m"
    write_model_files(local, {"model.safetensors": 1 << 20})
    secret = SECRET if store == "s3" else AZURITE_KEY
    download: dict[str, Any] = {"timeout_s": 30, "retries": 1}
    if store == "s3":
        s3_server.upload_dir(local, "models", "secret-run")
        proxy = FaultProxy(s3_server.endpoint).start()
        source = "s3://models/secret-run"
        download["s3"] = {"endpoint_url": proxy.endpoint, "access_key_id": "AKIDSECRETTEST",
                          "secret_access_key": SECRET}
    else:
        azure: AzuriteServer = request.getfixturevalue("azure_server")
        azure.upload_dir(local, "models", "secret-run")
        proxy = FaultProxy(azure.root).start()
        source = "azure://models@devstoreaccount1.blob.core.windows.net/secret-run"
        download["azure"] = {"endpoint_url": f"{proxy.endpoint}/devstoreaccount1", "account_key": AZURITE_KEY}
    proxy.add(Fault(kind="status", status=403, match="model.safetensors", count=1000))
    config = parse_config({
        "model_id": f"secret-run-{store}", "model_source": source,
        "handlers": ["tests.reliability.hooks:leaky"],
        "placement": {"bundles": [{"CPU": 1}] * 3, "strategy": "STRICT_SPREAD", "ready_timeout_s": 30},
        "download": download,
    })
    bus, events = EventBus(), []
    bus.subscribe(Event, lambda e, c: events.append(e))
    try:
        with pytest.raises(NodeInitError) as info:
            await initialize_node(config, bus=bus)
    finally:
        proxy.stop()
    assert secret not in repr(config) and secret not in str(config)
    assert isinstance(info.value, DownloadError)
    err = info.value
    for text in (str(err), repr(err), err.cause, repr(pickle.loads(pickle.dumps(err)))):
        assert secret not in text
    for event in events:
        assert secret.encode() not in msgspec.json.encode(event)
    out, errtext = capfd.readouterr()
    assert secret not in out and secret not in errtext
    logs = ray_logs()
    assert logs, "no Ray worker logs found to check"
    # The nodes' lines, the failing handler's included, are forwarded to this process and logged here.
    handler_failures = (out + errtext).count("fail_holding_the_secret")
    for path in logs:
        data = path.read_bytes()
        assert secret.encode() not in data, f"the secret is in {path}"
        handler_failures += data.count(b"fail_holding_the_secret")
    assert handler_failures, "the failing handler's log lines were not found: the grep would prove nothing"
