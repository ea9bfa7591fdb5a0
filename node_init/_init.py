"""``initialize_node``: the node-init coroutine a replica awaits before it serves."""

from __future__ import annotations

import filecmp
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import msgspec
import structlog

from eventbus import EventBus, Outcome

from ._bounds import TEARDOWN_S, Bounds
from ._config import NodeInitConfig
from ._ctx import CallbackCtx
from ._errors import ConfigError, DownloadError, NodeInitError, PhaseError, describe, first_error
from ._events import AfterInit, BeforeEngineInit, BeforeInit, DownloadProgress, NodeDecided, NodeReport
from ._modes import DownloadMode
from ._phases import Phase
from ._publish import publish_failure, publish_phase
from ._watchdog import Watchdog
from ._wiring import wire
from .cluster import (
    Decision,
    NodeLog,
    NodeStatus,
    local_model_path,
    may_span_nodes,
    open_exchange,
    placement_nodes,
    remove_placement_group,
    resolve_placement_group,
    run_on_nodes,
    share_enabled,
)
from .download import SnapshotHold, hold_snapshot
from .overlap import choose_overlap, is_remote

if TYPE_CHECKING:
    from .engine import EngineBuilder, VLLMEngine

_log = structlog.get_logger("node_init")
#: Node tasks' lines, forwarded to the replica (``node_id`` names where each came from).
_node_log = structlog.get_logger("node_init.node")
_LEVELS = ("debug", "info", "warning", "error", "critical")


@attrs.frozen
class InitResult:
    """What :func:`initialize_node` produced.

    Attributes:
        model_path: Where the engine loads the model from (on the replica's node).
        reports: One :class:`NodeReport` per node that ran a task.
        timings: Seconds per phase (``before_init``, ``placement``, ``download``,
            ``before_engine_init``, ``engine_boot``, ``overlap``, ``after_init``, ``total``).
        engine: The running engine, or ``None`` (``engine.kind: none`` or vetoed).
        ctx: The shared :class:`CallbackCtx`, as the handlers left it.
        placement_group: The placement group the engine runs in, if any (one node init created
            is removed before returning when no engine was started).
        owns_placement_group: Whether node init created it (and :meth:`close` removes it).
        snapshot_hold: A shared lock on the cache snapshot the engine reads, so no later
            download on this node collects it; :meth:`close` releases it.
        engine_kwargs: The engine arguments node init settled (the config's, what handlers set in
            ``ctx.extra_init_kwargs``, a Hub tokenizer's local copy): what a caller that boots the
            engine itself (``hand_off``) gives it.
    """

    model_path: str
    reports: tuple[NodeReport, ...]
    timings: dict[str, float]
    engine: VLLMEngine | None
    ctx: CallbackCtx
    placement_group: Any = None
    owns_placement_group: bool = False
    snapshot_hold: SnapshotHold | None = None
    engine_kwargs: dict[str, Any] = attrs.field(factory=dict)

    async def close(self) -> None:
        """Shut the engine down, release its snapshot, remove a placement group node init created."""
        if self.engine is not None:
            await self.engine.shutdown()
        if self.snapshot_hold is not None:
            self.snapshot_hold.release()
        if self.owns_placement_group and self.placement_group is not None:
            await remove_placement_group(self.placement_group)


