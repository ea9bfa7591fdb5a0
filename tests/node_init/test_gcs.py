"""``gs://`` against a real GCS emulator (fake-gcs-server) on 127.0.0.1 (link faults: `test_stores.py`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from node_init import ConfigError, DownloadConfig, GCSConfig, parse_config
from node_init.download import Downloader, list_source, open_source
from node_init.testing import FaultProxy, GCSServer, write_model_files

MB = 1 << 20


@pytest.fixture(scope="module")
def model(gcs_server: GCSServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    local = tmp_path_factory.mktemp("gcs") / "m"
    write_model_files(local, {"model-00001-of-00002.safetensors": 3 * MB + 7, "model-00002-of-00002.safetensors": MB})
    gcs_server.upload_dir(local, "models", "tiny")
    return {"local": local, "uri": "gs://models/tiny"}


def cfg(endpoint: str, **over: Any) -> DownloadConfig:
    return DownloadConfig(**{"gcs": GCSConfig(endpoint_url=endpoint, anonymous=True), "part_size_mb": 1,
                             "timeout_s": 60, "stall_timeout_s": 5, "retries": 2, **over})


def same(dest: str, local: Path) -> bool:
    return all((Path(dest) / p.relative_to(local)).read_bytes() == p.read_bytes() for p in local.rglob("*")
               if p.is_file())


def test_a_gcs_model_downloads_pinned_and_checked_by_crc32c(gcs_server: GCSServer, model: dict[str, Any],
                                                            tmp_path: Path) -> None:
    config = cfg(gcs_server.endpoint)
    source, files = list_source(model["uri"], config)
    assert all(f.etag.isdigit() and f.checksum is not None and f.checksum.algorithm == "crc32c" for f in files)
    result = Downloader(source, tmp_path / "m", config).run(files, relist=source.list_files)
    assert same(result.path, model["local"])
    assert set(result.verified.values()) == {"crc32c"}


def test_an_object_replaced_mid_download_restarts_on_one_generation(gcs_server: GCSServer, tmp_path: Path) -> None:
    old, new = os.urandom(2 * MB), os.urandom(2 * MB)
    gcs_server.create_bucket("models")
    gcs_server.put("models", "moving/config.json", b"{}")
    gcs_server.put("models", "moving/w.safetensors", old)
    config = cfg(gcs_server.endpoint)
    source, files = list_source("gs://models/moving", config)
    gcs_server.put("models", "moving/w.safetensors", new)  # a new generation after the listing
    result = Downloader(source, tmp_path / "m", config).run(files, relist=source.list_files)
    assert (Path(result.path) / "w.safetensors").read_bytes() == new  # one version, never a mix


@pytest.mark.parametrize(("uri", "words"), [
    ("gs://UPPER/m", "not a valid GCS bucket name"),
    ("gs://ab/m", "not a valid GCS bucket name"),
    ("gs://google-models/m", "'goog'"),
    ("gs://someone@bucket/m", "anonymous@"),
    ("gs:///m", "names no bucket"),
])
def test_a_bad_gcs_source_is_refused_at_parse_time(uri: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        parse_config({"model_id": "m", "model_source": uri})
    assert info.value.field == "model_source"


@pytest.mark.parametrize(("gcs", "field"), [
    ({"endpoint": "http://x"}, "download.gcs"),
    ({"endpoint_url": "not a url"}, "download.gcs.endpoint_url"),
    ({"credentials_file": " "}, "download.gcs.credentials_file"),
])
def test_a_bad_gcs_section_names_its_field(gcs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"model_id": "m", "model_source": "gs://bucket/m", "download": {"gcs": gcs}})
    assert (info.value.field or "").startswith(field)


def test_no_gcs_credentials_anywhere_says_where_it_looked_and_probes_no_metadata_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no application-default file
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    assert os.environ["NO_GCE_CHECK"] == "true"  # the suite never lets google-auth ask the metadata server
    with pytest.raises(PermissionError) as info:
        open_source("gs://models/tiny", DownloadConfig())
    message = str(info.value)
    assert "GOOGLE_APPLICATION_CREDENTIALS" in message and "anonymous" in message
    missing = tmp_path / "nope.json"
    with pytest.raises(PermissionError, match="nope.json"):
        open_source("gs://models/tiny", DownloadConfig(gcs=GCSConfig(credentials_file=str(missing))))


def test_rays_anonymous_form_reads_unsigned(gcs_server: GCSServer, model: dict[str, Any]) -> None:
    config = DownloadConfig(gcs=GCSConfig(endpoint_url=gcs_server.endpoint))
    source, files = list_source("gs://anonymous@models/tiny", config)
    assert "anonymous" in repr(source) and files


@pytest.mark.ray
@pytest.mark.anyio
async def test_a_gcs_model_is_fetched_once_across_three_nodes(ray_cluster: Any, gcs_server: GCSServer,
                                                              tmp_path: Path) -> None:
    from node_init import initialize_node
    from tests._configs import node_config

    local = tmp_path / "m"
    write_model_files(local, {"model.safetensors": 6 * MB})
    gcs_server.upload_dir(local, "models", "shared")
    proxy = FaultProxy(gcs_server.endpoint).start()  # counts what crosses the origin link
    try:
        config = node_config("gs://models/shared", download={
            "gcs": {"endpoint_url": proxy.endpoint, "anonymous": True}, "share": "auto", "part_size_mb": 1},
            placement={"bundles": [{"CPU": 1}] * 3, "strategy": "STRICT_SPREAD"})
        result = await initialize_node(config)
        try:
            assert len(result.reports) == 3 and all(same(r.path, local) for r in result.reports)
            assert all(r.verified["model.safetensors"] == "crc32c" for r in result.reports)
            assert sum(r.peer_bytes for r in result.reports) > 0  # ranges came from peers, not the origin
            model_bytes = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
            assert proxy.bytes_sent < 2 * model_bytes  # not once per node
        finally:
            await result.close()
    finally:
        proxy.stop()
