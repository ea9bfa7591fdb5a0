"""The S3 fault suite's link faults, on every remote store: S3 (moto), GCS (fake-gcs-server), Azure
(Azurite) and the Hugging Face Hub (HubServer), each behind the same fault proxy. A flipped byte, a 5xx,
a reset, a truncated body or a stall heals by a retry or a re-read; a flip that persists is a typed error
naming the algorithm; nothing wrong is ever kept. Store-specific behaviour (version pins, credentials, URI
forms) is in each store's own tests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from node_init import AzureConfig, DownloadConfig, DownloadError, GCSConfig, S3Config
from node_init.download import Downloader, list_source
from node_init.testing import AZURITE_KEY, Fault, FaultProxy, write_model_files

pytestmark = pytest.mark.reliability
MB = 1 << 20


@attrs.frozen
class Store:
    name: str
    uri: str
    root: str  # what the proxy forwards to
    config: Callable[[str], DownloadConfig]  # the download config for the proxy's endpoint
    algorithm: str  # how the suite's weights are checked
    small: str = ""  # how its small files are, where the store checks them otherwise (the Hub: git blob SHA-1)


def _common(**over: Any) -> dict[str, Any]:
    return {"part_size_mb": 1, "timeout_s": 60, "stall_timeout_s": 3, "retries": 2, **over}


@pytest.fixture(scope="module", params=["s3", "gcs", "azure", "hub"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, Path]:
    local = tmp_path_factory.mktemp(request.param) / "m"
    write_model_files(local, {"model-00001-of-00002.safetensors": 3 * MB + 7, "model-00002-of-00002.safetensors": MB})
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        server.upload_dir(local, "models", "faults")  # single-part: the ETag states the MD5
        return Store("s3", "s3://models/faults", server.endpoint, lambda ep: DownloadConfig(**_common(
            s3=S3Config(endpoint_url=ep, access_key_id="testing", secret_access_key="testing"))), "md5"), local
    if request.param == "gcs":
        server = request.getfixturevalue("gcs_server")
        server.upload_dir(local, "models", "faults")
        return Store("gcs", "gs://models/faults", server.endpoint, lambda ep: DownloadConfig(**_common(
            gcs=GCSConfig(endpoint_url=ep, anonymous=True))), "crc32c"), local
    if request.param == "hub":
        from node_init import HFConfig
        from node_init.testing import HubServer

        hub = HubServer().start()
        request.addfinalizer(hub.stop)
        hub.push_dir("org/faults", local)
        return Store("hub", "hf://org/faults", hub.endpoint, lambda ep: DownloadConfig(**_common(
            hf=HFConfig(endpoint_url=ep))), "sha256", small="git-sha1"), local
    server = request.getfixturevalue("azure_server")
    server.upload_dir(local, "models", "faults")  # in one piece: a Content-MD5
    return Store("azure", "azure://models@devstoreaccount1.blob.core.windows.net/faults", server.root,
                 lambda ep: DownloadConfig(**_common(azure=AzureConfig(endpoint_url=f"{ep}/devstoreaccount1",
                                                                       account_key=AZURITE_KEY))), "md5"), local


def same(dest: str, local: Path) -> bool:
    return all((Path(dest) / p.relative_to(local)).read_bytes() == p.read_bytes() for p in local.rglob("*")
               if p.is_file())


HEALED = {
    "flip-once": Fault(kind="corrupt", match="model-00001", after_bytes=999, count=1),
    "503": Fault(kind="status", status=503, match="model-00001", count=2),
    "reset": Fault(kind="reset", match="model-00002", after_bytes=100_000, count=2),
    "truncate": Fault(kind="truncate", match="model-00001", after_bytes=300_000, count=1),
    "stall": Fault(kind="stall", match="model-00002", after_bytes=50_000, seconds=1.0, count=1),
}


@pytest.mark.parametrize("case", list(HEALED))
def test_a_fault_on_the_link_heals(store: tuple[Store, Path], tmp_path: Path, case: str) -> None:
    spec, local = store
    proxy = FaultProxy(spec.root).start()
    try:
        config = spec.config(proxy.endpoint)
        source, files = list_source(spec.uri, config)
        proxy.add(Fault(**{f: getattr(HEALED[case], f) for f in Fault.__struct_fields__}))
        result = Downloader(source, tmp_path / "m", config).run(files)
        assert proxy.injected, "the fault never happened"
    finally:
        proxy.stop()
    assert same(result.path, local)
    assert set(result.verified.values()) == {spec.algorithm, spec.small or spec.algorithm}
    assert result.rereads == (("model-00001-of-00002.safetensors",) if case == "flip-once" else ())


def test_a_flip_that_persists_is_a_typed_error_and_nothing_is_kept(store: tuple[Store, Path], tmp_path: Path) -> None:
    spec, _ = store
    proxy = FaultProxy(spec.root).start()
    try:
        config = spec.config(proxy.endpoint)
        source, files = list_source(spec.uri, config)
        proxy.add(Fault(kind="corrupt", match="model-00001", after_bytes=999, count=100))
        with pytest.raises(DownloadError) as info:
            Downloader(source, tmp_path / "m", config).run(files)
    finally:
        proxy.stop()
    assert info.value.checksum_mismatch and f"{spec.algorithm} mismatch" in str(info.value)
    assert info.value.file == "model-00001-of-00002.safetensors" and not (tmp_path / "m").exists()
    blobs = [p for p in (tmp_path / ".node-init").rglob("blobs/*") if p.is_file()]
    assert not any("model-00001" in p.name for p in blobs)


def test_a_denied_read_is_not_retried(store: tuple[Store, Path], tmp_path: Path) -> None:
    spec, _ = store
    proxy = FaultProxy(spec.root).start()
    try:
        config = spec.config(proxy.endpoint)
        source, files = list_source(spec.uri, config)
        proxy.add(Fault(kind="status", status=403, match="model-00002", count=10))
        with pytest.raises(DownloadError) as info:
            Downloader(source, tmp_path / "m", config).run(files)
        assert len(proxy.injected) == 1  # the same identity gets the same answer: asked once
    finally:
        proxy.stop()
    assert "403" in str(info.value) + info.value.cause and info.value.file == "model-00002-of-00002.safetensors"
