"""The source registry: each kind declared once, and the config, opening, overlap and sharing read it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node_init import ConfigError, DownloadConfig, S3Config, parse_config
from node_init.cluster import share_enabled
from node_init.download import SOURCES, LocalSource, SourceKind, list_source, open_source, register_source, source_kind
from node_init.overlap import is_remote
from node_init.testing import S3Server, write_model_files


def test_every_kind_takes_its_own_schemes_and_the_config_names_the_others() -> None:
    for kind in SOURCES.values():
        for scheme in kind.schemes:
            assert source_kind(f"{scheme}/x" if not scheme else f"{scheme}bucket/x").name in {kind.name, "local"}
    with pytest.raises(ConfigError) as info:
        parse_config({"model_id": "m", "model_source": "ftp://host/m"})
    assert info.value.field == "model_source"
    assert all(s in str(info.value) for k in SOURCES.values() for s in k.schemes if s)


@pytest.fixture
def throwaway(tmp_path: Path) -> Iterator[Path]:
    """A kind added with one declaration: ``mnt://name`` reads ``tmp_path/name``, as if remote."""
    seen: list[str] = []

    def check(uri: str) -> None:
        if uri.endswith("/"):
            raise ValueError(f"{uri!r}: no trailing slash")

    def open_(uri: str, cfg: DownloadConfig) -> LocalSource:
        seen.append(uri)
        source = LocalSource(str(tmp_path / uri[len("mnt://"):]))
        source.uri = uri
        return source

    register_source(SourceKind(name="mnt", schemes=("mnt://",), remote=True, share="auto", checksums="none",
                               credentials="none", check=check, open=open_))
    try:
        yield tmp_path
    finally:
        SOURCES.pop("mnt")


def test_one_declaration_is_all_a_new_kind_needs(throwaway: Path) -> None:
    write_model_files(throwaway / "m", {"model.safetensors": 1000})
    config = parse_config({"model_id": "m", "model_source": "mnt://m"})
    assert is_remote(config) and share_enabled(config)  # overlap and sharing read the registry
    with pytest.raises(ConfigError, match="trailing slash") as info:
        parse_config({"model_id": "m", "model_source": "mnt://m/"})
    assert info.value.field == "model_source"
    source, files = list_source("mnt://m", config.download)
    assert source.uri == "mnt://m" and {f.key for f in files} >= {"model.safetensors"}


