"""The model cache holds exactly one listed version of the source's bytes, or nothing.

Against real sources: local directories, and the S3-compatible server on 127.0.0.1 (behind the
fault proxy where a link or a byte must misbehave). Disk full is a real tmpfs where the machine
lets us mount one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from node_init import Bounds, DownloadConfig, DownloadError, S3Config
from node_init.download import (
    Downloader,
    LocalSource,
    ModelCache,
    RemoteFile,
    S3Source,
    hold_snapshot,
    list_source,
)
from node_init.testing import Fault, FaultProxy, S3Server, iter_files

MB = 1 << 20


def digest(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in iter_files(path)}


def write(root: Path, files: dict[str, bytes]) -> Path:
    """A model directory holding exactly ``files`` (anything else there is removed)."""
    if root.exists():
        shutil.rmtree(root)
    for key, data in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    return root


def cfg(**over: object) -> DownloadConfig:
    base: dict[str, object] = {"part_size_mb": 1, "timeout_s": 60, "stall_timeout_s": 10, "retries": 2}
    return DownloadConfig(**{**base, **over})  # type: ignore[arg-type]


def fetch(uri: str, dest: Path, **over: object) -> tuple[Path, tuple[str, ...]]:
    source, files = list_source(uri, cfg(**over))
    result = Downloader(source, dest, cfg(**over)).run(files, relist=source.list_files)
    return Path(result.path), result.fetched


def test_keys_that_once_shared_a_temp_name_stay_apart(tmp_path: Path, s3_server: S3Server) -> None:
    files = {"a/w.bin": os.urandom(3000), "a%2Fw.bin": os.urandom(3000), "config.json": b"{}"}
    src = write(tmp_path / "src", files)
    path, _ = fetch(str(src), tmp_path / "cache" / "m")
    assert digest(path) == digest(src)
    s3_server.upload_dir(src, "models", "collide")
    s3 = S3Source("s3://models/collide", S3Config(endpoint_url=s3_server.endpoint), bounds=Bounds(stall_s=10))
    result = Downloader(s3, tmp_path / "cache" / "s", cfg()).run(s3.list_files())
    assert digest(Path(result.path)) == digest(src)


def test_a_local_file_changed_after_listing_is_refused_or_relisted(tmp_path: Path) -> None:
    src = write(tmp_path / "src", {"config.json": b"{}", "w.safetensors": os.urandom(2 * MB + 5)})
    source = LocalSource(str(src))
    listed = source.list_files()
    (src / "w.safetensors").write_bytes(os.urandom(2 * MB + 5))  # same size, new bytes (and mtime)
    with pytest.raises(DownloadError, match="changed at the source") as info:
        Downloader(source, tmp_path / "c" / "m", cfg()).run(listed)
    assert info.value.file == "w.safetensors" and not (tmp_path / "c" / "m").exists()
    assert not list((tmp_path / "c" / ".node-init" / "m" / "partial").iterdir())
    result = Downloader(source, tmp_path / "c" / "m", cfg()).run(listed, relist=source.list_files)
    assert digest(Path(result.path)) == digest(src)  # all of the fresh listing: one version


def test_an_object_replaced_mid_download_restarts_from_a_fresh_listing(tmp_path: Path, s3_server: S3Server) -> None:
    client = s3_server.client()
    old, new = os.urandom(4 * MB), os.urandom(3 * MB)
    client.put_object(Bucket="models", Key="swap/config.json", Body=b'{"v": 1}')
    client.put_object(Bucket="models", Key="swap/model.safetensors", Body=old)
    proxy = FaultProxy(s3_server.endpoint, rate_mb_s=2.0).start()
    try:
        for relist in (False, True):
            client.put_object(Bucket="models", Key="swap/model.safetensors", Body=old)
            s3 = S3Source("s3://models/swap", S3Config(endpoint_url=proxy.endpoint), bounds=Bounds(stall_s=10))
            listed = s3.list_files()
            dest = tmp_path / f"relist-{relist}" / "m"
            # One range at a time, so ranges are still to be requested when the object changes.
            downloader = Downloader(s3, dest, cfg(concurrency=1))

            def replace(downloader: Downloader = downloader) -> None:
                while downloader.progress.done < MB // 2:
                    time.sleep(0.01)
                client.put_object(Bucket="models", Key="swap/model.safetensors", Body=new)

            swapper = threading.Thread(target=replace)
            swapper.start()
            try:
                if not relist:
                    with pytest.raises(DownloadError, match="changed at the source") as info:
                        downloader.run(listed)
                    assert info.value.file == "model.safetensors" and not dest.exists()
                else:
                    result = downloader.run(listed, relist=s3.list_files)
                    got = Path(result.path)
                    assert (got / "model.safetensors").read_bytes() == new  # never half old, half new
                    assert sorted(p.name for p in got.iterdir()) == ["config.json", "model.safetensors"]
            finally:
                swapper.join(30)
    finally:
        proxy.stop()


def test_a_new_version_leaves_nothing_of_the_old_in_the_engines_directory(tmp_path: Path) -> None:
    v1 = {"config.json": b'{"v": 1}', "model-00001-of-00002.safetensors": os.urandom(1500),
          "model-00002-of-00002.safetensors": os.urandom(1500)}
    v2 = {"config.json": b'{"v": 2}', "model.safetensors": os.urandom(2000)}
    src, dest = tmp_path / "src", tmp_path / "cache" / "m"
    old, _ = fetch(str(write(src, v1)), dest)
    hold = hold_snapshot(old)  # an engine still serving v1
    assert hold is not None
    new, fetched = fetch(str(write(src, v2)), dest)
    assert new != old and digest(new) == digest(src) and digest(dest) == digest(src)
    assert sorted(fetched) == ["config.json", "model.safetensors"]
    assert {k: hashlib.sha256(v).hexdigest() for k, v in v1.items()} == digest(old)  # v1 intact while held
    cache = ModelCache(dest, str(src))
    cache.collect(grace_s=0)
    assert old.exists()  # held: never collected
    hold.release()
    cache.collect(grace_s=0)
    assert not old.exists() and digest(new) == digest(src)
    blobs = {p.name for p in cache.blobs.iterdir()}
    assert len(blobs) == len(v2)  # v1's blobs went with its snapshot


def test_a_cache_changed_after_it_was_complete_is_fetched_again(tmp_path: Path) -> None:
    src = write(tmp_path / "src", {"config.json": b"{}", "w.safetensors": os.urandom(3000)})
    dest = tmp_path / "cache" / "m"
    fetch(str(src), dest)
    target = dest / "w.safetensors"
    st = target.stat()
    target.write_bytes(os.urandom(3000))  # same size, other bytes: a normal write moves mtime
    path, fetched = fetch(str(src), dest)
    assert fetched == ("w.safetensors",) and digest(path) == digest(src)
    # A change that keeps size, mtime and inode is seen only by `verify: full`.
    st = (dest / "w.safetensors").stat()
    with open(dest / "w.safetensors", "r+b") as f:
        f.write(b"X")
    os.utime(dest / "w.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fetch(str(src), dest)[1] == ()  # `stat`: cheap, and blind to this
    path, fetched = fetch(str(src), dest, verify="full")
    assert fetched == ("w.safetensors",) and digest(path) == digest(src)


def test_a_change_in_any_range_of_a_large_file_is_seen_by_verify_full(tmp_path: Path) -> None:
    # Three ranges of 1 MiB (no MD5 for a local file: the digest is the ranges' sums).
    src = write(tmp_path / "src", {"config.json": b"{}", "w.safetensors": os.urandom(3 * MB + 7)})
    dest = tmp_path / "cache" / "m"
    fetch(str(src), dest)
    for offset in (0, MB + 5, 3 * MB + 6):  # first, middle and last range
        target = dest / "w.safetensors"
        st = target.stat()
        with open(target, "r+b") as f:
            f.seek(offset)
            old = f.read(1)
            f.seek(offset)
            f.write(bytes([old[0] ^ 1]))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        path, fetched = fetch(str(src), dest, verify="full")
        assert fetched == ("w.safetensors",), offset
        assert digest(path) == digest(src)


def _partial(dest: Path, uri: str, f: RemoteFile, data: bytes, state: dict[str, object]) -> None:
    """Leave ``f`` as an interrupted download left it: its partial blob and its state file."""
    cache = ModelCache(dest, uri)
    cache.prepare(keep=[f])
    cache.part_path(f).write_bytes(data)
    (cache.partial / f"{cache.blob_name(f)}.state").write_bytes(json.dumps(state).encode())
    cache.close()


def test_a_partial_file_whose_state_does_not_decode_is_fetched_whole(tmp_path: Path) -> None:
    data = os.urandom(3 * MB + 7)
    src = write(tmp_path / "src", {"w.safetensors": data})
    source, files = list_source(str(src), cfg())
    f = files[0]
    # Control: a state in today's format is resumed (its two ranges are not read again).
    dest = tmp_path / "now" / "m"
    sums = {str(lo): xxhash.xxh3_64_intdigest(data[lo:lo + MB]) for lo in (0, MB)}
    _partial(dest, source.uri, f, data[:2 * MB], {"etag": f.etag, "size": f.size, "part_size": MB,
                                                  "sum_kind": "xxh3", "done": [0, MB], "sums": sums})
    result = Downloader(source, dest, cfg()).run(files)
    assert result.bytes == f.size - 2 * MB and digest(dest) == digest(src)
    # A state that does not decode (no range-sum kind) is not trusted: its ranges, wrong here, are redone.
    dest = tmp_path / "old" / "m"
    crcs = {str(lo): zlib.crc32(bytes(MB)) for lo in (0, MB)}
    _partial(dest, source.uri, f, bytes(2 * MB), {"etag": f.etag, "size": f.size, "part_size": MB,
                                                  "done": [0, MB], "crcs": crcs})
    result = Downloader(source, dest, cfg()).run(files)
    assert result.bytes == f.size and digest(dest) == digest(src)


def test_bytes_that_differ_from_the_etag_md5_are_refused(tmp_path: Path, s3_server: S3Server) -> None:
    data = os.urandom(2 * MB)
    s3_server.upload_dir(_one_file(tmp_path / "src", data), "models", "md5")  # single part, no checksum: ETag = MD5
    proxy = FaultProxy(s3_server.endpoint).start()
    try:
        # Flipped on every read: the re-read from the origin sees it again (a transient flip heals: see
        # tests/reliability/test_origin_checksums.py).
        proxy.add(Fault(kind="corrupt", match="md5/model", after_bytes=1000, count=4))  # both reads of both ranges
        s3 = S3Source("s3://models/md5", S3Config(endpoint_url=proxy.endpoint), bounds=Bounds(stall_s=10))
        dest = tmp_path / "m"
        with pytest.raises(DownloadError, match="md5 mismatch") as info:
            Downloader(s3, dest, cfg()).run(s3.list_files())
        assert info.value.file == "model.safetensors" and not dest.exists()
        assert not list((tmp_path / ".node-init" / "m" / "partial").iterdir())  # bad bytes are not kept
        result = Downloader(s3, dest, cfg()).run(s3.list_files())
        assert (Path(result.path) / "model.safetensors").read_bytes() == data
    finally:
        proxy.stop()


def _one_file(folder: Path, data: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(data)
    return folder


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_while_writing_keeps_the_previous_snapshot(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with tmpfs(tmp_path / "disk", "4m") as disk:
        dest = disk / "m"
        v1 = {"config.json": b'{"v": 1}', "w.safetensors": os.urandom(MB)}
        old, _ = fetch(str(write(src, v1)), dest)
        write(src, {"config.json": b'{"v": 2}', "w.safetensors": os.urandom(5 * MB)})  # does not fit
        with pytest.raises(DownloadError, match="disk full") as info:
            fetch(str(src), dest)
        assert info.value.file == "w.safetensors"
        assert digest(dest) == {k: hashlib.sha256(v).hexdigest() for k, v in v1.items()} == digest(old)
        assert not list((disk / ".node-init" / "m" / "partial").iterdir())  # temp files removed


@pytest.mark.parametrize("step", ["journal", "snapshot"])
def test_disk_full_at_the_journal_or_the_snapshot_is_a_download_error(tmp_path: Path, step: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake fault: a tmpfs cannot be made to fill up exactly between a file's data and its journal
    # line or its snapshot link, so the call itself fails with ENOSPC here.
    src, dest = tmp_path / "src", tmp_path / "cache" / "m"
    v1 = {"config.json": b'{"v": 1}', "w.safetensors": os.urandom(3000)}
    old, _ = fetch(str(write(src, v1)), dest)
    write(src, {"config.json": b'{"v": 2}', "w.safetensors": os.urandom(3000)})

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    if step == "journal":
        real_open = os.open
        monkeypatch.setattr(os, "open", lambda p, *a, **k: full() if str(p).endswith("journal.jsonl")
                            else real_open(p, *a, **k))
    else:
        monkeypatch.setattr(os, "link", full)
    with pytest.raises(DownloadError, match="No space left"):
        fetch(str(src), dest)
    monkeypatch.undo()
    assert digest(dest) == digest(old) == {k: hashlib.sha256(v).hexdigest() for k, v in v1.items()}
    assert not [p for p in (tmp_path / "cache" / ".node-init" / "m" / "snapshots").iterdir()
                if p.name.startswith(".tmp-")]
    path, _ = fetch(str(src), dest)
    assert digest(path) == digest(src)


def test_listing_changes_during_a_version_keep_snapshots_immutable(tmp_path: Path) -> None:
    """Re-downloading the same listing reuses its snapshot: the same directory, untouched."""
    src = write(tmp_path / "src", {"config.json": b"{}", "w.safetensors": os.urandom(2000)})
    dest = tmp_path / "cache" / "m"
    first, _ = fetch(str(src), dest)
    again, fetched = fetch(str(src), dest)
    assert again == first and fetched == ()
    files = [RemoteFile(f.key, f.size, f.etag) for f in LocalSource(str(src)).list_files()]
    assert ModelCache(dest, str(src)).missing(files) == []
