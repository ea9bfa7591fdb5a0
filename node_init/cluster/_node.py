"""What runs on each node of the placement group: BeforeDownload, then that node's download."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from eventbus import EventBus

from .._bounds import Bounds
from .._config import NodeInitConfig
from .._ctx import CallbackCtx
from .._errors import DownloadError, describe
from .._events import BeforeDownload, ErrorInfo, NodeReport
from .._modes import DownloadMode
from .._phases import Phase
from .._publish import publish_before_download
from ..download import (
    Downloader,
    ModelCache,
    Progress,
    RemoteFile,
    Source,
    cache_root,
    for_engine,
    list_source,
    local_path,
    model_dir_name,
    open_source,
    read_rate,
    select,
    source_errors,
)
from ._hub_tree import shared_tree

if TYPE_CHECKING:
    from ._holders import HolderSource
    from ._peer import SharedSource

_log = structlog.get_logger("node_init.node")


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What a node decided after ``BeforeDownload``, sent before it downloads (for overlap).

    Attributes:
        node_id: The node.
        mode: The mode in force after the publish.
        vetoed: Whether a handler vetoed the node's download.
        path: Where the model will be on that node ("" when nothing is fetched).
        missing_bytes: Bytes the node still has to fetch.
        rate_mb_s: The node's last measured rate from this store, if any.
        vetoed_by: The handlers that vetoed (``module.qualname``).
    """

    node_id: str
    mode: DownloadMode
    vetoed: bool
    path: str
    missing_bytes: int
    rate_mb_s: float | None = None
    vetoed_by: tuple[str, ...] = ()


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
    exchange: Any = None,
    nodes: list[str] | None = None,
    on_status: Callable[[str], None] = lambda doing: None,
) -> NodeReport:
    """Publish ``BeforeDownload`` on this node, then fetch the model per the mode in force.

    ``exchange``: the init's share exchange (``download.share``), or ``None``; ``nodes``: the
    init's nodes (this node reads its provisional share while the others join); ``on_status``:
    told what the node is doing when that changes (for the replica's timeout message).

    Raises:
        PhaseError: a ``BeforeDownload`` handler failed (phase ``before_download``).
        DownloadError: the download failed, naming node, source and file.
    """
    start = time.monotonic()
    uri = config.model_source or ""
    log = _log.bind(node_id=node_id, model_id=config.model_id, phase=Phase.DOWNLOAD)
    dest = cache_root(config.download) / model_dir_name(config.model_id)
    mode = _mode(ctx, is_local)
    source: Source | None = None
    listing: list[RemoteFile] = []
    if uri:
        with source_errors(uri, node_id=node_id):
            # A Hub source is narrowed to what vLLM reads under the engine arguments BeforeInit settled.
            source = for_engine(open_source(uri, config.download), {**config.engine.kwargs, **ctx.extra_init_kwargs},
                                tree=shared_tree(uri))
            listing = source.list_files() if mode is not DownloadMode.NONE else []
    in_place = source.in_place if source is not None else None
    dest_path = str(in_place or dest)

    def todo_for(mode: DownloadMode) -> tuple[list[RemoteFile], list[RemoteFile]]:
        wanted = select(listing, mode)
        if in_place is not None or not wanted:
            return wanted, []  # loaded where it is: nothing to fetch
        try:
            return wanted, ModelCache(dest, uri).missing(wanted)
        except OSError as exc:  # e.g. the cache root is a file
            raise DownloadError(f"cannot read the cache at {dest}: {describe(exc)}", node_id=node_id, source=uri,
                                cause=describe(exc)) from exc

    wanted, todo = todo_for(mode)
    before = {k: msgspec.json.encode(v) for k, v in ctx.custom_data.items()}  # what the replica sent
    handlers = ", ".join(s.name for s in bus.subscribers(BeforeDownload))
    on_status(f"in BeforeDownload handlers [{handlers}]")
    outcome = publish_before_download(bus, ctx, model_id=config.model_id, node_id=node_id, mode=mode, source=uri,
                                      destination=dest_path, files=tuple(f.key for f in wanted),
                                      expected_bytes=sum(f.size for f in todo))
    on_status("downloading")
    errors = tuple(ErrorInfo(type=type(e).__name__, message=str(e), phase=Phase.BEFORE_DOWNLOAD, node_id=node_id)
                   for e in outcome.errors)
    new_mode = _mode(ctx, is_local)  # read after the publish: handlers may change it
    report = NodeReport(node_id=node_id, path=dest_path, mode=new_mode, vetoed=outcome.vetoed,
                        custom_data=_additions(ctx.custom_data, before), errors=errors)
    if outcome.vetoed:
        log.info("download vetoed", vetoed_by=list(outcome.vetoed_by))
    skip = outcome.vetoed or new_mode is DownloadMode.NONE or not uri
    if not skip and new_mode is not mode:
        if mode is DownloadMode.NONE:  # nothing was listed before the publish
            with source_errors(uri, node_id=node_id):
                listing = source.list_files() if source is not None else []
        wanted, todo = todo_for(new_mode)
    final_path = dest_path if (in_place is not None or not skip) else ""
    if on_decision is not None:
        on_decision(Decision(node_id=node_id, mode=new_mode, vetoed=outcome.vetoed, path=final_path,
                             missing_bytes=0 if skip else sum(f.size for f in todo),
                             rate_mb_s=read_rate(dest.parent, uri) if uri else None,
                             vetoed_by=outcome.vetoed_by))
    fetching = source is not None and not skip and in_place is None
    held = _holders(config, node_id, todo, source) if fetching and source is not None else None
    base = held or source
    shared = (_join(exchange, node_id, todo if fetching else [], config, base, nodes or [node_id])
              if exchange is not None else None)
    if base is None or not fetching:
        if shared is not None:
            shared.finish(0)
        if not outcome.vetoed:
            _extra_files(config, node_id, cancel)
        return _finish(report, start, path=final_path)

    def relist() -> list[RemoteFile]:  # after a change at the source: one version, all files
        with source_errors(uri, node_id=node_id):
            return select(base.list_files(), new_mode)

    reader = shared if shared is not None and shared.owners else base
    try:
        result = Downloader(reader, dest, config.download, node_id=node_id, progress=progress, cancel=cancel,
                            first=shared.mine if shared is not None else None).run(wanted, relist=relist)
    except BaseException:
        if shared is not None:
            shared.finish(0)  # failed or cancelled: the peers take this node's share from the source
        raise
    if shared is not None:
        shared.finish(Bounds.of(config).stall_s)  # peers still reading its pieces get one stall bound
    peer = (shared.stats.peer_bytes if shared is not None else 0) + (held.held_bytes if held is not None else 0)
    if (shared is not None and shared.owners) or held is not None:
        log.info("shared download", origin_bytes=result.bytes - peer, peer_bytes=peer,
                 offered=shared.stats.offered if shared else 0, refetched=shared.stats.refetched if shared else 0,
                 takeovers=shared.stats.takeovers if shared else 0, from_holders=held.held_bytes if held else 0)
    _record(config, node_id, wanted)
    _extra_files(config, node_id, cancel)  # after the model, as Ray does
    bad: dict[str, int] = {}
    for view in (shared, held):
        for node, count in (view.bad_nodes if view is not None else {}).items():
            bad[node] = bad.get(node, 0) + count
    return _finish(msgspec.structs.replace(report, peer_bytes=peer, verified=result.verified, rereads=result.rereads,
                                           bad_nodes=bad, takeovers=shared.stats.takeovers if shared else 0),
                   start, path=result.path, files=result.fetched, nbytes=result.bytes, cached=result.cached_bytes)


