"""The downloader against a real S3-compatible server on 127.0.0.1 (moto over HTTP), with real faults."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node_init import Bounds, DownloadConfig, DownloadError, DownloadMode, HFConfig, S3Config
from node_init.download import (
    Downloader,
    LocalSource,
    ModelCache,
    S3Source,
    UnsafeKeyError,
    check_key,
    list_source,
    select,
)
from node_init.testing import Fault, FaultProxy, HubServer, S3Server, iter_files, write_model_files
from tests._procs import Tree
from tests.conftest import REPO

_ids = itertools.count()
WEIGHTS = {"model-00001-of-00002.safetensors": 3 << 20, "model-00002-of-00002.safetensors": 5 << 20,
           "extra/notes.bin": 100_000}


@pytest.fixture(scope="module")
def s3_model(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A multi-file model uploaded to s3://models/synthetic-dl (and the local original)."""
    local = tmp_path_factory.mktemp("src") / "m"
    write_model_files(local, WEIGHTS)
    s3_server.upload_dir(local, "models", "synthetic-dl")
    return "s3://models/synthetic-dl", local


def cfg(**over: object) -> DownloadConfig:
    base: dict[str, object] = {"part_size_mb": 1, "concurrency": 4, "timeout_s": 30, "stall_timeout_s": 5,
                               "retries": 3, "lock_timeout_s": 30}
    base.update(over)
    return DownloadConfig(**base)  # type: ignore[arg-type]


def source(endpoint: str, uri: str) -> S3Source:
    return S3Source(uri, S3Config(endpoint_url=endpoint), bounds=Bounds(stall_s=5))


def digest(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in iter_files(path)}


def assert_no_partial_visible(dest: Path, original: Path) -> None:
    """Every visible file in the cache is whole and identical to the source."""
    want = digest(original)
    for key, h in digest(dest).items():
        assert want[key] == h, f"{key} is visible but not whole"


@pytest.mark.parametrize("mode", list(DownloadMode))
def test_each_mode_fetches_its_subset(s3_server: S3Server, s3_model: tuple[str, Path], tmp_path: Path,
                                      mode: DownloadMode) -> None:
    uri, local = s3_model
    src = source(s3_server.endpoint, uri)
    files = select(src.list_files(), mode)
    result = Downloader(src, tmp_path / "m", cfg()).run(files)
    got = set(digest(tmp_path / "m")) if (tmp_path / "m").exists() else set()
    expected = {
        DownloadMode.MODEL_AND_TOKENIZER: set(digest(local)),
        DownloadMode.EXCLUDE_SAFETENSORS: {k for k in digest(local) if not k.endswith(".safetensors")},
        DownloadMode.TOKENIZER_ONLY: {"config.json", "generation_config.json", "tokenizer.json",
                                      "tokenizer_config.json"},
        DownloadMode.NONE: set(),
    }[mode]
    assert got == expected and set(result.fetched) == expected
    assert digest(tmp_path / "m") == {k: v for k, v in digest(local).items() if k in expected} if got else True


def test_cache_reused_then_partial_cache_resumed(s3_server: S3Server, s3_model: tuple[str, Path],
                                                 fault_proxy: FaultProxy, tmp_path: Path) -> None:
    uri, local = s3_model
    src = source(fault_proxy.endpoint, uri)
    files = src.list_files()
    dest = tmp_path / "m"
    # A file keeps failing: the download fails, but what completed stays, and nothing half-written shows.
    fault_proxy.add(Fault(kind="status", status=500, match="model-00002", count=1000))
    with pytest.raises(DownloadError) as info:
        Downloader(src, dest, cfg(retries=1)).run(files)
    assert info.value.file == "model-00002-of-00002.safetensors" and info.value.source == uri
    assert "500" in str(info.value)
    assert not dest.exists()  # a first download that failed shows no model directory at all
    cache = ModelCache(dest, uri)
    kept = {e.key for e in cache.entries().values()}  # what completed before the failure stays
    assert kept and "model-00002-of-00002.safetensors" not in kept
    fault_proxy.clear()
    resumed = Downloader(src, dest, cfg()).run(files)
    assert "model-00002-of-00002.safetensors" in resumed.fetched
    assert resumed.cached_bytes > 0 and "config.json" not in resumed.fetched
    assert digest(dest) == digest(local) and Path(resumed.path) == dest.resolve()
    assert list(cache.partial.iterdir()) == []  # nothing stray left
    again = Downloader(src, dest, cfg()).run(files)
    assert again.fetched == () and again.bytes == 0 and again.cached_bytes == sum(f.size for f in files)