class _Run:
    """State of one initialization (so failure handling can undo exactly what was done)."""

    def __init__(self, config: NodeInitConfig, bus: EventBus, ctx: CallbackCtx,
                 builder: EngineBuilder | None = None, hand_off: bool = False) -> None:
        self.config = config
        self.hand_off = hand_off  # the caller boots the engine (see ``initialize_node``)
        self.bounds = Bounds.of(config)
        self.deadline = time.time() + config.init_timeout_s  # told to the node tasks (they stop past it)
        self.builder = builder
        self.bus = bus
        self.ctx = ctx
        self._phase = Phase.BEFORE_INIT
        self.timings: dict[str, float] = {}
        self.pg: Any = None
        self.owns_pg = False
        self.engine: VLLMEngine | None = None
        self.reports: tuple[NodeReport, ...] = ()
        self.hold: SnapshotHold | None = None  # the engine's snapshot, held while it may read it
        self.publishing: list[Any] = []  # events being published now
        self.nodes: dict[str, str] = {}  # node id -> what its task is doing (for the watchdog)
        # Monotonic instants (boot_start, boot_end, download_start, download_end): the overlap timing.
        self.marks: dict[str, float] = {}
        self.overlap = False  # the engine booted on dummy weights and took the real ones in place
        self.tokenizer: str | None = None  # the local copy of a tokenizer the engine args name on the Hub
        # Engine arguments pinned for a Hub snapshot (config format, tokenizer mode: ``_vllm_files``), and
        # the arguments that chose its files, as settled before the download (a later change is refused).
        self.pins: dict[str, str] = {}
        self.file_args: dict[str, Any] | None = None

    @property
    def phase(self) -> Phase:
        return self._phase

    @phase.setter
    def phase(self, value: Phase) -> None:
        self._phase = value
        structlog.contextvars.bind_contextvars(phase=value)  # on every log line of this init

    async def publish(self, event: Any, *, phase: str | None = None) -> Outcome:
        """Publish on the bus; a handler's failure becomes a PhaseError of ``phase``.

        The download and engine tasks run at once, so ``self.phase`` may belong to the
        other task: the download side names its own phase.
        """
        self.publishing.append(event)
        try:
            return await publish_phase(self.bus, event, self.ctx, phase=phase or self.phase)
        finally:
            self.publishing.remove(event)

    def timed_out_phase(self) -> Phase:
        """The phase a timeout names: a node still in its ``BeforeDownload`` handlers, else this run's."""
        if self.phase in (Phase.DOWNLOAD, Phase.ENGINE, Phase.BEFORE_ENGINE_INIT) and any(
                state.startswith("in BeforeDownload") for state in list(self.nodes.values())):
            return Phase.BEFORE_DOWNLOAD
        return self.phase

    def running(self) -> str:
        """What is running, in words (for the watchdog: called from its thread)."""
        parts = [f"phase {self.phase}"]
        for event in list(self.publishing):
            handlers = ", ".join(s.name for s in self.bus.subscribers(type(event)))
            parts.append(f"{type(event).__name__} handlers [{handlers}]")
        for node_id, state in sorted(self.nodes.items()):
            if state != "done":
                parts.append(f"node {node_id} {state}")
        return "; ".join(parts)

    def timed(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.timings[name] = now - since
        return now


async def initialize_node(
    config: NodeInitConfig,
    *,
    bus: EventBus | None = None,
    ray_llm_config: Any = None,
    engine_builder: EngineBuilder | None = None,
    ctx: CallbackCtx | None = None,
    hand_off: bool = False,
) -> InitResult:
    """Initialize this replica's node(s): hooks, placement group, downloads, engine.

    The config's callback and handlers are added to ``bus`` (a new one if
    ``None``), after any the caller subscribed. Runs on asyncio (Ray's
    awaitables need it).

    Args:
        config: What to initialize.
        bus: A bus to publish on; subscribe your own handlers to it first.
        ray_llm_config: Ray's ``LLMConfig`` on the Serve paths (``ctx.ray_llm_config``).
        engine_builder: Builds the ``AsyncLLM`` from engine arguments (the Serve
            integration passes one that keeps Ray's engine config).
        ctx: The ctx to start from (its ``llm_config`` must be ``config``); a fresh one if ``None``.
            The stock Serve path seeds it from Ray's ctx (its placement group, runtime env).
        hand_off: Everything up to the engine, which the caller boots itself (stock Ray Serve):
            ``BeforeEngineInit`` is published (a veto is a :class:`PhaseError` naming the handlers,
            since the caller boots regardless), a tokenizer in another Hub repo is fetched, the
            snapshot stays held (:meth:`InitResult.close` releases it) and
            ``InitResult.engine_kwargs`` holds the arguments to boot with. No engine is started.

    Returns:
        The :class:`InitResult`.

    Raises:
        CallbackLoadError: an import path in config does not load (here or on a node).
        PhaseError: a phase failed (``DownloadError``, ``EngineError`` are
            subclasses); ``InitFailed`` was published first, and nothing is
            left running.
    """
    if config.engine.kind == "vllm":
        from .engine import start_import

        # Importing vLLM waits on nothing a hook decides: it runs while placement, node tasks and hooks do
        # (handed off too: Ray's engine module imported vLLM's top, not the engine core and model registry).
        start_import()
    bus = wire(config, bus)
    if ctx is None:
        ctx = CallbackCtx.for_config(config, ray_llm_config)
    elif ctx.llm_config is not config:
        raise ValueError("initialize_node: ctx.llm_config must be the config being initialized")
    run = _Run(config, bus, ctx, engine_builder, hand_off)
    log = _log
    start = time.monotonic()
    # Restored on return, so the caller's own log context stays theirs.
    dog = Watchdog(config.init_timeout_s, run.running)
    with structlog.contextvars.bound_contextvars(model_id=config.model_id, phase=run.phase):
        try:
            with anyio.CancelScope() as scope:
                dog.start(scope)
                return await _flow(run, start, log)
            raise dog.error(run.timed_out_phase())  # only the watchdog cancels this scope
        except BaseException as exc:
            dog.stop()
            error = dog.error(run.timed_out_phase()) if dog.fired else exc
            await _fail(run, error, log)
            if error is not exc:
                raise error from None
            if isinstance(exc, NodeInitError) or not isinstance(exc, Exception):
                raise
            raise PhaseError(describe(exc), phase=run.phase, cause=describe(exc)) from exc
        finally:
            dog.stop()


async def _flow(run: _Run, start: float, log: Any) -> InitResult:
    config = run.config
    t = time.monotonic()
    outcome = await run.publish(BeforeInit(model_id=config.model_id))
    run.timed("before_init", t)
    if outcome.vetoed:
        log.info("node init vetoed: no placement group, no downloads", vetoed_by=list(outcome.vetoed_by))
    skipped = _download_skipped(config, outcome.vetoed)
    if skipped:
        log.info(f"download skipped: {skipped}", model_path=local_model_path(config))
    if outcome.vetoed or not config.model_source:
        model_path = local_model_path(config)
        if await _before_engine_init(run, model_path):
            await _boot(run, model_path, dummy=False)
    else:
        model_path = await _with_downloads(run, log)
    run.phase = Phase.AFTER_INIT
    run.timings["total"] = time.monotonic() - start
    t = time.monotonic()
    outcome = await run.publish(
        AfterInit(model_id=config.model_id, model_path=model_path, timings=dict(run.timings),
                  reports=run.reports, download_skipped=skipped, overlap=run.overlap)
    )
    if outcome.vetoed:
        log.warning("AfterInit handlers returned False; there is nothing to skip",
                    vetoed_by=list(outcome.vetoed_by))
    run.timed("after_init", t)
    run.timings["total"] = time.monotonic() - start
    log.info("node init finished", model_path=model_path, seconds=round(run.timings["total"], 3))
    if run.engine is None and run.owns_pg and run.pg is not None:
        # Nothing runs in the group we made once init ends without an engine: give it back now.
        await remove_placement_group(run.pg)
        run.pg, run.owns_pg = None, False
    if run.engine is None and run.hold is not None and not run.hand_off:
        run.hold.release()  # no engine reads it
        run.hold = None
    return InitResult(model_path=model_path, reports=run.reports, timings=run.timings, engine=run.engine,
                      ctx=run.ctx, placement_group=run.pg, owns_placement_group=run.owns_pg,
                      snapshot_hold=run.hold, engine_kwargs=_engine_kwargs(run))


def _download_skipped(config: NodeInitConfig, vetoed: bool) -> str:
    """Why node init leaves the model to the engine, in words ("" when it downloads it)."""
    if vetoed:
        return "BeforeInit was vetoed: the engine loads the source itself"
    if not config.model_source:
        return f"no model_source: the engine loads {config.model_id!r} itself (from its own cache or the network)"
    if config.streaming:
        return f"load_format {config.load_format} streams the weights: the engine reads {config.model_source} itself"
    return ""


def _engine_kwargs(run: _Run) -> dict[str, Any]:
    kwargs = {**run.config.engine.kwargs, **run.pins, **run.ctx.extra_init_kwargs}
    if run.tokenizer is not None and kwargs.get("tokenizer") == run.config.engine.kwargs.get("tokenizer"):
        # The Hub tokenizer fetched here (a handler's own choice of tokenizer stays theirs).
        kwargs.update(tokenizer=run.tokenizer, tokenizer_revision=None)
    return kwargs


#: Engine arguments that decide which files of a Hub repo the snapshot holds (``_vllm_files``).
FILE_ARGS = ("load_format", "tokenizer", "tokenizer_revision", "tokenizer_mode", "config_format", "trust_remote_code")


def _file_args(run: _Run) -> dict[str, Any]:
    kwargs = {**run.config.engine.kwargs, **run.ctx.extra_init_kwargs}
    return {k: kwargs.get(k) for k in FILE_ARGS}


async def _hub_tokenizer(run: _Run) -> None:
    """Fetch a tokenizer the engine arguments name in another Hub repo (see ``_tokenizer``)."""
    from .download import fetch_tokenizer, hub_tokenizer_uri

    kwargs = {**run.config.engine.kwargs, **run.ctx.extra_init_kwargs}
    uri = hub_tokenizer_uri(kwargs)
    if uri is None or (run.config.engine.kind == "none" and not run.hand_off):  # no engine to point at it
        return
    t = time.monotonic()
    run.tokenizer, mode = await anyio.to_thread.run_sync(fetch_tokenizer, uri, run.config.download, kwargs)
    if str(kwargs.get("tokenizer_mode") or "auto") == "auto":
        run.pins["tokenizer_mode"] = mode  # decided on the whole tokenizer repo, as vLLM would
    run.timed("hub_tokenizer", t)


async def _before_engine_init(run: _Run, model_path: str) -> bool:
    """Publish BeforeEngineInit; whether an engine should boot.

    Raises:
        ConfigError: a handler changed an argument that chose the Hub snapshot's files (naming it): the
            snapshot was fetched for the arguments settled before the download.
    """
    run.phase = Phase.BEFORE_ENGINE_INIT
    t = time.monotonic()
    outcome = await run.publish(BeforeEngineInit(model_id=run.config.model_id, model_path=model_path,
                                                 engine_kwargs=_engine_kwargs(run)))
    run.timed("before_engine_init", t)
    if run.file_args is not None:
        now = _file_args(run)
        for key in FILE_ARGS:
            if now[key] != run.file_args[key]:
                raise ConfigError(f"a BeforeEngineInit handler changed {key} from {run.file_args[key]!r} to "
                                  f"{now[key]!r}, but the Hub snapshot holds the files vLLM reads for the first: "
                                  "set it in BeforeInit (or in the config)", field=f"ctx.extra_init_kwargs.{key}")
    if run.hand_off:
        if outcome.vetoed:
            raise PhaseError(f"BeforeEngineInit was vetoed by {', '.join(outcome.vetoed_by)}, but here the engine "
                             "boots regardless (stock ray.serve.llm starts it after node init; OverlappedLLMServer "
                             "can skip it)", phase=Phase.BEFORE_ENGINE_INIT)
        return False  # the caller boots it
    return run.config.engine.kind != "none" and not outcome.vetoed


async def _boot(run: _Run, model_path: str, *, dummy: bool) -> VLLMEngine:
    from .engine import boot_engine  # imports nothing heavy itself; vLLM loads in a thread

    run.phase = Phase.ENGINE
    t = time.monotonic()
    with anyio.fail_after(run.bounds.boot_s):
        engine = await boot_engine(run.config, model_path, _engine_kwargs(run), dummy=dummy, builder=run.builder)
    run.engine = engine
    run.timed("engine_boot", t)
    run.marks["boot_end"] = time.monotonic()
    return engine


class _Replica:
    """The replica's side of the node tasks: re-publishes progress, tracks its own node."""

    def __init__(self, run: _Run, local: str) -> None:
        self.run = run
        self.local = local
        self.decided = anyio.Event()
        self.done = anyio.Event()
        self.decision: Decision | None = None
        self.report: NodeReport | None = None
        self.samples: list[tuple[float, int]] = []  # (time, bytes) of the local node

    async def on_decision(self, decision: Decision) -> None:
        self.run.nodes[decision.node_id] = "downloading"
        if decision.node_id == self.local:
            self.decision = decision
            self.decided.set()
        await self.run.publish(NodeDecided(node_id=decision.node_id, mode=decision.mode,
                                           vetoed_by=decision.vetoed_by, missing_bytes=decision.missing_bytes),
                               phase=Phase.BEFORE_DOWNLOAD)

    async def on_log(self, log: NodeLog) -> None:
        """A node's log line, logged here in this process's format (one terminal, one format)."""
        fields = dict(log.line)
        event = str(fields.pop("event", ""))
        level = str(fields.pop("level", "info"))
        for key in ("timestamp", "model_id", "phase"):  # this process adds its own
            fields.pop(key, None)
        fields["node_id"] = log.node_id
        getattr(_node_log, level if level in _LEVELS else "info")(event, **fields)

    async def on_status(self, status: NodeStatus) -> None:
        if self.run.nodes.get(status.node_id) != "done":
            self.run.nodes[status.node_id] = status.doing

    async def on_progress(self, node_id: str, done: int, total: int) -> None:
        if node_id == self.local:
            self.samples.append((time.monotonic(), done))
        await self.run.publish(DownloadProgress(node_id=node_id, bytes_done=done, bytes_total=total),
                               phase=Phase.DOWNLOAD)

    async def on_report(self, report: NodeReport) -> None:
        self.run.nodes[report.node_id] = "done"
        if report.node_id == self.local:
            self.report = report
            if report.path:
                try:
                    self.run.hold = hold_snapshot(report.path)
                except OSError as exc:
                    raise DownloadError(f"cannot hold the cache snapshot {report.path}: {describe(exc)}",
                                        node_id=report.node_id, source=self.run.config.model_source or "") from exc
            self.done.set()


async def _place(run: _Run) -> tuple[list[str], str]:
    """Placement: the group's distinct nodes, plus the replica's own (the engine loads there)."""
    import ray

    run.phase = Phase.PLACEMENT
    t = time.monotonic()
    local = ray.get_runtime_context().get_node_id()
    run.pg, run.owns_pg = await resolve_placement_group(run.ctx, run.config)
    nodes = await placement_nodes(run.pg) if run.pg is not None else []
    if local not in nodes:
        nodes.append(local)
    run.timed("placement", t)
    return nodes, local


async def _with_downloads(run: _Run, log: Any) -> str:
    """Downloads on every node, and the engine boot, at once (see ``_engine_when_ready``)."""
    import ray

    if not ray.is_initialized():
        await anyio.to_thread.run_sync(ray.init)  # connecting takes seconds: off the loop
    # A Hub id is told from a path, and its revision pinned to a commit, once, here: every node reads one
    # commit, and the commit's tree, fetched here, reaches the nodes through Ray's KV.
    run.config = await anyio.to_thread.run_sync(pin_model_source, run.config)
    if (run.config.model_source or "").startswith("hf://"):
        run.file_args = _file_args(run)  # what the snapshot is fetched for
        run.pins = await anyio.to_thread.run_sync(_hub_pins, run)
    config, ctx = run.config, run.ctx
    # The init's exchange for a shared download: a hub that has to start takes about a second (a
    # worker process), so it starts before placement and runs while placement does.
    with open_exchange(config, wanted=share_enabled(config) and may_span_nodes(ctx, config)) as exchange:
        nodes, local = await _place(run)
        run.phase = Phase.DOWNLOAD
        log.info("downloading on nodes", nodes=nodes, source=config.model_source)
        replica = _Replica(run, local)
        run.nodes = dict.fromkeys(nodes, "listing")

        async def downloads() -> None:
            run.reports = tuple(await run_on_nodes(config, ctx, nodes, local, replica, exchange=exchange,
                                                   deadline=run.deadline))
            run.marks["download_end"] = time.monotonic()
            run.timings["download"] = run.marks["download_end"] - run.marks["download_start"]

        run.marks["download_start"] = time.monotonic()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(downloads)
                tg.start_soon(_engine_when_ready, run, replica, log)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
    if "boot_end" in run.marks and "boot_start" in run.marks:
        # Seconds the engine boot and the downloads ran at the same time.
        run.timings["overlap"] = max(0.0, min(run.marks["boot_end"], run.marks["download_end"])
                                     - max(run.marks["boot_start"], run.marks["download_start"]))
    merged = ctx.custom_data.get("nodes") or {}
    for report in run.reports:
        merged[report.node_id] = report.custom_data
    ctx.custom_data["nodes"] = merged
    mine = next(r for r in run.reports if r.node_id == local)
    return mine.path or local_model_path(config)


def pin_model_source(config: NodeInitConfig, *, share_tree: bool = True) -> NodeInitConfig:
    """``config`` as the replica hands it to the nodes: a bare Hub id made ``hf://``, and an ``hf://``
    revision resolved to its commit (with ``share_tree`` and Ray running, the commit's tree is listed
    here and shared with the nodes through Ray's KV: the Hub is not asked once per node).

    Raises:
        DownloadError: the Hub could not resolve it (for a bare id: naming both readings).
    """
    from ._errors import DownloadError
    from .cluster import share_tree as share
    from .download import hub_or_path, hub_tree, is_remote_source, pin_hub_source, source_errors

    source = config.model_source or ""
    pinned = hub_or_path(source)
    if pinned.startswith("hf://") and is_remote_source(pinned):  # not this node's cache (HF_HUB_OFFLINE)
        bounds = Bounds.of_download(config.download)
        try:
            with source_errors(pinned):
                pinned = pin_hub_source(pinned, config.download.hf, bounds=bounds)
        except DownloadError as exc:
            if source.startswith("hf://"):
                raise
            # A bare id: say both readings failed, not only the Hub's.
            raise DownloadError(f"model_source {source!r} is no path on the replica ({os.getcwd()}), and as a "
                                f"Hugging Face Hub id: {exc.cause or exc}", source=source, cause=exc.cause) from exc
        if share_tree:
            with source_errors(pinned):
                share(pinned, hub_tree(pinned, config.download.hf, bounds=bounds))
    return config if pinned == source else msgspec.structs.replace(config, model_source=pinned)


def _hub_pins(run: _Run) -> dict[str, str]:
    """For a Hub source: the config format and tokenizer mode vLLM decides on the whole repo, pinned in
    the engine arguments (the snapshot may lack the file that decided them; see ``_vllm_files``)."""
    from .cluster import shared_tree
    from .download import EngineFileArgs, hub_tree, is_remote_source, pinned_kwargs, source_errors

    uri = run.config.model_source or ""
    if not uri.startswith("hf://") or not is_remote_source(uri) or run.config.streaming:
        return {}
    with source_errors(uri):
        tree = shared_tree(uri) or hub_tree(uri, run.config.download.hf, bounds=run.bounds)
        kwargs = {**run.config.engine.kwargs, **run.ctx.extra_init_kwargs}
        return pinned_kwargs([str(e["path"]) for e in tree], EngineFileArgs.of(kwargs))


async def _engine_when_ready(run: _Run, replica: _Replica, log: Any) -> None:
    """Boot once the replica's node has decided: on dummy weights now (overlap), or on its files."""
    bound = run.bounds.node_s
    with anyio.fail_after(bound):
        await _hub_tokenizer(run)  # small: it lands while the weights download
        await replica.decided.wait()
    assert replica.decision is not None
    path = replica.decision.path or local_model_path(run.config)
    if not await _before_engine_init(run, path):
        return
    from .engine import start_import

    choice = await choose_overlap(run.config, replica.decision, done=replica.done, samples=replica.samples,
                                  engine_ready=start_import().done)
    log.info("overlap decision", overlap=choice.overlap, reason=choice.reason,
             missing_bytes=replica.decision.missing_bytes,
             rate_mb_s=round(choice.rate_mb_s, 1) if choice.rate_mb_s else None,
             estimated_s=round(choice.estimated_s, 2))
    run.marks["boot_start"] = time.monotonic()
    if not choice.overlap:
        with anyio.fail_after(bound):
            await replica.done.wait()
        await _boot(run, (replica.report.path if replica.report else "") or path, dummy=False)
        return
    boot_dir = await _config_and_tokenizer(run)
    run.overlap = True
    engine = await _boot(run, boot_dir, dummy=True)
    with anyio.fail_after(bound):
        await replica.done.wait()
    assert replica.report is not None
    _same_version(run, boot_dir, replica.report)
    run.phase = Phase.ENGINE
    run.timings["weights_load"] = await engine.load_weights(replica.report.path)


def _same_version(run: _Run, boot_dir: str, report: NodeReport) -> None:
    """The config and tokenizer the engine booted on are the weights' version (else nothing serves).

    Both were fetched pinned to a listing; a model replaced at the source between the two
    listings would pair one version's tokenizer with another's weights.
    """
    if Path(boot_dir).resolve() == Path(report.path).resolve():
        return
    for path in sorted(Path(boot_dir).rglob("*")):
        if not path.is_file():
            continue
        key = path.relative_to(boot_dir).as_posix()
        other = Path(report.path) / key
        if not other.is_file() or not filecmp.cmp(path, other, shallow=False):
            raise DownloadError("the model changed at the source between the config/tokenizer fetch and the "
                                "weights: the engine would pair two versions", node_id=report.node_id,
                                source=run.config.model_source or "", file=key)


async def _config_and_tokenizer(run: _Run) -> str:
    """A directory with the model's config and tokenizer in this process, to boot on dummy weights.

    From the Hub: every file of the snapshot but the weights (``params.json``, ``tekken.json``, the
    sentence-transformers modules...), so the dummy boot decides config format, tokenizer mode and
    pooling as the reload on the whole snapshot does (they are pinned in the engine arguments too).
    """
    config = run.config
    uri = config.model_source or ""
    if not is_remote(config):
        return local_model_path(config)  # a local source has them already
    from .cluster import shared_tree
    from .download import (
        Downloader,
        HubSource,
        cache_root,
        for_engine,
        model_dir_name,
        open_source,
        select,
        source_errors,
    )

    t = time.monotonic()

    def fetch() -> str:
        with source_errors(uri):
            kwargs = {**config.engine.kwargs, **run.ctx.extra_init_kwargs}
            source = for_engine(open_source(uri, config.download), kwargs, tree=shared_tree(uri))
            listing = source.list_files()
        if isinstance(source, HubSource) and source.selection is not None:
            weights = set(source.selection.weights)
            wanted = [f for f in listing if f.key not in weights]
        else:
            wanted = select(listing, DownloadMode.TOKENIZER_ONLY)
        dest = cache_root(config.download) / f"{model_dir_name(config.model_id)}--tokenizer"
        return Downloader(source, dest, config.download).run(wanted).path

    path = await anyio.to_thread.run_sync(fetch)
    run.timed("tokenizer_fetch", t)
    return path


async def _fail(run: _Run, exc: BaseException, log: Any) -> None:
    """Undo what this run started, then publish InitFailed (bounded, shielded from cancellation)."""
    node_id = getattr(exc, "node_id", None)
    # An error from a node task (it names its node) happened in the download phase, whatever
    # the engine task concurrently set run.phase to.
    phase = getattr(exc, "phase", "download" if node_id else run.phase)
    # Shielded from the cancellation that may have brought us here, and bounded as a whole.
    with anyio.CancelScope(shield=True), anyio.move_on_after(TEARDOWN_S):
        if run.hold is not None:
            run.hold.release()
        if run.engine is not None:
            await run.engine.shutdown()
        if run.owns_pg and run.pg is not None:
            await remove_placement_group(run.pg)
        if not isinstance(exc, Exception):
            return  # cancelled: nobody is waiting for an InitFailed
        await publish_failure(run.bus, run.ctx, exc, model_id=run.config.model_id, phase=phase,
                              node_id=node_id, log=log)
