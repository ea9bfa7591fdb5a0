"""``initialize_node``: the node-init coroutine a replica awaits before it serves."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import structlog

from eventbus import EventBus, HandlerError

from ._config import NodeInitConfig
from ._ctx import CallbackCtx
from ._errors import NodeInitError, PhaseError, describe, first_error
from ._events import (
    AfterInit,
    BeforeEngineInit,
    BeforeInit,
    DownloadProgress,
    ErrorInfo,
    InitFailed,
    NodeReport,
)
from ._modes import DownloadMode
from ._node import Decision, local_model_path
from ._wiring import wire

if TYPE_CHECKING:
    from ._engine import EngineBuilder, VLLMEngine

_log = structlog.get_logger("node_init")

#: ``overlap: auto`` overlaps when the weights would take longer than this to arrive.
OVERLAP_MIN_S = 2.0
#: How long ``auto`` samples the live download rate when none was measured before.
OVERLAP_PROBE_S = 0.5


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
    """

    model_path: str
    reports: tuple[NodeReport, ...]
    timings: dict[str, float]
    engine: Any
    ctx: CallbackCtx
    placement_group: Any = None
    owns_placement_group: bool = False

    async def close(self) -> None:
        """Shut the engine down and remove a placement group node init created."""
        if self.engine is not None:
            await self.engine.shutdown()
        if self.owns_placement_group and self.placement_group is not None:
            import ray.util

            ray.util.remove_placement_group(self.placement_group)


