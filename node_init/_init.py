"""``initialize_node``: the node-init coroutine a replica awaits before it serves."""

from __future__ import annotations

import time
from typing import Any

import anyio
import attrs
import structlog

from eventbus import EventBus, HandlerError

from ._config import NodeInitConfig
from ._ctx import CallbackCtx
from ._errors import NodeInitError, PhaseError, describe
from ._events import (
    AfterInit,
    BeforeEngineInit,
    BeforeInit,
    DownloadProgress,
    ErrorInfo,
    InitFailed,
    NodeReport,
)
from ._node import local_model_path
from ._wiring import wire

_log = structlog.get_logger("node_init")


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
        placement_group: The placement group used, if any.
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

    def __init__(self, config: NodeInitConfig, bus: EventBus, ctx: CallbackCtx) -> None:
        self.config = config
        self.bus = bus
        self.ctx = ctx
        self.phase = "before_init"
        self.timings: dict[str, float] = {}
        self.pg: Any = None
        self.owns_pg = False
        self.engine: Any = None
        self.reports: tuple[NodeReport, ...] = ()

    async def publish(self, event: Any) -> Any:
        try:
            return await self.bus.publish(event, self.ctx)
        except HandlerError as exc:
            raise PhaseError(str(exc), phase=self.phase, cause=describe(exc)) from exc

    def timed(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.timings[name] = now - since
        return now


async def initialize_node(
    config: NodeInitConfig,
    *,
    bus: EventBus | None = None,
    ray_llm_config: Any = None,
) -> InitResult:
    """Initialize this replica's node(s): hooks, placement group, downloads, engine.

    The config's callback and handlers are added to ``bus`` (a new one if
    ``None``), after any the caller subscribed. Runs on asyncio (Ray's
    awaitables need it).

    Args:
        config: What to initialize.
        bus: A bus to publish on; subscribe your own handlers to it first.
        ray_llm_config: Ray's ``LLMConfig`` on the Serve paths (``ctx.ray_llm_config``).

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
    run = _Run(config, bus, ctx)
    log = _log.bind(model_id=config.model_id)
    start = time.monotonic()
    try:
        return await _flow(run, start, log)
    except BaseException as exc:
        await _fail(run, exc, log)
        if isinstance(exc, NodeInitError) or not isinstance(exc, Exception):
            raise
        raise PhaseError(describe(exc), phase=run.phase, cause=describe(exc)) from exc


async def _flow(run: _Run, start: float, log: Any) -> InitResult:
    config, ctx = run.config, run.ctx
    t = time.monotonic()
    outcome = await run.publish(BeforeInit(model_id=config.model_id))
    t = run.timed("before_init", t)
    model_path = local_model_path(config)
    if outcome.vetoed:
        log.info("node init vetoed: no placement group, no downloads", vetoed_by=list(outcome.vetoed_by))
    elif config.model_source:
        model_path = await _placement_and_downloads(run, log)
        t = time.monotonic()
    run.phase = "before_engine_init"
    engine_kwargs = {**config.engine.kwargs, **ctx.extra_init_kwargs}
    outcome = await run.publish(
        BeforeEngineInit(model_id=config.model_id, model_path=model_path, engine_kwargs=engine_kwargs)
    )
    t = run.timed("before_engine_init", t)
    if config.engine.kind != "none" and not outcome.vetoed:
        run.phase = "engine"
        from ._engine import boot_engine

        with anyio.fail_after(config.engine.boot_timeout_s):
            run.engine = await boot_engine(config, model_path, {**config.engine.kwargs, **ctx.extra_init_kwargs})
        t = run.timed("engine_boot", t)
    run.phase = "after_init"
    run.timings["total"] = time.monotonic() - start
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
    return InitResult(model_path=model_path, reports=run.reports, timings=run.timings, engine=run.engine,
                      ctx=ctx, placement_group=run.pg, owns_placement_group=run.owns_pg)


async def _placement_and_downloads(run: _Run, log: Any) -> str:
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
    t = run.timed("placement", t)
    run.phase = "download"
    log.info("downloading on nodes", nodes=nodes, source=config.model_source)

    async def on_progress(node_id: str, done: int, total: int) -> None:
        await run.publish(DownloadProgress(node_id=node_id, bytes_done=done, bytes_total=total))

    reports = await run_on_nodes(config, ctx, nodes, local, on_progress)
    run.timed("download", t)
    run.reports = tuple(reports)
    merged = ctx.custom_data.get("nodes") or {}
    for report in reports:
        merged[report.node_id] = report.custom_data
    ctx.custom_data["nodes"] = merged
    mine = next(r for r in reports if r.node_id == local)
    return mine.path or local_model_path(config)


async def _fail(run: _Run, exc: BaseException, log: Any) -> None:
    """Undo what this run started, then publish InitFailed (bounded, shielded from cancellation)."""
    node_id = getattr(exc, "node_id", None)
    phase = getattr(exc, "phase", run.phase)
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
