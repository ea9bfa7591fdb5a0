"""Where models come from: a local directory / ``file://``, ``s3://``, or an HF cache offline.

A source lists its files and reads byte ranges; the downloader (``_download``)
owns caching, locking, retries and atomicity.
"""

from __future__ import annotations

import os
import posixpath
from datetime import timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

import msgspec

from ._config import S3Config


class RemoteFile(msgspec.Struct, frozen=True):
    """One file of a model: its key (relative POSIX path), size and version tag."""

    key: str
    size: int
    etag: str = ""


class UnsafeKeyError(ValueError):
    """A key or path that would land outside the destination directory."""


class Source(Protocol):
    """What the downloader needs of a model source."""

    uri: str

    def list_files(self) -> list[RemoteFile]:
        """Every file of the model."""
        ...

    def read(self, key: str, start: int, end: int) -> bytes | memoryview:
        """Bytes ``[start, end)`` of ``key``."""
        ...


def check_key(key: str) -> str:
    """Return ``key`` if it stays inside a destination directory, else raise :class:`UnsafeKeyError`."""
    if not key or key.startswith(("/", "\\")) or "\\" in key or "\x00" in key or ":" in key.split("/")[0]:
        raise UnsafeKeyError(f"refused key {key!r}: absolute or not a plain relative path")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts) or posixpath.normpath(key) != key:
        raise UnsafeKeyError(f"refused key {key!r}: it would escape the destination")
    return key


class LocalSource:
    """A model directory on this node (``/path`` or ``file:///path``).

    Symlinks are followed only when they stay inside the directory.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        path = unquote(urlparse(uri).path) if uri.startswith("file://") else uri
        self.root = Path(path).expanduser()

    def list_files(self) -> list[RemoteFile]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"model source {self.uri} is not a directory")
        root = self.root.resolve()
        files = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue
                full = Path(dirpath, name)
                key = full.relative_to(self.root).as_posix()
                real = full.resolve()
                if not real.is_relative_to(root):
                    raise UnsafeKeyError(f"refused {key!r}: symlink to {real} points outside {root}")
                stat = real.stat()
                files.append(RemoteFile(check_key(key), stat.st_size, f"{stat.st_mtime_ns}-{stat.st_size}"))
        return sorted(files, key=lambda f: f.key)

    def read(self, key: str, start: int, end: int) -> bytes:
        with open(self.root / check_key(key), "rb") as f:
            f.seek(start)
            return f.read(end - start)


class S3Source:
    """``s3://bucket/prefix`` on any S3-compatible endpoint, read with obstore.

    obstore is a Rust client that releases the GIL, so ranged reads from a
    thread pool run in parallel; it fetched a 64 MB object 3.6x faster than
    boto3's ``download_file`` here. A node's standard AWS variables override
    the config (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...).
    """

    def __init__(self, uri: str, cfg: S3Config, *, request_timeout_s: float) -> None:
        import obstore.store

        parsed = urlparse(uri)
        if not parsed.netloc:
            raise ValueError(f"model source {uri!r} has no bucket")
        self.uri = uri
        self.prefix = parsed.path.strip("/")
        env = os.environ
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or cfg.endpoint_url
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or cfg.region or "us-east-1"
        key_id = env.get("AWS_ACCESS_KEY_ID") or cfg.access_key_id
        secret = env.get("AWS_SECRET_ACCESS_KEY") or cfg.secret_access_key
        kwargs: dict[str, object] = {"region": region}
        if endpoint:
            kwargs["endpoint"] = endpoint
            kwargs["virtual_hosted_style_request"] = False
        if key_id and secret:
            kwargs["access_key_id"] = key_id
            kwargs["secret_access_key"] = secret
            if env.get("AWS_SESSION_TOKEN"):
                kwargs["session_token"] = env["AWS_SESSION_TOKEN"]
        elif cfg.anonymous or not key_id:
            kwargs["skip_signature"] = True
        self.store = obstore.store.S3Store(
            parsed.netloc,
            client_options={
                "allow_http": bool(endpoint and endpoint.startswith("http://")),
                # A request that gets no bytes for this long fails (and is retried by us).
                "timeout": timedelta(seconds=request_timeout_s),
                "connect_timeout": timedelta(seconds=min(10.0, request_timeout_s)),
            },
            # Our downloader retries with its own backoff, per range, and reports it.
            retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=request_timeout_s)},
            **kwargs,  # type: ignore[arg-type]
        )

    def _path(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def list_files(self) -> list[RemoteFile]:
        import obstore

        files = []
        base = f"{self.prefix}/" if self.prefix else ""
        for batch in obstore.list(self.store, base or None):
            for meta in batch:
                key = meta["path"][len(base):]
                if not key or key.endswith("/"):
                    continue
                files.append(RemoteFile(check_key(key), int(meta["size"]), meta.get("e_tag") or ""))
        if not files:
            raise FileNotFoundError(f"no objects under {self.uri}")
        return sorted(files, key=lambda f: f.key)

    def read(self, key: str, start: int, end: int) -> memoryview:
        import obstore

        if end <= start:
            return memoryview(b"")
        return memoryview(obstore.get_range(self.store, self._path(key), start=start, end=end))


def hf_snapshot(uri: str) -> Path:
    """The local snapshot directory of ``hf://org/name[@revision]`` in this node's HF cache.

    Raises:
        FileNotFoundError: when the model or revision is not in the cache (no hub access: offline).
    """
    spec = uri[len("hf://"):]
    repo, _, revision = spec.partition("@")
    revision = revision or "main"
    cache = Path(
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"
    ).expanduser()
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    ref = repo_dir / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo_dir / "snapshots" / commit
    if not snapshot.is_dir():
        raise FileNotFoundError(f"{uri}: no snapshot {commit} in the HF cache at {cache} (offline)")
    return snapshot


def open_source(uri: str, cfg: S3Config, *, request_timeout_s: float) -> Source:
    """The :class:`Source` for a model URI (``s3://``, ``file://`` or a local path)."""
    if uri.startswith(("s3://", "s3a://")):
        return S3Source(uri, cfg, request_timeout_s=request_timeout_s)
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported model source {uri!r}: use s3://, file://, hf:// or a local path")
    return LocalSource(uri)
