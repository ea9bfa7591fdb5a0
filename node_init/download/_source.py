"""What every source kind shares: the :class:`Source` protocol, :class:`SourceKind`, a file's listing
entry, the key check and the listing loop.

A source lists its files and reads byte ranges; the :class:`~node_init.download.Downloader` owns
caching, locking, retries and atomicity. A source already on the node in a form the engine loads
(an HF cache snapshot) says so with ``in_place``: nothing is copied from it. Each kind lives in its
own module (``_local``, ``_s3``, ``_gcs``, ``_azure``, ``_hub``): its URI forms, check, credentials,
listing and reads; :mod:`._registry` names them.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import attrs
import msgspec

from ._checksums import OriginChecksum
from ._retry import with_retries

if TYPE_CHECKING:
    from .._config import DownloadConfig


class RemoteFile(msgspec.Struct, frozen=True):
    """One file of a model: its key (relative POSIX path), size, version tag, and what the origin
    says its content is (``checksum``; ``None`` when it says nothing: then only the size is checked)."""

    key: str
    size: int
    etag: str = ""
    checksum: OriginChecksum | None = None


class UnsafeKeyError(ValueError):
    """A key or path that would land outside the destination directory."""


class SourceChanged(Exception):
    """A file changed at the source since it was listed (its version pin no longer holds).

    Attributes:
        key: The file.
    """

    def __init__(self, key: str, detail: str = "") -> None:
        self.key = key
        super().__init__(f"{key} changed at the source since it was listed" + (f" ({detail})" if detail else ""))

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.key,))


#: Bytes a source yields at a time while streaming a range (progress moves at this grain).
STREAM_CHUNK = 256 * 1024


class Source(Protocol):
    """What the downloader needs of a model source.

    Attributes:
        uri: The source as configured (for errors and the cache manifest).
        in_place: A directory on this node the engine can load as is (nothing to
            download), or ``None``.
        local: Its reads hit this node's own disks: bound by syscalls and the GIL, not by
            latency (the downloader runs no more readers than cores).
    """

    uri: str
    in_place: Path | None
    local: bool

    def list_files(self) -> list[RemoteFile]:
        """Every file of the model."""
        ...

    def stream(self, file: RemoteFile, start: int, end: int) -> Iterator[bytes | memoryview]:
        """Bytes ``[start, end)`` of ``file`` as they arrive, pinned to its listed version.

        Raises:
            SourceChanged: when the file is no longer the version listed.
        """
        ...


@attrs.frozen
class SourceKind:
    """One kind of model source.

    Attributes:
        name: A short name (``s3``, ``local``, ``hf``).
        schemes: The URI schemes it takes (``"s3://"``); ``""`` stands for a plain local path.
        remote: Its bytes come over the network (a local path or a node's own cache do not).
        share: Under ``download.share``: ``auto`` shares it by default, ``on`` only when asked
            (a mount every node reads), ``never`` (it is loaded where it is).
        checksums: What the origin says of each file's bytes, in words.
        credentials: Where its credentials come from, in words.
        check: Checks a URI when a config is parsed; raises ``ValueError`` saying what is wrong.
        open: Opens a URI on a node, with a download config's settings.
        here: Whether a URI of this kind is, on this node now, read where it is (neither remote nor
            shared: the Hub under ``HF_HUB_OFFLINE``).
    """

    name: str
    schemes: tuple[str, ...]
    remote: bool
    share: Literal["auto", "on", "never"]
    checksums: str
    credentials: str
    check: Callable[[str], None]
    open: Callable[[str, DownloadConfig], Source]
    here: Callable[[str], bool] = lambda uri: False

    def takes(self, uri: str) -> bool:
        """Whether ``uri`` is of this kind."""
        if "://" not in uri:
            return "" in self.schemes
        return uri.split("://", 1)[0] + "://" in self.schemes


#: The longest file name (one path component, in bytes) and key the cache holds (Linux's limits, less
#: room for the cache's own prefix).
NAME_MAX = 255
PATH_MAX = 3072


def check_key(key: str) -> str:
    """Return ``key`` if it stays inside a destination directory, else raise :class:`UnsafeKeyError`."""
    if not key or key.startswith(("/", "\\")) or "\\" in key or "\x00" in key or ":" in key.split("/")[0]:
        raise UnsafeKeyError(f"refused key {key!r}: absolute or not a plain relative path")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts) or posixpath.normpath(key) != key:
        raise UnsafeKeyError(f"refused key {key!r}: it would escape the destination")
    # Refused at listing time, before a byte is fetched: the cache could not hold the name.
    longest = max(len(p.encode("utf-8", "surrogateescape")) for p in parts)
    if longest > NAME_MAX or len(key.encode("utf-8", "surrogateescape")) > PATH_MAX:
        raise UnsafeKeyError(f"refused key {key[:60]!r}...: a name of {longest} bytes (at most {NAME_MAX} per "
                             f"component, {PATH_MAX} in all) cannot be held in the cache")
    return key


def check_prefix(uri: str, *, word: str = "prefix") -> None:
    """Raise ``ValueError`` when the path of a bucket URI (after its host) holds a ``.`` or ``..`` segment."""
    if any(p in (".", "..") for p in uri.split("://", 1)[1].split("/")[1:]):
        raise ValueError(f"{uri!r}: '.' and '..' are not allowed in the {word}")


#: One object of a listing page: ``(its full name in the store, size, version tag, origin checksum)``.
Entry = tuple[str, int, str, "OriginChecksum | None"]


def list_under(uri: str, prefix: str, pages: Callable[[str], Iterable[Iterable[Entry]]], *, retries: int,
               wait_s: float, none: str = "objects") -> list[RemoteFile]:
    """Every object under ``prefix``: ``pages(base)`` yields the store's listing pages, read again from
    the start on a transient error (``retries`` times); each name is made relative to the prefix,
    "directories" are skipped, every key is checked.

    Raises:
        FileNotFoundError: nothing under the prefix.
        UnsafeKeyError: a key that would escape the destination.
    """
    base = f"{prefix}/" if prefix else ""

    def listing() -> list[RemoteFile]:
        files = []
        for page in pages(base):
            for name, size, tag, checksum in page:
                key = name[len(base):]
                if key and not key.endswith("/"):
                    files.append(RemoteFile(check_key(key), size, tag, checksum))
        return files

    files = with_retries(listing, retries=retries, wait_s=wait_s, what="listing", source=uri)
    if not files:
        raise FileNotFoundError(f"no {none} under {uri}")
    return sorted(files, key=lambda f: f.key)
