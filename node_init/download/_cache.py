"""A node's model cache on disk: its layout, the manifest of complete files, measured rates.

Layout of a node's cache root::

    <root>/<model>/...files...                  complete files only (renamed in when whole)
    <root>/<model>/.node-init-manifest.json     {key: {size, etag}} of every complete file
    <root>/<model>/.partial/                    files being written (never visible as the model)
    <root>/.locks/<model>.lock                  one downloader per node and model
    <root>/.node-init-rates.json                last measured MB/s per store, for ``overlap: auto``
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import msgspec

from .._config import DownloadConfig
from .._modes import DownloadMode
from ._sources import RemoteFile

MANIFEST = ".node-init-manifest.json"
PARTIAL = ".partial"
RATES = ".node-init-rates.json"


class ManifestEntry(msgspec.Struct, frozen=True):
    """One complete file: its size and the version tag it was fetched at."""

    size: int
    etag: str


class Manifest(msgspec.Struct):
    """What is complete in a model directory, and from which source."""

    source: str = ""
    files: dict[str, ManifestEntry] = {}


def model_dir_name(model_id: str) -> str:
    """A directory name for a model id (``org/name`` -> ``org--name``).

    Raises:
        ValueError: for an id that cannot name a directory (empty, ``.``, ``..``, hidden).
    """
    name = model_id.strip().replace("/", "--").replace("\\", "--")
    if not name or name in (".", "..") or name.startswith("."):
        raise ValueError(f"model_id {model_id!r} cannot name a cache directory")
    return name


def cache_root(cfg: DownloadConfig) -> Path:
    """This node's cache root: ``NODE_INIT_CACHE_DIR`` if set, else the config's."""
    return Path(os.environ.get("NODE_INIT_CACHE_DIR") or cfg.cache_dir).expanduser()


def select(files: list[RemoteFile], mode: DownloadMode) -> list[RemoteFile]:
    """The files a mode wants."""
    return [f for f in files if mode.wants(f.key)]


def load_manifest(dest: Path, source_uri: str) -> Manifest:
    """The manifest of ``dest`` if it was filled from ``source_uri``, else an empty one for it."""
    try:
        manifest = msgspec.json.decode((dest / MANIFEST).read_bytes(), type=Manifest)
    except (OSError, msgspec.DecodeError):
        manifest = Manifest()
    return manifest if manifest.source == source_uri else Manifest(source=source_uri)


def write_manifest(dest: Path, manifest: Manifest) -> None:
    """Replace ``dest``'s manifest atomically (written under ``.partial/``, renamed in)."""
    tmp = dest / PARTIAL / f"{MANIFEST}.{os.getpid()}.{threading.get_ident()}"
    tmp.write_bytes(msgspec.json.encode(manifest))
    os.replace(tmp, dest / MANIFEST)


def is_cached(dest: Path, manifest: Manifest, f: RemoteFile) -> bool:
    """Whether ``f`` is complete in ``dest``: recorded with its size and version, and on disk."""
    entry = manifest.files.get(f.key)
    if entry is None or entry.size != f.size or (f.etag and entry.etag != f.etag):
        return False
    try:
        return (dest / f.key).stat().st_size == f.size
    except OSError:
        return False


def missing(dest: Path, manifest: Manifest, files: list[RemoteFile]) -> list[RemoteFile]:
    """The files of ``files`` not complete in ``dest``."""
    return [f for f in files if not is_cached(dest, manifest, f)]


def _rate_key(source_uri: str) -> str:
    from urllib.parse import urlparse

    parsed = urlparse(source_uri)
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    return f"{parsed.scheme}://{parsed.netloc}@{endpoint}"


def _read_rates(root: Path) -> dict[str, float]:
    try:
        return msgspec.json.decode((root / RATES).read_bytes(), type=dict[str, float])
    except (OSError, msgspec.DecodeError):
        return {}


def read_rate(root: Path, source_uri: str) -> float | None:
    """The last download rate (MB/s) this node measured from ``source_uri``'s store, if any."""
    return _read_rates(root).get(_rate_key(source_uri))


def record_rate(root: Path, source_uri: str, mb_s: float) -> None:
    """Remember a measured rate for ``overlap: auto`` (best effort: a cache may be read-only)."""
    rates = _read_rates(root)
    rates[_rate_key(source_uri)] = mb_s
    tmp = root / f"{RATES}.{os.getpid()}"
    with contextlib.suppress(OSError):
        tmp.write_bytes(msgspec.json.encode(rates))
        os.replace(tmp, root / RATES)