class _Run:
    """State of one initialization (so failure handling can undo exactly what was done)."""

    def __init__(self, config: NodeInitConfig, bus: EventBus, ctx: CallbackCtx,
                 builder: EngineBuilder | None = None) -> None:
        self.config = config
        self.builder = builder
        self.bus = bus
        self.ctx = ctx
        self._phase = "before_init"
        self.timings: dict[str, float] = {}
        self.pg: Any = None
        self.owns_pg = False
        self.engine: Any = None
        self.reports: tuple[NodeReport, ...] = ()
        self.marks: dict[str, float] = {}  # monotonic instants, for the overlap timing

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, value: str) -> None:
        self._phase = value
        structlog.contextvars.bind_contextvars(phase=value)  # on every log line of this init

    async def publish(self, event: Any, *, phase: str | None = None) -> Any:
        """Publish on the bus; a handler's failure becomes a PhaseError of ``phase``.

        The download and engine tasks run at once, so ``self.phase`` may belong to the
        other task: the download side names its own phase.
        """
        try:
            return await self.bus.publish(event, self.ctx)
        except HandlerError as exc:
            raise PhaseError(str(exc), phase=phase or self.phase, cause=describe(exc)) from exc

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

    Returns:
        The :class:`InitResult`.

    Raises:
        CallbackLoadError: an import path in config does not load (here or on a node).
        PhaseError: a phase failed (``DownloadError``, ``EngineError`` are
            subclasses); ``InitFailed`` was published first, and nothing is
            left running.
    """
    bus = wire(config, bus)
    ctx = CallbackCtx.for_config(config, ray_llm_config)
    run = _Run(config, bus, ctx, engine_builder)
    log = _log
    start = time.monotonic()
    # Restored on return, so the caller's own log context stays theirs.
    with structlog.contextvars.bound_contextvars(model_id=config.model_id, phase=run.phase):
        try:
            return await _flow(run, start, log)
        except BaseException as exc:
            await _fail(run, exc, log)
            if isinstance(exc, NodeInitError) or not isinstance(exc, Exception):
                raise
            raise PhaseError(describe(exc), phase=run.phase, cause=describe(exc)) from exc


async def _flow(run: _Run, start: float, log: Any) -> InitResult:
    config = run.config
    t = time.monotonic()
    outcome = await run.publish(BeforeInit(model_id=config.model_id))
    run.timed("before_init", t)
    if outcome.vetoed:
        log.info("node init vetoed: no placement group, no downloads", vetoed_by=list(outcome.vetoed_by))
    if outcome.vetoed or not config.model_source:
        model_path = local_model_path(config)
        if await _before_engine_init(run, model_path):
            await _boot(run, model_path, dummy=False)
    else:
        model_path = await _with_downloads(run, log)
    run.phase = "after_init"
    run.timings["total"] = time.monotonic() - start
    t = time.monotonic()
    outcome = await run.publish(
        AfterInit(model_id=config.model_id, model_path=model_path, timings=dict(run.timings),
                  reports=run.reports)
    )
    if outcome.vetoed:
        log.warning("AfterInit handlers returned False; there is nothing to skip",
                    vetoed_by=list(outcome.vetoed_by))
    run.timed("after_init", t)
    run.timings["total"] = time.monotonic() - start
    log.info("node init finished", model_path=model_path, seconds=round(run.timings["total"], 3))
    if run.engine is None and run.owns_pg and run.pg is not None:
        # Nothing runs in the group we made once init ends without an engine: give it back now.
        import ray.util

        ray.util.remove_placement_group(run.pg)
        run.pg, run.owns_pg = None, False
    return InitResult(model_path=model_path, reports=run.reports, timings=run.timings, engine=run.engine,
                      ctx=run.ctx, placement_group=run.pg, owns_placement_group=run.owns_pg)


def _engine_kwargs(run: _Run) -> dict[str, Any]:
    return {**run.config.engine.kwargs, **run.ctx.extra_init_kwargs}


async def _before_engine_init(run: _Run, model_path: str) -> bool:
    """Publish BeforeEngineInit; whether an engine should boot."""
    run.phase = "before_engine_init"
    t = time.monotonic()
    outcome = await run.publish(BeforeEngineInit(model_id=run.config.model_id, model_path=model_path,
                                                 engine_kwargs=_engine_kwargs(run)))
    run.timed("before_engine_init", t)
    return run.config.engine.kind != "none" and not outcome.vetoed


async def _boot(run: _Run, model_path: str, *, dummy: bool) -> VLLMEngine:
    from ._engine import boot_engine

    run.phase = "engine"
    t = time.monotonic()
    with anyio.fail_after(run.config.engine.boot_timeout_s):
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
        if decision.node_id == self.local:
            self.decision = decision
            self.decided.set()

    async def on_progress(self, node_id: str, done: int, total: int) -> None:
        if node_id == self.local:
            self.samples.append((time.monotonic(), done))
        await self.run.publish(DownloadProgress(node_id=node_id, bytes_done=done, bytes_total=total),
                               phase="download")

    async def on_report(self, report: NodeReport) -> None:
        if report.node_id == self.local:
            self.report = report
            self.done.set()


async def _with_downloads(run: _Run, log: Any) -> str:
    import ray

    from ._placement import placement_nodes, resolve_placement_group
    from ._remote import run_on_nodes

    config, ctx = run.config, run.ctx
    if not ray.is_initialized():
        ray.init()
    run.phase = "placement"
    t = time.monotonic()
    run.pg, run.owns_pg = await resolve_placement_group(ctx, config)
    local = ray.get_runtime_context().get_node_id()
    nodes = placement_nodes(run.pg) if run.pg is not None else []
    if local not in nodes:
        nodes.append(local)  # the engine loads on the replica's own node
    run.timed("placement", t)
    run.phase = "download"
    log.info("downloading on nodes", nodes=nodes, source=config.model_source)
    replica = _Replica(run, local)
    # Bounds every wait on the local node (it enforces its own download bounds too).
    bound = config.download.timeout_s + config.download.lock_timeout_s + 60.0

    async def downloads() -> None:
        start = time.monotonic()
        run.reports = tuple(await run_on_nodes(config, ctx, nodes, local, replica))
        run.timed("download", start)
        run.marks["download_end"] = time.monotonic()

    async def engine() -> None:
        with anyio.fail_after(bound):
            await replica.decided.wait()
        assert replica.decision is not None
        path = replica.decision.path or local_model_path(config)
        if not await _before_engine_init(run, path):
            return
        overlap = await _should_overlap(run, replica, log)
        if not overlap:
            with anyio.fail_after(bound):
                await replica.done.wait()
            await _boot(run, (replica.report.path if replica.report else "") or path, dummy=False)
            return
        boot_dir = await _config_and_tokenizer(run)
        engine = await _boot(run, boot_dir, dummy=True)
        with anyio.fail_after(bound):
            await replica.done.wait()
        assert replica.report is not None
        run.phase = "engine"
        t = time.monotonic()
        run.timings["weights_load"] = await engine.load_weights(replica.report.path)
        run.marks["weights_loaded"] = t

    download_start = time.monotonic()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(downloads)
            tg.start_soon(engine)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    if "boot_end" in run.marks and "boot_start" in run.marks:
        # Seconds the engine boot and the downloads ran at the same time.
        run.timings["overlap"] = max(0.0, min(run.marks["boot_end"], run.marks["download_end"])
                                     - max(run.marks["boot_start"], download_start))
    merged = ctx.custom_data.get("nodes") or {}
    for report in run.reports:
        merged[report.node_id] = report.custom_data
    ctx.custom_data["nodes"] = merged
    mine = next(r for r in run.reports if r.node_id == local)
    return mine.path or local_model_path(config)


async def _should_overlap(run: _Run, replica: _Replica, log: Any) -> bool:
    """Whether to boot on dummy weights while the local node downloads (see ``engine.overlap``)."""
    config, decision = run.config, replica.decision
    assert decision is not None
    setting = config.engine.overlap
    possible = (decision.mode is DownloadMode.MODEL_AND_TOKENIZER and not decision.vetoed
                and not config.streaming and decision.missing_bytes > 0)
    if setting == "off" or not possible:
        run.marks["boot_start"] = time.monotonic()
        return False
    if setting == "on":
        run.marks["boot_start"] = time.monotonic()
        return True
    remote = bool(config.model_source and config.model_source.startswith(("s3://", "s3a://")))
    rate = decision.rate_mb_s or config.download.expected_rate_mb_s
    if remote and rate is None:
        # Nothing measured yet: sample the live rate briefly (a fast link finishes meanwhile).
        with anyio.move_on_after(OVERLAP_PROBE_S):
            await replica.done.wait()
        if replica.done.is_set() or len(replica.samples) < 1:
            rate = None
        else:
            t0, b0 = replica.samples[0]
            t1, b1 = replica.samples[-1]
            rate = (b1 - b0) / 1e6 / (t1 - t0) if t1 > t0 and b1 > b0 else b1 / 1e6 / OVERLAP_PROBE_S
    estimate = decision.missing_bytes / 1e6 / rate if (remote and rate) else 0.0
    overlap = remote and not replica.done.is_set() and estimate > OVERLAP_MIN_S
    log.info("overlap decision", overlap=overlap, missing_bytes=decision.missing_bytes,
             rate_mb_s=round(rate, 1) if rate else None, estimated_s=round(estimate, 2))
    run.marks["boot_start"] = time.monotonic()
    return overlap


async def _config_and_tokenizer(run: _Run) -> str:
    """A directory with the model's config and tokenizer in this process, to boot on dummy weights."""
    config = run.config
    uri = config.model_source or ""
    if not uri.startswith(("s3://", "s3a://")):
        return local_model_path(config)  # a local source has them already
    from ._download import Downloader, cache_root, model_dir_name, select
    from ._sources import open_source

    t = time.monotonic()

    def fetch() -> str:
        source = open_source(uri, config.download.s3, request_timeout_s=config.download.stall_timeout_s)
        dest = cache_root(config.download) / f"{model_dir_name(config.model_id)}--tokenizer"
        files = select(source.list_files(), DownloadMode.TOKENIZER_ONLY)
        return Downloader(source, dest, config.download).run(files).path

    path = await anyio.to_thread.run_sync(fetch)
    run.timed("tokenizer_fetch", t)
    return path


async def _fail(run: _Run, exc: BaseException, log: Any) -> None:
    """Undo what this run started, then publish InitFailed (bounded, shielded from cancellation)."""
    node_id = getattr(exc, "node_id", None)
    # An error from a node task (it names its node) happened in the download phase, whatever
    # the engine task concurrently set run.phase to.
    phase = getattr(exc, "phase", "download" if node_id else run.phase)
    with anyio.CancelScope(shield=True):
        if run.engine is not None:
            with anyio.move_on_after(30):
                await run.engine.shutdown()
        if run.owns_pg and run.pg is not None:
            import ray.util

            ray.util.remove_placement_group(run.pg)
        if not isinstance(exc, Exception):
            return  # cancelled: nobody is waiting for an InitFailed
        info = ErrorInfo(type=type(exc).__name__, message=str(exc), phase=phase, node_id=node_id)
        log.error("node init failed", phase=phase, node_id=node_id, error=str(exc))
        try:
            with anyio.move_on_after(30):
                await run.bus.publish(
                    InitFailed(model_id=run.config.model_id, phase=phase, node_id=node_id, error=info),
                    run.ctx,
                )
        except Exception as handler_exc:  # the original error matters more
            log.error("an InitFailed handler failed", error=describe(handler_exc))
