"""``EventBusCallback``: our node init on stock ``ray.serve.llm`` (Ray then boots only the engine).

Ray 2.60's order (``VLLMEngine.start``): ``on_before_node_init``, Ray's ``initialize_node`` only if
``ctx.run_init_node``, ``on_after_node_init``, then the engine config and the engine on
``ctx.placement_group``. Our ``on_before_node_init`` runs :func:`~node_init.initialize_node` up to the
engine (``hand_off``) and hands Ray's engine the snapshot as Ray's own ``initialize_node`` would.

This module imports ``ray.serve.llm`` (and so vLLM): import it only where they are installed.
"""

from __future__ import annotations

import os
import time
from typing import Any

import structlog
from ray.llm._internal.common.callbacks.base import CallbackBase
from ray.llm._internal.common.callbacks.base import CallbackCtx as RayCallbackCtx
from ray.llm._internal.common.utils.download_utils import NodeModelDownloadable

from eventbus import EventBus

from .._config import NodeInitConfig
from .._ctx import CallbackCtx
from .._errors import PhaseError
from .._events import AfterInit, BeforeInit
from .._init import InitResult, initialize_node
from .._logging import configure_logging
from .._modes import DownloadMode
from .._phases import Phase
from .._publish import publish_before_download, publish_failure, publish_phase
from .._wiring import node_bus, wire
from ..download import hub_or_path
from ..engine import prepare_vllm
from ._config import NodeInitBy, node_init_by, node_init_config

_log = structlog.get_logger("node_init.ray_serve")


def _our_ctx(config: NodeInitConfig, ray_ctx: RayCallbackCtx, llm_config: Any) -> CallbackCtx:
    ctx = CallbackCtx.for_config(config, llm_config)
    if ray_ctx.worker_node_download_model is not None:
        ctx.worker_node_download_model = ray_ctx.worker_node_download_model  # type: ignore[assignment]
    ctx.placement_group = ray_ctx.placement_group
    ctx.runtime_env = ray_ctx.runtime_env
    ctx.custom_data = {k: v for k, v in ray_ctx.custom_data.items()}
    return ctx


def _to_ray(ctx: CallbackCtx, ray_ctx: RayCallbackCtx) -> None:
    ray_ctx.placement_group = ctx.placement_group
    ray_ctx.runtime_env = ctx.runtime_env
    ray_ctx.worker_node_download_model = NodeModelDownloadable[ctx.worker_node_download_model.name]
    ray_ctx.custom_data.update(ctx.custom_data)


def _rebuild(cls: type[EventBusCallback], llm_config: Any, raise_error: bool, kwargs: dict[str, Any],
             ctx_fields: dict[str, Any]) -> EventBusCallback:
    obj = cls.__new__(cls)
    obj._setup(llm_config, raise_error, kwargs, RayCallbackCtx(**ctx_fields))
    return obj


_MISSING = object()