def _extra_files(config: NodeInitConfig, node_id: str, cancel: threading.Event | None) -> None:
    """Ray's ``extra_files``: each prefix fetched into its destination on this node (verified, atomic)."""
    for extra in config.extra_files:
        dest = Path(os.path.expandvars(extra.destination_path)).expanduser()
        source, files = list_source(extra.bucket_uri, config.download, node_id=node_id)
        Downloader(source, dest, config.download, node_id=node_id, cancel=cancel).run(files, relist=source.list_files)


def _holders(config: NodeInitConfig, node_id: str, todo: list[RemoteFile], source: Source) -> HolderSource | None:
    """A view of ``source`` that reads what live nodes already hold from them first (``None``: none do)."""
    from ._holders import HolderSource, holders_for
    from ._share import share_enabled

    if not todo or not share_enabled(config) or not _ray_up():
        return None
    try:
        found = holders_for(config, node_id, todo)
    except Exception as exc:  # the KV is unreachable: the origin has everything
        _log.warning("cannot read which nodes hold the model", node_id=node_id, error=describe(exc))
        return None
    return HolderSource(source, config, found) if found else None


def _record(config: NodeInitConfig, node_id: str, files: list[RemoteFile]) -> None:
    """Tell later inits this node holds ``files`` (best effort: a failure costs them only the origin)."""
    from ._holders import record
    from ._share import share_enabled

    if not share_enabled(config) or not _ray_up():
        return
    try:
        record(config, node_id, files)
    except Exception as exc:
        _log.warning("cannot record this node's snapshot", node_id=node_id, error=describe(exc))


