"""``azure://`` and ``abfss://`` (Ray's forms) against a real Azure Blob Storage emulator (Azurite) on 127.0.0.1.

Azurite has no Data Lake (dfs) endpoint: ``abfss://`` is read through the Blob API, as it is on Azure
(the Blob API reads Data Lake Gen2 accounts); only the URI's form and host check differ.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from node_init import AzureConfig, ConfigError, DownloadConfig, DownloadError, parse_config
from node_init.download import Downloader, list_source, open_source
from node_init.testing import AZURITE_KEY, AzuriteServer, FaultProxy, write_model_files

MB = 1 << 20
HOST = "devstoreaccount1.blob.core.windows.net"


@pytest.fixture(scope="module")
def model(azure_server: AzuriteServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    local = tmp_path_factory.mktemp("azure") / "m"
    write_model_files(local, {"model-00001-of-00002.safetensors": 3 * MB + 7, "model-00002-of-00002.safetensors": MB})
    azure_server.upload_dir(local, "models", "tiny")  # in one piece: each blob keeps a Content-MD5
    azure_server.upload_dir(local, "models", "blocks", blocks=3)  # in blocks: none, as on Azure
    return {"local": local}


def cfg(endpoint: str, **azure: Any) -> DownloadConfig:
    return DownloadConfig(azure=AzureConfig(endpoint_url=endpoint, **(azure or {"account_key": AZURITE_KEY})),
                          part_size_mb=1, timeout_s=60, stall_timeout_s=5, retries=2)


def same(dest: str, local: Path) -> bool:
    return all((Path(dest) / p.relative_to(local)).read_bytes() == p.read_bytes() for p in local.rglob("*")
               if p.is_file())


@pytest.mark.parametrize("uri", [f"azure://models@{HOST}/tiny", "abfss://models@devstoreaccount1.dfs.core.windows.net/tiny",
                                 f"azure://models@{HOST.replace('blob', 'dfs')}/tiny"])
def test_rays_azure_forms_download_pinned_and_checked_by_content_md5(azure_server: AzuriteServer,
                                                                     model: dict[str, Any], tmp_path: Path,
                                                                     uri: str) -> None:
    config = cfg(azure_server.endpoint)
    source, files = list_source(uri, config)
    assert all(f.etag and f.checksum is not None and f.checksum.algorithm == "md5" for f in files)
    result = Downloader(source, tmp_path / "m", config).run(files, relist=source.list_files)
    assert same(result.path, model["local"]) and set(result.verified.values()) == {"md5"}


def test_blobs_uploaded_in_blocks_have_no_md5_and_say_so(azure_server: AzuriteServer, model: dict[str, Any],
                                                         tmp_path: Path) -> None:
    config = cfg(azure_server.endpoint)
    source, files = list_source(f"azure://models@{HOST}/blocks", config)
    result = Downloader(source, tmp_path / "m", config).run(files)
    assert same(result.path, model["local"]) and set(result.verified.values()) == {"size"}
    strict = DownloadConfig(**{**{f: getattr(config, f) for f in config.__struct_fields__}, "require_checksum": True})
    with pytest.raises(DownloadError, match="require_checksum"):
        Downloader(source, tmp_path / "n", strict).run(files)


def test_a_sas_token_and_a_public_container_read(azure_server: AzuriteServer, model: dict[str, Any],
                                                 tmp_path: Path) -> None:
    azure_server.upload_dir(model["local"], "sas", "m")
    config = cfg(azure_server.endpoint, sas_token=azure_server.container_sas("sas"))
    source, files = list_source(f"azure://sas@{HOST}/m", config)
    assert "SAS token" in repr(source) and "sig=" not in repr(source) + repr(config)
    assert same(Downloader(source, tmp_path / "a", config).run(files).path, model["local"])
    azure_server.create_container("public", public=True)
    azure_server.upload_dir(model["local"], "public", "m")
    config = cfg(azure_server.endpoint, anonymous=True)
    source, files = list_source(f"azure://public@{HOST}/m", config)
    assert same(Downloader(source, tmp_path / "b", config).run(files).path, model["local"])
    with pytest.raises(DownloadError, match="access denied"):  # a private container, unsigned
        list_source(f"azure://models@{HOST}/tiny", config)


def test_a_wrong_key_is_refused_once_naming_the_identity_never_the_key(azure_server: AzuriteServer,
                                                                       model: dict[str, Any]) -> None:
    proxy = FaultProxy(azure_server.root).start()
    try:
        wrong = "c2VjcmV0LWtleS10aGF0LWlzLXdyb25n"
        with pytest.raises(DownloadError) as info:
            list_source(f"azure://models@{HOST}/tiny", cfg(f"{proxy.endpoint}/devstoreaccount1", account_key=wrong))
        text = str(info.value) + repr(info.value) + info.value.cause
        assert "account devstoreaccount1's key (from download.azure.account_key)" in text and wrong not in text
        assert "403" in text and proxy.requests == 1  # not retried: the same key gets the same answer
    finally:
        proxy.stop()


def test_a_blob_replaced_mid_download_restarts_on_one_version(azure_server: AzuriteServer, tmp_path: Path) -> None:
    old, new = os.urandom(2 * MB), os.urandom(2 * MB)
    azure_server.create_container("moving")
    azure_server.put("moving", "m/config.json", b"{}")
    azure_server.put("moving", "m/w.safetensors", old)
    config = cfg(azure_server.endpoint)
    source, files = list_source(f"azure://moving@{HOST}/m", config)
    azure_server.put("moving", "m/w.safetensors", new)  # a new ETag after the listing
    result = Downloader(source, tmp_path / "m", config).run(files, relist=source.list_files)
    assert (Path(result.path) / "w.safetensors").read_bytes() == new  # one version, never a mix


@pytest.mark.parametrize(("uri", "words"), [
    ("azure://models@acct.blob.core.windows.com/m", "must end with .blob.core.windows.net"),
    ("abfss://models@acct.blob.core.windows.net/m", "must end with .dfs.core.windows.net"),
    ("azure://acct.blob.core.windows.net/m", "names no container@account"),
    ("azure://Models@acct.blob.core.windows.net/m", "not a valid container name"),
    ("azure://my--models@acct.blob.core.windows.net/m", "not a valid container name"),
    ("azure://models@Acct_1.blob.core.windows.net/m", "not a valid storage account name"),
    ("abfss://models@acct.dfs.core.windows.net/a/../b", "'..'"),
])
def test_a_bad_azure_source_is_refused_at_parse_time(uri: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        parse_config({"model_id": "m", "model_source": uri})
    assert info.value.field == "model_source"


@pytest.mark.parametrize(("azure", "field"), [
    ({"account": "x"}, "download.azure"),
    ({"endpoint_url": "not a url"}, "download.azure.endpoint_url"),
    ({"account_key": " "}, "download.azure.account_key"),
    ({"account_key": "a2V5", "sas_token": "sv=1"}, "download.azure.sas_token"),
])
def test_a_bad_azure_section_names_its_field(azure: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"model_id": "m", "model_source": f"azure://models@{HOST}/m", "download": {"azure": azure}})
    assert (info.value.field or "").startswith(field)
    assert "a2V5" not in str(info.value)  # the key is not echoed


def test_keys_are_secrets_everywhere() -> None:
    config = AzureConfig(account_key="c2VjcmV0", sas_token="sv=2021&sig=abc")
    assert "c2VjcmV0" not in repr(config) and "sig=abc" not in repr(config)


def test_no_azure_credentials_anywhere_says_where_it_looked_and_probes_no_metadata_address(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET",
                 "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    # The suite points a managed identity at a closed local port: never the instance metadata address.
    assert os.environ["IDENTITY_ENDPOINT"].startswith("http://127.0.0.1:")
    with pytest.raises((PermissionError, DownloadError)) as info:
        source = open_source(f"azure://models@{HOST}/tiny", DownloadConfig())
        source.list_files()
    message = str(info.value)
    assert "AZURE_STORAGE_KEY" in message and "anonymous" in message


@pytest.mark.ray
@pytest.mark.anyio
@pytest.mark.parametrize("scheme", ["azure", "abfss"])
async def test_an_azure_model_is_fetched_once_across_three_nodes(ray_cluster: Any, azure_server: AzuriteServer,
                                                                 tmp_path: Path, scheme: str) -> None:
    from node_init import initialize_node
    from tests._configs import node_config

    local = tmp_path / "m"
    write_model_files(local, {"model.safetensors": 6 * MB})
    prefix = f"shared-{scheme}-{tmp_path.name}"
    azure_server.upload_dir(local, "models", prefix)
    proxy = FaultProxy(azure_server.root).start()  # counts what crosses the origin link
    host = HOST if scheme == "azure" else HOST.replace("blob", "dfs")
    try:
        config = node_config(f"{scheme}://models@{host}/{prefix}", download={
            "azure": {"endpoint_url": f"{proxy.endpoint}/devstoreaccount1", "account_key": AZURITE_KEY},
            "share": "auto", "part_size_mb": 1},
            placement={"bundles": [{"CPU": 1}] * 3, "strategy": "STRICT_SPREAD"})
        result = await initialize_node(config)
        try:
            assert len(result.reports) == 3 and all(same(r.path, local) for r in result.reports)
            assert all(r.verified["model.safetensors"] == "md5" for r in result.reports)
            assert sum(r.peer_bytes for r in result.reports) > 0  # ranges came from peers, not the origin
            model_bytes = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
            assert proxy.bytes_sent < 2 * model_bytes  # not once per node
        finally:
            await result.close()
    finally:
        proxy.stop()