class EventBusCallback(CallbackBase):
    """Ray's ``CallbackBase`` running our node init (``callback_class`` of ``LLMConfig.callback_config``).

    In ``on_before_node_init`` it runs :func:`~node_init.initialize_node` up to the engine, in the
    placement group Ray made for the replica (a ``BeforeInit`` handler's own wins): a task per node with
    its ``BeforeDownload`` (veto honoured), our downloader for every source, checksums, the shared
    fetch, reports, ``DownloadProgress``, ``BeforeEngineInit``, ``AfterInit``, all within
    ``init_timeout_s``. Then Ray's own download is off (``ctx.run_init_node = False``), Ray's
    ``ctx.placement_group`` is the group used, the engine config's ``hf_model_id`` is our snapshot (as
    Ray's ``initialize_node`` sets it) and the engine arguments handlers settled reach Ray's engine.
    ``callback_kwargs: {node_init: ray}`` keeps Ray's own node init instead (our hooks then observe).

    A failure of our node init fails the replica even under ``raise_error_on_callback=False``: the
    alternative, Ray's own download, would silently drop the settings the user wrote (checksums,
    share, credentials, timeouts). Survives Ray's pickling: only the import paths, the kwargs and
    Ray's ctx fields travel; each process rebuilds its bus. Handler errors surface as
    :class:`PhaseError` (Ray re-raises them as a bare ``Exception`` with ours as the cause).
    """

    def __init__(self, llm_config: Any, raise_error_on_callback: bool = True,
                 ctx_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(llm_config, raise_error_on_callback, ctx_kwargs, **kwargs)
        self._setup(llm_config, raise_error_on_callback, kwargs, self.ctx)
        self.config  # noqa: B018 - a bad setting fails here, at deployment build time

    def _setup(self, llm_config: Any, raise_error: bool, kwargs: dict[str, Any], ctx: RayCallbackCtx) -> None:
        self.llm_config = llm_config
        self.raise_error_on_callback = raise_error
        self.kwargs = kwargs
        self.ctx = ctx
        self._config: NodeInitConfig | None = None
        self._bus: EventBus | None = None
        self._ours: CallbackCtx | None = None
        self._start = 0.0
        #: Set by OverlappedVLLMEngine once our own flow ran the hooks: Ray's calls become no-ops.
        self.hooks_done = False
        #: What our node init produced in this process (``node_init: ours``); it holds the snapshot
        #: the engine reads. Never pickled.
        self.result: InitResult | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        ray_ctx = {
            "worker_node_download_model": self.ctx.worker_node_download_model,
            "placement_group": self.ctx.placement_group,
            "runtime_env": self.ctx.runtime_env,
            "custom_data": dict(self.ctx.custom_data),
            "run_init_node": self.ctx.run_init_node,
        }
        return (_rebuild, (type(self), self.llm_config, self.raise_error_on_callback, self.kwargs, ray_ctx))

    @property
    def config(self) -> NodeInitConfig:
        """Our config (built lazily: after unpickling, ``llm_config`` is complete only at first use)."""
        if self._config is None:
            self._config = node_init_config(self.llm_config, self.kwargs)
        return self._config

    @property
    def bus(self) -> EventBus:
        """This process's bus for the configured import paths."""
        if self._bus is None:
            self._bus = wire(self.config)
        return self._bus

    @property
    def node_init_by(self) -> NodeInitBy:
        """``ours`` (default) or ``ray``: who runs node init (``callback_kwargs.node_init``)."""
        return node_init_by(self.kwargs)

    async def on_before_node_init(self) -> None:
        """Our node init, up to the engine Ray boots next (``node_init: ray``: ``BeforeInit`` only, a
        veto setting Ray's ``run_init_node = False``)."""
        if self.hooks_done:
            return
        if self.node_init_by == "ours":
            await self._node_init()
            return
        self._start = time.monotonic()
        ctx = self._ours = _our_ctx(self.config, self.ctx, self.llm_config)
        source = self.config.model_source or ""
        if source and hub_or_path(source).startswith("hf://"):  # the Hub's id grammar, as the flow reads it
            _log.info("the model is a Hugging Face Hub id: on stock ray.serve.llm Ray keeps control and vLLM "
                      "downloads it while the engine boots, unverified (OverlappedLLMServer downloads it first)",
                      source=source)
        outcome = await self._publish(BeforeInit(model_id=self.config.model_id), ctx, Phase.BEFORE_INIT)
        _to_ray(ctx, self.ctx)
        self._engine_kwargs(ctx)
        if outcome.vetoed:
            self.ctx.run_init_node = False

    async def _node_init(self) -> None:
        """Run our flow up to the engine and hand Ray's engine its result."""
        # Ray's own download never runs, whatever happens below: a failure fails the replica.
        self.ctx.run_init_node = False
        config = self.config
        ctx = CallbackCtx.for_config(config, self.llm_config)
        # Ray made the replica's group from placement_group_config (or found the replica's own): ours too.
        ctx.placement_group = self.ctx.placement_group
        ctx.runtime_env = self.ctx.runtime_env
        ctx.custom_data = dict(self.ctx.custom_data)
        self._ours = ctx
        # The flow wires its own bus from the same settings (``self.bus`` serves ``node_init: ray``).
        result = self.result = await initialize_node(config, ray_llm_config=self.llm_config, ctx=ctx, hand_off=True)
        self.hooks_done = True  # ran: Ray's later hooks (and a second start) do not run ours again
        self._hand_to_ray(config, result)

    def _hand_to_ray(self, config: NodeInitConfig, result: InitResult) -> None:
        """Point Ray's engine at what our node init produced, as Ray's own ``initialize_node`` does."""
        ctx = result.ctx
        self.ctx.placement_group = result.placement_group or ctx.placement_group or self.ctx.placement_group
        self.ctx.runtime_env = ctx.runtime_env
        # Ray's one mode stands for every node; ours were per node (the workers' is the closest reading).
        self.ctx.worker_node_download_model = NodeModelDownloadable[ctx.worker_node_download_model.name]
        self.ctx.custom_data.update(ctx.custom_data)
        engine_config: Any = self.llm_config.get_engine_config()
        if result.reports and not config.streaming and result.model_path:
            # Streaming formats keep Ray's hf_model_id and mirror: vLLM reads the bucket URI itself.
            engine_config.hf_model_id = result.model_path
        current = self.llm_config.engine_kwargs
        changed = {k: v for k, v in result.engine_kwargs.items()
                   if k not in ("model", "served_model_name") and current.get(k, _MISSING) != v}
        if changed:
            self.llm_config.update_engine_kwargs(**changed)
        _log.info("node init handed to Ray's engine", model_path=str(engine_config.actual_hf_model_id),
                  engine_kwargs=sorted(changed), nodes=len(result.reports))

    def _handle_callback_error(self, method_name: str, e: Exception) -> None:
        """Ray's handling, except that our node init's failure always fails the replica: with
        ``raise_error_on_callback=False`` Ray would log it and boot on its own download instead."""
        if (not self.raise_error_on_callback and method_name == "on_before_node_init"
                and self.node_init_by == "ours"):
            _log.error("node init failed: the replica fails (raise_error_on_callback=False does not turn "
                       "it into Ray's own download; callback_kwargs node_init: ray would)", error=str(e))
            raise e
        super()._handle_callback_error(method_name, e)

    def on_before_download_model_files_distributed(self) -> None:
        """``BeforeDownload`` on each node, in that node's process: observe-only on this path
        (``node_init: ray`` only: with ours, Ray's download never runs)."""
        if self.hooks_done:
            return
        import ray

        configure_logging()
        node_id = ray.get_runtime_context().get_node_id()
        ctx = _our_ctx(self.config, self.ctx, self.llm_config)
        outcome = publish_before_download(node_bus(self.config, node_id), ctx, model_id=self.config.model_id,
                                          node_id=node_id, mode=ctx.worker_node_download_model)
        if outcome.vetoed or ctx.worker_node_download_model is not DownloadMode(
                self.ctx.worker_node_download_model.name if self.ctx.worker_node_download_model else "NONE"):
            _log.warning("BeforeDownload is observe-only on stock ray.serve.llm: Ray has bound the mode; "
                         "use OverlappedLLMServer for per-node vetoes", node_id=node_id)

    async def on_after_node_init(self) -> None:
        """``node_init: ray``: ``AfterInit`` with Ray's model path and our timing (before Ray boots the
        engine); with ours, the flow published it already.

        Both first fill vLLM's model-info cache for the downloaded model where a fresh node lacks
        it (:func:`~node_init.engine.warm_model_info`), so Ray's boot skips vLLM's inspection subprocess.
        """
        engine_config: Any = self.llm_config.get_engine_config()
        if self.result is not None:  # our node init ran (and published AfterInit): warm vLLM's cache only
            await _warm(str(engine_config.actual_hf_model_id))
            return
        if self.hooks_done:
            return
        await _warm(str(engine_config.actual_hf_model_id))
        ctx = self._ours or _our_ctx(self.config, self.ctx, self.llm_config)
        event = AfterInit(model_id=self.config.model_id, model_path=str(engine_config.actual_hf_model_id),
                          timings={"node_init": time.monotonic() - self._start if self._start else 0.0})
        await self._publish(event, ctx, Phase.AFTER_INIT)
        _to_ray(ctx, self.ctx)
        self._engine_kwargs(ctx)

    def _engine_kwargs(self, ctx: CallbackCtx) -> None:
        """Engine arguments a handler set in ``ctx.extra_init_kwargs`` (in ``BeforeInit`` or ``AfterInit``:
        on this path there is no ``BeforeEngineInit``) reach Ray's engine config, which Ray reads after
        both hooks."""
        if ctx.extra_init_kwargs:
            self.llm_config.update_engine_kwargs(**ctx.extra_init_kwargs)

    async def _publish(self, event: Any, ctx: CallbackCtx, phase: str) -> Any:
        """Publish in the replica; a handler's failure publishes ``InitFailed``, then raises."""
        try:
            return await publish_phase(self.bus, event, ctx, phase=phase)
        except PhaseError as exc:
            await publish_failure(self.bus, ctx, exc.__cause__ or exc, model_id=self.config.model_id,
                                  phase=phase, log=_log)
            raise


async def _warm(model: str) -> None:
    """vLLM's model-info cache for Ray's downloaded copy of ``model`` (nothing when it is not on disk)."""
    from ray.llm._internal.common.utils.download_utils import get_model_location_on_disk

    path = get_model_location_on_disk(model)
    if os.path.isfile(os.path.join(path, "config.json")):
        await prepare_vllm(path)
