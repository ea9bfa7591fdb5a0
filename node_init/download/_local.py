"""A local directory (``/path``, ``~/path``) or ``file:///path``: copied into the cache.

A plain relative path may also be a Hub id (``org/name``, as Ray writes it): the replica decides
which (:func:`~node_init.download.hub_or_path`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from ._source import STREAM_CHUNK, RemoteFile, SourceChanged, SourceKind, UnsafeKeyError, check_key

if TYPE_CHECKING:
    from .._config import DownloadConfig


def _local_tag(st: os.stat_result) -> str:
    """A local file's version tag: mtime and size (what pins it between listing and reading)."""
    return f"{st.st_mtime_ns}-{st.st_size}"


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
    local = True

    def __init__(self, uri: str) -> None:
        self.uri = uri
        root = local_path(uri)
        if root is None:
            raise ValueError(f"model source {uri!r} is not a local path or file:// URI")
        self.root = self.boundary = root

    def list_files(self) -> list[RemoteFile]:
        """Every regular file under the directory (dot-files and dot-directories left out).

        Raises:
            FileNotFoundError: the directory is missing or holds no file.
            PermissionError: a directory in it cannot be read (never skipped: shards would be missing).
            UnsafeKeyError: a symlink points outside the directory.
            ValueError: a special file (FIFO, socket, device) is in it.
        """
        if not self.root.is_dir():
            raise FileNotFoundError(f"model source {self.uri} is not a directory")
        boundary = self.boundary.resolve()
        files: list[RemoteFile] = []

        def walk(directory: str, prefix: str) -> None:
            try:
                with os.scandir(directory) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                raise type(exc)(exc.errno, f"cannot read directory {directory}: {exc.strerror}") from None
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                key = prefix + entry.name
                if entry.is_symlink():
                    real = Path(entry.path).resolve()
                    if not real.is_relative_to(boundary):
                        raise UnsafeKeyError(f"refused {key!r}: symlink to {real} points outside {boundary}")
                    st = real.stat()
                    if stat.S_ISDIR(st.st_mode):
                        continue  # symlinked directories are not followed (no loops)
                elif entry.is_dir(follow_symlinks=False):
                    walk(entry.path, key + "/")
                    continue
                else:
                    st = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise ValueError(f"refused {key!r} in {self.uri}: not a regular file (a FIFO, socket or device)")
                files.append(RemoteFile(check_key(key), st.st_size, _local_tag(st)))

        walk(str(self.root), "")
        if not files:
            raise FileNotFoundError(f"model source {self.uri} holds no files")
        return sorted(files, key=lambda f: f.key)

    def stream(self, file: RemoteFile, start: int, end: int) -> Iterator[bytes]:
        """Read ``[start, end)``; the file must still have the size and mtime it was listed with."""
        try:
            # O_NONBLOCK: a FIFO put in a file's place must not block the open.
            fd = os.open(self.root / check_key(file.key), os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise SourceChanged(file.key, "removed since it was listed") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (file.etag and _local_tag(st) != file.etag):
                raise SourceChanged(file.key, "size, mtime or type differ from the listing")
            f.seek(start)
            left = end - start
            while left > 0:
                chunk = f.read(min(left, STREAM_CHUNK))
                if not chunk:
                    return  # short: the caller retries
                left -= len(chunk)
                yield chunk
            if file.etag and _local_tag(os.fstat(fd)) != file.etag:
                raise SourceChanged(file.key, "modified while it was read")


def check_local(uri: str) -> None:
    """Raise ``ValueError`` naming what is wrong with a local path or ``file://`` URI."""
    if uri.startswith("file://") and not uri[len("file://"):].startswith("/"):
        raise ValueError(f"{uri!r}: a file:// URI needs an absolute path (file:///models/x)")
    # A plain path is checked on each node, where it must exist. A relative one may be a Hub id
    # (org/name, as Ray writes it): the replica decides which (see node_init.download.hub_or_path).
    from ._hub import is_hub_id  # here: the Hub's HFCacheSource is a LocalSource (_hub imports this module)

    if not uri.startswith(("/", "~", ".", "file://")) and not is_hub_id(uri) and not os.path.exists(uri):
        raise ValueError(f"{uri!r} is neither a local path (no such file or directory here) nor a Hugging Face "
                         "Hub id (org/name)")


def _open(uri: str, cfg: DownloadConfig) -> LocalSource:
    return LocalSource(uri)


KIND = SourceKind(
    name="local", schemes=("file://", ""), remote=False, share="on", checksums="none (size and mtime pin a file)",
    credentials="none (the node's file system)", check=check_local, open=_open,
)
