"""What runs on each node of the placement group: BeforeDownload, then that node's download."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import structlog

from eventbus import EventBus, HandlerError

from ._config import NodeInitConfig
from ._ctx import CallbackCtx
from ._download import Downloader, Progress, cache_root, missing, model_dir_name, read_rate, select
from ._errors import DownloadError, NodeInitError, PhaseError, describe
from ._events import BeforeDownload, ErrorInfo, NodeReport
from ._modes import DownloadMode
from ._sources import RemoteFile, Source, UnsafeKeyError, hf_snapshot, open_source

_log = structlog.get_logger("node_init.node")


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What a node decided after ``BeforeDownload``, sent before it downloads (for overlap)."""

    node_id: str
    mode: DownloadMode
    vetoed: bool
    path: str
    missing_bytes: int
    rate_mb_s: float | None = None


def _mode(ctx: CallbackCtx, is_local: bool) -> DownloadMode:
    return ctx.local_node_download_model if is_local else ctx.worker_node_download_model


def node_download(
    config: NodeInitConfig,
    ctx: CallbackCtx,
    bus: EventBus,
    *,
    node_id: str,
    is_local: bool,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    on_decision: Callable[[Decision], None] | None = None,
) -> NodeReport:
    """Publish ``BeforeDownload`` on this node, then fetch the model per the mode in force.

    Raises:
        PhaseError: a ``BeforeDownload`` handler failed (phase ``before_download``).
        DownloadError: the download failed, naming node, source and file.
    """
    start = time.monotonic()
    uri = config.model_source or ""
    log = _log.bind(node_id=node_id, model_id=config.model_id, phase="download")
    dest = cache_root(config.download) / model_dir_name(config.model_id)
    source: Source | None = None
    listing: list[RemoteFile] = []
    mode = _mode(ctx, is_local)
    if uri.startswith("hf://"):
        dest_path = _hf_path(uri, node_id)
    else:
        dest_path = str(dest)
        if mode is not DownloadMode.NONE and uri:
            source, listing = _list(config, uri, node_id)
    wanted = select(listing, mode)
    todo = missing(dest, uri, wanted) if wanted else []
    event = BeforeDownload(
        model_id=config.model_id, node_id=node_id, source=uri, destination=dest_path, mode=mode,
        files=tuple(f.key for f in wanted), expected_bytes=sum(f.size for f in todo),
    )
    try:
        outcome = bus.publish_sync(event, ctx)
    except HandlerError as exc:
        raise PhaseError(str(exc), phase="before_download", node_id=node_id, cause=describe(exc)) from exc
    errors = tuple(ErrorInfo(type=type(e).__name__, message=str(e), phase="before_download", node_id=node_id)
                   for e in outcome.errors)
    new_mode = _mode(ctx, is_local)  # read after the publish: handlers may change it
    report = NodeReport(node_id=node_id, path=dest_path, mode=new_mode, vetoed=outcome.vetoed,
                        custom_data=dict(ctx.custom_data), errors=errors)
    if outcome.vetoed:
        log.info("download vetoed", vetoed_by=list(outcome.vetoed_by))
    skip = outcome.vetoed or new_mode is DownloadMode.NONE or uri.startswith("hf://") or not uri
    if not skip and (source is None or new_mode is not mode):
        source, listing = (source, listing) if source is not None else _list(config, uri, node_id)
        wanted = select(listing, new_mode)
        todo = missing(dest, uri, wanted)
    final_path = dest_path if (uri.startswith("hf://") or not skip) else ""
    if on_decision is not None:
        on_decision(Decision(node_id=node_id, mode=new_mode, vetoed=outcome.vetoed, path=final_path,
                             missing_bytes=0 if skip else sum(f.size for f in todo),
                             rate_mb_s=read_rate(dest.parent, uri) if uri else None))
    if skip or source is None:
        return _finish(report, start, path=final_path)
    result = Downloader(source, dest, config.download, node_id=node_id, progress=progress,
                        cancel=cancel).run(wanted)
    return _finish(report, start, path=result.path, files=result.fetched, nbytes=result.bytes,
                   cached=result.cached_bytes)


def _finish(report: NodeReport, start: float, *, path: str, files: tuple[str, ...] = (),
            nbytes: int = 0, cached: int = 0) -> NodeReport:
    return msgspec.structs.replace(report, path=path, files=files, bytes=nbytes, cached_bytes=cached,
                                   seconds=time.monotonic() - start)


def _list(config: NodeInitConfig, uri: str, node_id: str) -> tuple[Source, list[RemoteFile]]:
    try:
        source = open_source(uri, config.download.s3, request_timeout_s=config.download.stall_timeout_s)
        return source, source.list_files()
    except NodeInitError:
        raise
    except UnsafeKeyError as exc:
        raise DownloadError(str(exc), node_id=node_id, source=uri, cause=describe(exc)) from exc
    except Exception as exc:
        if type(exc).__name__ == "InvalidPathError":  # obstore refuses '..' segments itself
            raise DownloadError(f"refused an object key that would escape the destination: {exc}",
                                node_id=node_id, source=uri, cause=describe(exc)) from exc
        raise DownloadError(f"cannot list the model: {describe(exc)}", node_id=node_id, source=uri,
                            cause=describe(exc)) from exc


def _hf_path(uri: str, node_id: str) -> str:
    try:
        return str(hf_snapshot(uri))
    except FileNotFoundError as exc:
        raise DownloadError(str(exc), node_id=node_id, source=uri, cause=describe(exc)) from exc


def local_model_path(config: NodeInitConfig) -> str:
    """Where the engine loads from when no download ran: a local source, else the model id."""
    uri = config.model_source
    if uri and uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(uri).path)
    if uri and "://" not in uri:
        return str(Path(uri).expanduser())
    if uri and config.streaming:
        return uri  # streaming load formats read the weights from the source itself
    return config.model_id
