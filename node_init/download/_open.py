"""A model source by its URI: which kind takes it, its check at parse time, opening and listing it on a
node (every failure a :class:`~node_init.DownloadError`), and the policies that read its kind
(is it remote, may the nodes of an init share one fetch of it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .._config import register_check
from .._errors import DownloadError, describe
from ._hub import check_revision, hub_or_path
from ._registry import SOURCES
from ._source import RemoteFile, Source, SourceKind, UnsafeKeyError
from ._vllm_files import LOAD_FORMATS, check_load_format

if TYPE_CHECKING:
    from .._config import DownloadConfig


def source_kind(uri: str) -> SourceKind:
    """The kind that takes ``uri``.

    Raises:
        ValueError: no registered kind takes its scheme (the message lists those that do).
    """
    for kind in SOURCES.values():
        if kind.takes(uri):
            return kind
    schemes = ", ".join(s for k in SOURCES.values() for s in k.schemes if s)
    raise ValueError(f"unsupported scheme in {uri!r}; expected one of {schemes} or a local path")


def check_source(uri: str) -> None:
    """Check a model source URI as a config is parsed (no network, no node).

    Raises:
        ValueError: saying what is wrong.
    """
    if not uri.strip():
        raise ValueError("must not be empty (leave it out to let the engine load model_id itself)")
    source_kind(uri).check(uri)


def is_remote_source(uri: str | None) -> bool:
    """Whether ``uri``'s bytes come over the network."""
    if not uri:
        return False
    kind = source_kind(uri)
    return kind.remote and not kind.here(uri)


def shares(uri: str | None, setting: str) -> bool:
    """Whether ``download.share: <setting>`` shares a fetch of ``uri`` between nodes."""
    if not uri or setting == "off":
        return False
    kind = source_kind(uri)
    if kind.here(uri):
        return False
    return kind.share == "auto" or (kind.share == "on" and setting == "on")


def open_source(uri: str, cfg: DownloadConfig) -> Source:
    """The :class:`Source` for a model URI, from the source registry (:data:`SOURCES`).

    Args:
        uri: The model source.
        cfg: The download settings (bounds, retries, each store's section); the node's own
            variables (``AWS_*``) override them.

    Raises:
        ValueError: for a scheme no registered kind takes.
        FileNotFoundError: for an ``hf://`` model missing from this node's HF cache (offline).
        PermissionError: for a source with no credentials anywhere (see :func:`s3_credentials`).
    """
    return source_kind(uri).open(uri, cfg)


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
        from obstore.exceptions import InvalidPathError

        if isinstance(exc, InvalidPathError):  # obstore refuses '..' segments and control characters itself
            # Its message is a multi-line debug dump holding the raw key: keep its first line, escaped.
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DownloadError(f"refused an object key that cannot name a file here: {first!r}",
                                node_id=node_id, source=uri, cause=f"{type(exc).__name__}: {first!r}") from exc
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
        source = open_source(uri, cfg)
        return source, source.list_files()


def check_engine_load_format(source: str, value: object) -> None:
    """The engine's ``load_format`` with a model source: one vLLM 0.32 accepts; from the Hub, one whose
    files are known (:data:`LOAD_FORMATS`: the snapshot holds only what it reads).

    Raises:
        ValueError: saying what is wrong.
    """
    if not isinstance(value, str) or value.lower() not in LOAD_FORMATS:
        raise ValueError(f"{value!r} is not a load_format vLLM 0.32 accepts ({', '.join(LOAD_FORMATS)})")
    if hub_or_path(source).startswith("hf://"):
        check_load_format(value)


# The config checks every source URI, Hub revision and load format it parses with these (it imports no
# source module).
register_check("source", check_source)
register_check("revision", check_revision)
register_check("load_format", check_engine_load_format)
