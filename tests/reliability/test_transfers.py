"""Downloads on real links and real credentials: slow links, flaky listings, the AWS credential chain."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from node_init import DownloadConfig, DownloadError, S3Config
from node_init.download import Downloader, Progress, list_source
from node_init.testing import Fault, FaultProxy, S3Server, write_model_files

pytestmark = pytest.mark.reliability
MB = 1 << 20


@pytest.fixture(scope="module")
def model(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    local = tmp_path_factory.mktemp("transfers") / "m"
    write_model_files(local, {"model.safetensors": 10 * MB})
    s3_server.upload_dir(local, "models", "transfers")
    return "s3://models/transfers"


def cfg(endpoint: str, **over: object) -> DownloadConfig:
    s3 = over.pop("s3", {"endpoint_url": endpoint})
    return DownloadConfig(**{"s3": S3Config(**s3), "timeout_s": 120, **over})  # type: ignore[arg-type]


def test_a_slow_steady_link_finishes_and_progress_moves_with_the_bytes(model: str, s3_server: S3Server,
                                                                      tmp_path: Path) -> None:
    # 1 MB/s shared by 2 ranges of 8 MiB: each range takes ~16 s, far past the 3 s stall bound, and
    # must still finish: a stall is no bytes at all, not a slow range.
    proxy = FaultProxy(s3_server.endpoint, rate_mb_s=1.0).start()
    try:
        config = cfg(proxy.endpoint, stall_timeout_s=3, part_size_mb=8, concurrency=2)
        source, files = list_source(model, config)
        progress, seen = Progress(), []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                seen.append(progress.done)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            result = Downloader(source, tmp_path / "m", config, progress=progress).run(files)
        finally:
            stop.set()
            sampler.join()
        assert result.bytes >= 10 * MB
        before_first_range = [b for b in seen if 0 < b < 8 * MB]
        assert len(set(before_first_range)) >= 5, f"progress moved only with whole ranges: {seen}"
    finally:
        proxy.stop()


@pytest.mark.parametrize("kind", ["status", "reset"])
def test_the_listing_is_retried(model: str, s3_server: S3Server, tmp_path: Path, kind: str) -> None:
    proxy = FaultProxy(s3_server.endpoint).start()
    try:
        proxy.add(Fault(kind=kind, status=503, query="list-type", after_bytes=10, count=2))  # type: ignore[arg-type]
        _source, files = list_source(model, cfg(proxy.endpoint, retries=3))
        assert [f.key for f in files if f.key.endswith(".safetensors")] == ["model.safetensors"]
        assert len(proxy.injected) == 2
        proxy.add(Fault(kind="status", status=503, query="list-type", count=10))
        with pytest.raises(DownloadError, match="503"):
            list_source(model, cfg(proxy.endpoint, retries=1))
    finally:
        proxy.stop()


@pytest.fixture
def no_env_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No keys in the environment; the AWS files point into tmp_path (empty unless a test writes them)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never the instance metadata address
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    return tmp_path


def test_a_profile_identity_signs_every_request(model: str, s3_server: S3Server, tmp_path: Path,
                                                no_env_keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (no_env_keys / "credentials").write_text(
        "[bench]\naws_access_key_id = AKIDPROFILEBENCH\naws_secret_access_key = profile-secret\n")
    monkeypatch.setenv("AWS_PROFILE", "bench")
    proxy = FaultProxy(s3_server.endpoint).start()
    try:
        source, files = list_source(model, cfg(proxy.endpoint))
        assert "AKIDPROFILEBENCH" in repr(source) and "profile-secret" not in repr(source)
        Downloader(source, tmp_path / "m", cfg(proxy.endpoint)).run(files)
        assert proxy.signers and set(proxy.signers) == {"AKIDPROFILEBENCH"}  # none unsigned, none other
    finally:
        proxy.stop()


def test_no_credentials_anywhere_is_an_error_saying_where_it_looked(model: str, s3_server: S3Server,
                                                                     no_env_keys: Path) -> None:
    with pytest.raises(DownloadError, match="no S3 credentials") as info:
        list_source(model, cfg(s3_server.endpoint))
    assert "AWS_PROFILE" in str(info.value) and "anonymous: true" in str(info.value)


def test_anonymous_sends_unsigned_requests(model: str, s3_server: S3Server, no_env_keys: Path) -> None:
    proxy = FaultProxy(s3_server.endpoint).start()
    try:
        list_source(model, cfg(proxy.endpoint, s3={"endpoint_url": proxy.endpoint, "anonymous": True}))
        assert proxy.signers and set(proxy.signers) == {""}
    finally:
        proxy.stop()


def test_access_denied_names_the_identity_never_the_secret(model: str, s3_server: S3Server,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)  # the config's keys sign
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    proxy = FaultProxy(s3_server.endpoint).start()
    try:
        proxy.add(Fault(kind="status", status=403, query="list-type", count=5))
        s3 = {"endpoint_url": proxy.endpoint, "access_key_id": "AKIDDENIED", "secret_access_key": "denied-secret"}
        with pytest.raises(DownloadError) as info:
            list_source(model, cfg(proxy.endpoint, s3=s3))
        text = str(info.value) + repr(info.value) + info.value.cause
        assert "AKIDDENIED (from the config)" in text and "denied-secret" not in text
        assert len(proxy.injected) == 1  # a 403 is not retried: the same identity gets the same answer
        assert "\n" not in str(info.value)  # one readable line, no debug dump
    finally:
        proxy.stop()


def test_the_stall_bound_still_fires_on_a_link_that_stops(model: str, s3_server: S3Server, tmp_path: Path) -> None:
    proxy = FaultProxy(s3_server.endpoint).start()
    try:
        proxy.add(Fault(kind="stall", match="model.safetensors", after_bytes=MB, seconds=60, count=10))
        config = cfg(proxy.endpoint, stall_timeout_s=2, retries=0)
        source, files = list_source(model, config)
        start = time.monotonic()
        with pytest.raises(DownloadError, match="stalled") as info:
            Downloader(source, tmp_path / "m", config).run(files)
        assert time.monotonic() - start < 10 and info.value.file == "model.safetensors"
    finally:
        proxy.stop()


def test_environment_credentials_win_over_the_config(model: str, s3_server: S3Server,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    proxy = FaultProxy(s3_server.endpoint).start()
    try:
        s3 = {"endpoint_url": proxy.endpoint, "access_key_id": "AKIDCONFIG", "secret_access_key": "cfg-secret"}
        list_source(model, cfg(proxy.endpoint, s3=s3))
        assert set(proxy.signers) == {"AKIDFROMENV"}
    finally:
        proxy.stop()
    assert os.environ["AWS_ACCESS_KEY_ID"] == "AKIDFROMENV"


def _open_under(root: Path) -> list[str]:
    """This process's open descriptors on files under ``root``."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)):
            out.append(target)
    return out