def test_retry_after_injected_5xx_and_throttling(s3_model: tuple[str, Path], fault_proxy: FaultProxy,
                                                 tmp_path: Path) -> None:
    uri, local = s3_model
    src = source(fault_proxy.endpoint, uri)
    fault_proxy.add(Fault(kind="status", status=503, match="model-00001", count=2))
    fault_proxy.add(Fault(kind="status", status=500, match="tokenizer.json", count=1))
    Downloader(src, tmp_path / "m", cfg()).run(src.list_files())
    assert len(fault_proxy.injected) == 3
    assert digest(tmp_path / "m") == digest(local)


def test_a_retry_after_past_the_stall_bound_is_asked_again_sooner_not_failed_as_stalled(tmp_path: Path) -> None:
    """A server asking to wait an hour, on a download whose stall bound is 1.5 s: the retry waits a third of the
    stall bound (Bounds.retry_wait_s) and the download completes; waiting as asked, it would fail as stalled."""
    server = HubServer().start()
    try:
        write_model_files(tmp_path / "m", {"model.safetensors": 300_000})
        server.push_dir("org/slow", tmp_path / "m")
        server.throttle("model.safetensors", count=1, retry_after=3600)
        server.throttle("/tree/", count=1, retry_after=3600)  # the listing too
        config = DownloadConfig(hf=HFConfig(endpoint_url=server.endpoint), stall_timeout_s=1.5, retries=2)
        assert Bounds.of_download(config).retry_wait_s <= config.stall_timeout_s / 3
        source, files = list_source("hf://org/slow", config)
        result = Downloader(source, tmp_path / "dest", config).run(files)
        assert "model.safetensors" in {f.key for f in files}
        for f in files:
            assert (Path(result.path) / f.key).read_bytes() == (tmp_path / "m" / f.key).read_bytes()
        assert not server._throttled  # both were answered 429, and both asked again
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["reset", "truncate"])
def test_connection_reset_and_short_read_are_retried(s3_model: tuple[str, Path], fault_proxy: FaultProxy,
                                                     tmp_path: Path, kind: str) -> None:
    uri, local = s3_model
    src = source(fault_proxy.endpoint, uri)
    fault_proxy.add(Fault(kind=kind, match="model-00002", after_bytes=100_000, count=2))  # type: ignore[arg-type]
    Downloader(src, tmp_path / "m", cfg()).run(src.list_files())
    assert len(fault_proxy.injected) == 2
    assert digest(tmp_path / "m") == digest(local)


def test_a_flipped_byte_reads_that_one_file_again_and_every_other_byte_once(s3_server: S3Server,
                                                                            tmp_path: Path) -> None:
    """A small file's flipped byte is healed by reading that file again from the origin while the
    weights' two ranges go on: no read of theirs is abandoned and made again (bytes that would cross
    the origin link twice, those the proxy had pushed before the client hung up uncounted by it)."""
    local = tmp_path / "src"
    sizes = write_model_files(local, {"model.safetensors": (1 << 20) + 340_024, "tokenizer.json": 14_301})
    prefix = f"flip-{next(_ids)}"
    s3_server.upload_dir(local, "models", prefix)
    # Slow enough that the weights' ranges are still being read when the tokenizer's checksum fails.
    proxy = FaultProxy(s3_server.endpoint, rate_mb_s=4.0).start()
    try:
        proxy.add(Fault(kind="corrupt", match=f"{prefix}/tokenizer.json", after_bytes=999, count=1))
        src = source(proxy.endpoint, f"s3://models/{prefix}")
        files = src.list_files()
        listing = proxy.bytes_sent  # the listing's XML; a HEAD has no body
        result = Downloader(src, tmp_path / "m", cfg()).run(files)
    finally:
        proxy.stop()
    assert proxy.injected == [f"corrupt:/models/{prefix}/tokenizer.json"] and result.rereads == ("tokenizer.json",)
    assert digest(tmp_path / "m") == digest(local)
    # By the download's account and at the origin link alike: every file once, the tokenizer twice.
    assert result.bytes == sum(sizes.values()) + sizes["tokenizer.json"]
    assert proxy.bytes_sent - listing == result.bytes


