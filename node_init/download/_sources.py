"""Where models come from: a local directory / ``file://``, ``s3://``, or an HF cache offline.

A source lists its files and reads byte ranges; the :class:`~node_init.download.Downloader`
owns caching, locking, retries and atomicity. A source already on the node in a
form the engine loads (an HF cache snapshot) says so with ``in_place``: nothing
is copied from it.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

import msgspec

from .._config import DownloadConfig, S3Config
from .._errors import DownloadError, describe


class RemoteFile(msgspec.Struct, frozen=True):
    """One file of a model: its key (relative POSIX path), size and version tag."""

    key: str
    size: int
    etag: str = ""


class UnsafeKeyError(ValueError):
    """A key or path that would land outside the destination directory."""


class Source(Protocol):
    """What the downloader needs of a model source.

    Attributes:
        uri: The source as configured (for errors and the cache manifest).
        in_place: A directory on this node the engine can load as is (nothing to
            download), or ``None``.
    """

    uri: str
    in_place: Path | None

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


def local_path(uri: str) -> Path | None:
    """The directory a local source names (``/path``, ``~/path`` or ``file:///path``), else ``None``."""
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    if uri and "://" not in uri:
        return Path(uri).expanduser()
    return None


class LocalSource:
    """A model directory on this node (``/path`` or ``file:///path``), copied into the cache.

    Symlinks are followed only when they stay inside the directory.
    """

    in_place: Path | None = None

    def __init__(self, uri: str) -> None:
        self.uri = uri
        root = local_path(uri)
        if root is None:
            raise ValueError(f"model source {uri!r} is not a local path or file:// URI")
        self.root = self.boundary = root

    def list_files(self) -> list[RemoteFile]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"model source {self.uri} is not a directory")
        root = self.boundary.resolve()
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

    in_place: Path | None = None

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


class HFCacheSource(LocalSource):
    """``hf://org/name[@revision]``: a snapshot in this node's Hugging Face cache, read offline.

    The snapshot is loaded where it is (:attr:`in_place`); nothing is copied.

    Raises:
        FileNotFoundError: when the model or revision is not in the cache (no hub access here).
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.root = self.in_place = hf_snapshot(uri)
        self.boundary = self.root.parent.parent  # snapshot files link to the repo's blobs/


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
    """The :class:`Source` for a model URI: ``s3://``, ``hf://``, ``file://`` or a local path.

    Raises:
        ValueError: for any other scheme.
        FileNotFoundError: for an ``hf://`` model missing from this node's HF cache.
    """
    if uri.startswith(("s3://", "s3a://")):
        return S3Source(uri, cfg, request_timeout_s=request_timeout_s)
    if uri.startswith("hf://"):
        return HFCacheSource(uri)
    if local_path(uri) is None:
        raise ValueError(f"unsupported model source {uri!r}: use s3://, hf://, file:// or a local path")
    return LocalSource(uri)


@contextlib.contextmanager
def source_errors(uri: str, *, node_id: str | None = None) -> Iterator[None]:
    """Re-raise any failure to open or list ``uri`` as a :class:`~node_init.DownloadError`.

    Raises:
        DownloadError: naming the node and the source, for an unsupported or missing
            source, a key that would escape the destination, or a failed listing.
    """
    try:
        yield
    except DownloadError:
        raise
    except UnsafeKeyError as exc:
        raise DownloadError(str(exc), node_id=node_id, source=uri, cause=describe(exc)) from exc
    except Exception as exc:
        if type(exc).__name__ == "InvalidPathError":  # obstore refuses '..' segments itself
            raise DownloadError(f"refused an object key that would escape the destination: {exc}",
                                node_id=node_id, source=uri, cause=describe(exc)) from exc
        if isinstance(exc, FileNotFoundError | ValueError):
            raise DownloadError(str(exc), node_id=node_id, source=uri, cause=describe(exc)) from exc
        raise DownloadError(f"cannot list the model: {describe(exc)}", node_id=node_id, source=uri,
                            cause=describe(exc)) from exc


def list_source(uri: str, cfg: DownloadConfig, *, node_id: str | None = None) -> tuple[Source, list[RemoteFile]]:
    """Open ``uri`` and list its files, every failure as a :class:`~node_init.DownloadError`.

    Raises:
        DownloadError: see :func:`source_errors`.
    """
    with source_errors(uri, node_id=node_id):
        source = open_source(uri, cfg.s3, request_timeout_s=cfg.stall_timeout_s)
        return source, source.list_files()