@pytest.mark.parametrize("fault", [
    Fault(kind="status", status=403, match="model.safetensors", count=100),
    Fault(kind="stall", match="model.safetensors", after_bytes=MB, seconds=30, count=100),
    Fault(kind="truncate", match="model.safetensors", after_bytes=MB, count=100),
], ids=["refused", "stalled", "truncated"])
def test_no_descriptor_under_the_cache_outlives_a_failed_download(model: str, s3_server: S3Server, tmp_path: Path,
                                                                  fault: Fault) -> None:
    proxy = FaultProxy(s3_server.endpoint).start()
    try:
        proxy.add(Fault(**{f: getattr(fault, f) for f in fault.__struct_fields__}))
        config = cfg(proxy.endpoint, stall_timeout_s=1, retries=0, part_size_mb=4)
        source, files = list_source(model, config)
        with pytest.raises(DownloadError):
            Downloader(source, tmp_path / "m", config).run(files)
        assert _open_under(tmp_path) == []
    finally:
        proxy.stop()


@pytest.mark.parametrize("key", ["a" * 1000 + ".bin", "deep/" + "b" * 300 + "/x.bin", "nul\x00byte.bin"],
                         ids=["1000-character name", "300-character folder", "NUL"])
def test_a_name_the_cache_cannot_hold_is_refused_before_a_byte_is_fetched(s3_server: S3Server, tmp_path: Path,
                                                                          key: str) -> None:
    prefix = f"names-{abs(hash(key)) % 10**8}"
    s3_server.client().put_object(Bucket="models", Key=f"{prefix}/config.json", Body=b"{}")
    s3_server.client().put_object(Bucket="models", Key=f"{prefix}/{key}", Body=b"x" * MB)
    proxy = FaultProxy(s3_server.endpoint).start()
    try:
        config = cfg(proxy.endpoint)
        with pytest.raises(DownloadError) as info:
            source, files = list_source(f"s3://models/{prefix}", config)
            Downloader(source, tmp_path / "m", config).run(files)
        message = str(info.value)
        assert message.isprintable(), message  # a NUL or newline in a key is shown escaped
        assert "refused" in message
        assert proxy.bytes_sent < MB // 2  # the listing, not the object
        assert not any(p.is_file() and p.stat().st_size >= MB for p in tmp_path.rglob("*"))
    finally:
        proxy.stop()
