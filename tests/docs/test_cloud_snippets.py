"""The real-cloud configs in the docs (``<!-- doc: config cloud=KIND -->``) fetch a model from the local
emulator of their store with only what differs from the cloud changed: the endpoint and the credentials,
given the way a node gets them (its environment where the store reads one, else the config's section).
A node's download is run as the node task runs it (``pin_model_source``, ``list_source``, ``Downloader``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from node_init import AzureConfig, GCSConfig, parse_config, pin_model_source
from node_init.download import Downloader, list_source, source_kind
from node_init.testing import AZURITE_ACCOUNT, AZURITE_KEY, HubServer, write_model_files

from ._markdown import Block, blocks, pages

CLOUD = [b for page in pages() for b in blocks(page) if b.mark.startswith("config") and "cloud=" in b.mark]
KINDS = {"s3", "gcs", "azure", "hf"}


def test_every_store_has_a_real_cloud_config() -> None:
    kinds = {b.mark.split("cloud=")[1].split()[0] for b in CLOUD}
    assert kinds == KINDS, f"real-cloud configs for {sorted(kinds)}, expected one per store: {sorted(KINDS)}"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    local = tmp_path_factory.mktemp("cloud") / "m"
    write_model_files(local, {"model.safetensors": 300_000})
    return local


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    server = HubServer().start()
    try:
        yield server
    finally:
        server.stop()


def _bucket_and_prefix(uri: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://[anonymous@]bucket/prefix`` or ``gs://...``."""
    bucket, _, prefix = uri.split("://", 1)[1].partition("/")
    return bucket.split("@")[-1], prefix


@pytest.mark.parametrize("block", CLOUD, ids=lambda b: b.where)
def test_a_real_cloud_config_fetches_from_the_emulator_with_only_endpoint_and_keys_changed(
        block: Block, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub: HubServer,
        request: pytest.FixtureRequest) -> None:
    config = parse_config(msgspec.yaml.decode(block.text), file=block.where)
    assert config.model_source is not None
    kind = block.mark.split("cloud=")[1].split()[0]
    assert source_kind(config.model_source).name == kind, f"{block.where}: a {kind} config reads another store"
    download = config.download
    if kind == "s3":
        server: Any = request.getfixturevalue("s3_server")
        bucket, prefix = _bucket_and_prefix(config.model_source)
        server.upload_dir(model, bucket, prefix)
        for name, value in {"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing"}.items():
            monkeypatch.setenv(name, value)  # a node's own variables beat the config
    elif kind == "gcs":
        server = request.getfixturevalue("gcs_server")
        bucket, prefix = _bucket_and_prefix(config.model_source)
        server.upload_dir(model, bucket, prefix)
        download = msgspec.structs.replace(download, gcs=GCSConfig(endpoint_url=server.endpoint, anonymous=True))
    elif kind == "azure":
        server = request.getfixturevalue("azure_server")
        container_at_account, _, prefix = config.model_source.split("://", 1)[1].partition("/")
        container = container_at_account.split("@")[0]
        server.upload_dir(model, container, prefix)
        # Azurite has one account: the URI names it, the endpoint and its key are Azurite's.
        config = msgspec.structs.replace(config, model_source=re.sub(r"@[a-z0-9]+\.", f"@{AZURITE_ACCOUNT}.",
                                                                      config.model_source))
        download = msgspec.structs.replace(download, azure=AzureConfig(endpoint_url=server.endpoint,
                                                                       account_key=AZURITE_KEY))
    else:
        repo = config.model_source.removeprefix("hf://").split("@")[0]
        hub.push_dir(repo, model)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_TOKEN", hub.token)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    config = msgspec.structs.replace(config, download=download)
    pinned = pin_model_source(config, share_tree=False)  # what the replica does (a Hub revision -> its commit)
    assert pinned.model_source is not None
    source, files = list_source(pinned.model_source, pinned.download)
    result = Downloader(source, tmp_path / "m", pinned.download).run(files, relist=source.list_files)
    for path in model.rglob("*"):
        if path.is_file():
            assert (Path(result.path) / path.relative_to(model)).read_bytes() == path.read_bytes()
    assert set(result.verified.values()) - {"size"}, f"{block.where}: nothing was checked beyond sizes"