@pytest.mark.parametrize(("uri", "words"), [
    ("s3://someone@bucket/m", "anonymous@"),
    ("s3://Bucket_Upper/m", "not a valid S3 bucket"),
    ("s3:///m", "names no bucket"),
    ("s3://bucket/a/../b", "'..'"),
    ("hf://a/b/c", "not a Hugging Face Hub repo id"),
    ("file://relative/m", "absolute path"),
])
def test_a_bad_source_is_refused_at_parse_time_naming_the_field(uri: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        parse_config({"model_id": "m", "model_source": uri})
    assert info.value.field == "model_source"


def test_rays_anonymous_form_reads_unsigned(s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    write_model_files(tmp_path / "m", {"model.safetensors": 2048})
    s3_server.upload_dir(tmp_path / "m", "models", "anon")
    cfg = DownloadConfig(s3=S3Config(endpoint_url=s3_server.endpoint))
    parse_config({"model_id": "m", "model_source": "s3://anonymous@models/anon"})  # Ray's form parses
    source = open_source("s3://anonymous@models/anon", cfg)
    assert "unsigned" in repr(source)  # no credentials were looked for, none sent
    source, files = list_source("s3://anonymous@models/anon", cfg)
    assert {f.key for f in files} >= {"model.safetensors"}


def test_rays_mirror_config_form_sets_the_source_and_the_extra_files() -> None:
    mirror = {"bucket_uri": "s3://models/m", "extra_files": [{"bucket_uri": "s3://models/cache",
                                                              "destination_path": "~/.cache/compile"}]}
    config = parse_config({"model_id": "m", "model_source": mirror})
    assert config.model_source == "s3://models/m"
    extra = [(e.bucket_uri, e.destination_path) for e in config.extra_files]
    assert extra == [("s3://models/cache", "~/.cache/compile")]
    for bad, field in [({"bucket_uri": "s3://models/m", "extra_files": [{"bucket_uri": "s3://models/c"}]},
                        "model_source.extra_files[0]"),
                       ({"bucket_uri": "gs://x/y", "bogus": 1}, "model_source"),
                       ({"bucket_uri": "ftp://x/y"}, "model_source"),
                       ({"bucket_uri": "s3://models/m", "extra_files": [{"bucket_uri": "s3:///c",
                                                                         "destination_path": "/x"}]},
                        "extra_files[0].bucket_uri")]:
        with pytest.raises(ConfigError) as info:
            parse_config({"model_id": "m", "model_source": bad})
        assert (info.value.field or "").startswith(field), (bad, info.value)


@pytest.mark.ray
@pytest.mark.anyio
async def test_extra_files_land_on_every_node(ray_cluster: object, s3_server: S3Server, tmp_path: Path) -> None:
    from node_init import initialize_node
    from tests._configs import node_config
    from tests.conftest import RayCluster

    assert isinstance(ray_cluster, RayCluster)
    write_model_files(tmp_path / "m", {"model.safetensors": 300_000})
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "graph.bin").write_bytes(b"compiled" * 1000)
    s3_server.upload_dir(tmp_path / "m", "models", "mirror/m")
    s3_server.upload_dir(tmp_path / "extra", "models", "mirror/extra")
    s3 = {"endpoint_url": s3_server.endpoint, "access_key_id": "testing", "secret_access_key": "testing"}
    config = node_config(
        {"bucket_uri": "s3://models/mirror/m",  # Ray's CloudMirrorConfig, as a mapping
         "extra_files": [{"bucket_uri": "s3://models/mirror/extra",
                          "destination_path": "$NODE_INIT_CACHE_DIR/extra/compile"}]},
        download={"s3": s3}, placement={"bundles": [{"CPU": 1}] * 3, "strategy": "STRICT_SPREAD"})
    result = await initialize_node(config)
    try:
        for node in ray_cluster.nodes:
            assert (node.cache / "extra" / "compile" / "graph.bin").read_bytes() == b"compiled" * 1000
        assert len(result.reports) == 3
    finally:
        await result.close()


@pytest.mark.anyio
async def test_a_source_left_to_the_engine_is_said_in_the_log_and_in_after_init() -> None:
    import structlog

    from eventbus.testing import RecordingBus
    from node_init import AfterInit, initialize_node

    bus = RecordingBus()
    with structlog.testing.capture_logs() as logs:
        result = await initialize_node(parse_config({"model_id": "Qwen/Qwen2.5-0.5B-Instruct"}), bus=bus)
    (after,) = [e for e in bus.events if isinstance(e, AfterInit)]
    assert "no model_source" in after.download_skipped and "Qwen/Qwen2.5-0.5B-Instruct" in after.download_skipped
    assert [line for line in logs if line["event"].startswith("download skipped: no model_source")]
    assert result.model_path == "Qwen/Qwen2.5-0.5B-Instruct"


def test_the_readme_source_table_is_the_registry() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line for line in readme.splitlines()
            if line.startswith("| `") and line.count("|") == 7}
    for kind in SOURCES.values():
        assert kind.name in rows, f"README has no row for the {kind.name} source"
        row = rows[kind.name]
        assert all(f"`{s}`" in row for s in kind.schemes if s), row
        assert kind.checksums in row and kind.credentials.split(";")[0] in row.replace("`", ""), (kind.name, row)
        assert ("yes" if kind.remote else "no") == row.split("|")[3].strip()