def test_stalled_endpoint_fails_within_the_stall_bound(s3_model: tuple[str, Path], fault_proxy: FaultProxy,
                                                       tmp_path: Path) -> None:
    uri, local = s3_model
    src = S3Source(uri, S3Config(endpoint_url=fault_proxy.endpoint), bounds=Bounds(stall_s=1.0))
    fault_proxy.add(Fault(kind="stall", match="model-00001", after_bytes=10_000, count=100, seconds=60))
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        Downloader(src, tmp_path / "m", cfg(stall_timeout_s=1.0, retries=1)).run(src.list_files())
    assert time.monotonic() - start < 10
    assert "model-00001" in str(info.value)
    assert_no_partial_visible(tmp_path / "m", local)


def test_total_timeout_fires_on_a_slow_link(s3_server: S3Server, s3_model: tuple[str, Path], tmp_path: Path) -> None:
    uri, local = s3_model
    proxy = FaultProxy(s3_server.endpoint, rate_mb_s=1.0).start()
    try:
        src = source(proxy.endpoint, uri)
        start = time.monotonic()
        with pytest.raises(DownloadError, match=r"timed out after 1.0s"):
            Downloader(src, tmp_path / "m", cfg(timeout_s=1.0)).run(src.list_files())
        assert time.monotonic() - start < 5
    finally:
        proxy.stop()
    assert_no_partial_visible(tmp_path / "m", local)


def test_two_processes_on_one_node_download_once(s3_server: S3Server, s3_model: tuple[str, Path],
                                                 tmp_path: Path) -> None:
    uri, local = s3_model
    proxy = FaultProxy(s3_server.endpoint, rate_mb_s=20.0).start()  # slow enough to overlap
    script = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from node_init import Bounds, DownloadConfig, S3Config\n"
        "from node_init.download import Downloader, S3Source\n"
        "src = S3Source(sys.argv[1], S3Config(endpoint_url=sys.argv[2]), bounds=Bounds(stall_s=10))\n"
        "r = Downloader(src, Path(sys.argv[3]), DownloadConfig(part_size_mb=1, lock_timeout_s=60))"
        ".run(src.list_files())\n"
        "print(json.dumps({'fetched': len(r.fetched), 'bytes': r.bytes}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    trees = []
    try:
        trees = [Tree([sys.executable, "-c", script, uri, proxy.endpoint, str(tmp_path / "m")],
                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True) for _ in range(2)]
        outs = [t.proc.communicate(timeout=60)[0] for t in trees]
    finally:
        for tree in trees:  # both ended (and let go of the lock) before the cache is checked
            tree.stop()
        proxy.stop()
    assert all(t.proc.returncode == 0 for t in trees)
    import json

    results = sorted((json.loads(o.strip().splitlines()[-1]) for o in outs), key=lambda r: r["bytes"])
    total = sum(p.stat().st_size for p in iter_files(local))
    assert results[0]["bytes"] == 0 and results[1]["bytes"] == total  # one fetched, the other waited
    assert digest(tmp_path / "m") == digest(local)


def test_keys_escaping_the_destination_are_refused(s3_server: S3Server, tmp_path: Path) -> None:
    client = s3_server.client()
    client.create_bucket(Bucket="evil")
    client.put_object(Bucket="evil", Key="m/../../escape.txt", Body=b"x")
    client.put_object(Bucket="evil", Key="m/config.json", Body=b"{}")
    from node_init import NodeInitConfig

    config = NodeInitConfig(model_id="evil", model_source="s3://evil/m",
                            download=DownloadConfig(s3=S3Config(endpoint_url=s3_server.endpoint)))
    with pytest.raises(DownloadError, match="refused") as info:
        list_source("s3://evil/m", config.download, node_id="node-x")
    assert info.value.node_id == "node-x"
    assert not (tmp_path.parent / "escape.txt").exists()


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\b", "C:/x", "", "a/.."])
def test_check_key_refuses(key: str) -> None:
    with pytest.raises(UnsafeKeyError):
        check_key(key)


def test_local_source_refuses_symlinks_out_of_the_model(tmp_path: Path) -> None:
    model = tmp_path / "model"
    write_model_files(model, {"w.safetensors": 1000})
    (tmp_path / "secret").write_text("s")
    (model / "inner.bin").symlink_to(model / "w.safetensors")  # inside: fine
    assert "inner.bin" in {f.key for f in LocalSource(f"file://{model}").list_files()}
    (model / "leak.bin").symlink_to(tmp_path / "secret")
    with pytest.raises(UnsafeKeyError, match="points outside"):
        LocalSource(str(model)).list_files()