def _ray_up() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return bool(ray.is_initialized())


def _join(exchange: Any, node_id: str, todo: list[RemoteFile], config: NodeInitConfig,
          source: Source | None, nodes: list[str]) -> SharedSource | None:
    """Join the init's exchange with the ranges this node must fetch; its shared view of the source.

    The join's answer waits for every node; the view does not: it starts on the
    :func:`~node_init.cluster.provisional` owners, which it claims.
    ``None`` when the exchange is unreachable (every range then comes from the source).
    """
    import ray

    from ._assign import needs_digest, provisional
    from ._handles import start_agent
    from ._peer import SharedSource
    from ._share import units_of

    units = units_of(todo, config.download.part_size_mb * 1024 * 1024)
    guess = provisional(units, nodes)
    claimed = [u for u, owner in guess.items() if owner == node_id]
    agent = None
    try:
        # Its agent starts while the others join. The ranges travel in the call, not as an object of
        # this node's: a node that hangs right after it joined must not hold up the hub's read of them.
        agent = start_agent(exchange, node_id, Bounds.of(config).hub_idle_s) if source is not None and units else None
        joining = exchange.join(node_id, needs_digest(units), [units], Bounds.of(config).join_s, claimed, agent)
    except ray.exceptions.RayError as exc:
        _log.warning("no exchange: fetching every range from the source", node_id=node_id, error=describe(exc))
        return None
    if source is None:
        return None
    return SharedSource(source, exchange, node_id, guess, config.download, joining=joining, agent=agent, needs=units)


def _additions(data: dict[str, object], before: dict[str, bytes]) -> dict[str, object]:
    """What this node's handlers added to or changed in ``custom_data`` (not what the replica sent)."""
    return {k: v for k, v in data.items() if before.get(k) != msgspec.json.encode(v)}


def _finish(report: NodeReport, start: float, *, path: str, files: tuple[str, ...] = (),
            nbytes: int = 0, cached: int = 0) -> NodeReport:
    return msgspec.structs.replace(report, path=path, files=files, bytes=nbytes, cached_bytes=cached,
                                   seconds=time.monotonic() - start)


def local_model_path(config: NodeInitConfig) -> str:
    """Where the engine loads from when no download ran: a local source, else the model id."""
    uri = config.model_source
    path = local_path(uri) if uri else None
    if path is not None:
        return str(path)
    if uri and config.streaming:
        return uri  # streaming load formats read the weights from the source itself
    return config.model_id