def test_local_and_file_uri_sources_copy_atomically(tmp_path: Path) -> None:
    model = tmp_path / "model"
    write_model_files(model, {"a.safetensors": 2 << 20, "sub/b.safetensors": 1 << 20})
    for i, uri in enumerate([str(model), f"file://{model}"]):
        src = LocalSource(uri)
        dest = tmp_path / f"cache{i}" / "m"
        result = Downloader(src, dest, cfg()).run(src.list_files())
        assert digest(dest) == digest(model) and ModelCache(dest, uri).current() == Path(result.path)
        assert result.bytes == sum(p.stat().st_size for p in iter_files(model))


def test_node_environment_overrides_the_configured_endpoint(s3_server: S3Server, s3_model: tuple[str, Path],
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri, local = s3_model
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    src = S3Source(uri, S3Config(endpoint_url="http://127.0.0.1:9"), bounds=Bounds(stall_s=5))  # nothing listens there
    Downloader(src, tmp_path / "m", cfg()).run(src.list_files())
    assert digest(tmp_path / "m") == digest(local)


def fake_hf_cache(root: Path, repo: str, commit: str = "abc123") -> Path:
    """An HF hub cache laid out as huggingface_hub writes it: snapshot files link to blobs/."""
    repo_dir = root / "hub" / ("models--" + repo.replace("/", "--"))
    blobs, snapshot = repo_dir / "blobs", repo_dir / "snapshots" / commit
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for name, data in {"config.json": b"{}", "model.safetensors": b"w" * 1000}.items():
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def test_an_hf_cache_is_a_source_loaded_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eventbus import EventBus
    from node_init import BeforeDownload, CallbackCtx, parse_config
    from node_init.cluster import node_download
    from node_init.download import HFCacheSource, open_source

    snapshot = fake_hf_cache(tmp_path / "hf", "org/tiny")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("NODE_INIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # hf:// reads the Hub; offline, this node's cache, as before
    source = open_source("hf://org/tiny", DownloadConfig())
    assert isinstance(source, HFCacheSource) and source.in_place == snapshot
    assert [(f.key, f.size) for f in source.list_files()] == [("config.json", 2), ("model.safetensors", 1000)]

    config = parse_config({"model_id": "tiny", "model_source": "hf://org/tiny"})
    bus, seen = EventBus(), []
    bus.subscribe(BeforeDownload, lambda e, c: seen.append(e))
    report = node_download(config, CallbackCtx.for_config(config), bus, node_id="n", is_local=True)
    assert report.path == str(snapshot) and report.bytes == 0 and report.files == ()
    assert seen[0].destination == str(snapshot) and seen[0].expected_bytes == 0
    assert seen[0].files == ("config.json", "model.safetensors")
    assert not (tmp_path / "cache").exists()  # nothing copied

    with pytest.raises(DownloadError, match="no snapshot") as info:
        list_source("hf://org/absent", DownloadConfig(), node_id="n")
    assert info.value.node_id == "n"


@pytest.mark.parametrize("upload", ["single-part", "local"])
def test_short_writes_are_finished_never_left_as_holes(s3_server: S3Server, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, upload: str) -> None:
    """``pwrite`` near a full disk writes fewer bytes than asked without an error. That cannot be caused
    here on demand without a disk to fill, so the one fake in this file: every ``pwrite`` really writes
    only the first half of what it is given (and says so). The cache must still hold identical bytes."""
    data = os.urandom((2 << 20) + 12345)
    local = tmp_path / "src"
    local.mkdir()
    (local / "w.safetensors").write_bytes(data)
    if upload == "single-part":
        s3_server.client().put_object(Bucket="models", Key=f"short-{os.getpid()}/w.safetensors", Body=data)
        src: S3Source | LocalSource = source(s3_server.endpoint, f"s3://models/short-{os.getpid()}")
    else:
        src = LocalSource(str(local))
    real = os.pwrite
    calls = []

    def short_pwrite(fd: int, buf: bytes | memoryview, offset: int) -> int:
        half = max(1, len(buf) // 2)
        calls.append(len(buf))
        return real(fd, memoryview(buf)[:half], offset)

    monkeypatch.setattr(os, "pwrite", short_pwrite)
    files = src.list_files()
    result = Downloader(src, tmp_path / "m", cfg()).run(files)
    monkeypatch.undo()
    assert len(calls) > 1
    assert (Path(result.path) / "w.safetensors").read_bytes() == data
