"""``EventBusCallback``: our typed events on stock ``ray.serve.llm``, where Ray keeps control of node init.

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
from .._logging import configure_logging
from .._modes import DownloadMode
from .._phases import Phase
from .._publish import publish_before_download, publish_failure, publish_phase
from .._wiring import node_bus, wire
from ..download import hub_or_path
from ..engine import prepare_vllm
from ._config import node_init_config

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


class EventBusCallback(CallbackBase):
    """Ray's ``CallbackBase`` publishing our typed events (``callback_class`` of ``LLMConfig.callback_config``).

    Survives Ray's pickling into node tasks: only the import paths, the kwargs
    and Ray's ctx fields travel; each process rebuilds its bus (cached per
    process on the nodes). Handler errors surface as :class:`PhaseError`
    (Ray re-raises them as a bare ``Exception`` with ours as the cause).
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

    async def on_before_node_init(self) -> None:
        """``BeforeInit`` in the replica; a veto sets Ray's ``run_init_node = False``."""
        if self.hooks_done:
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

    def on_before_download_model_files_distributed(self) -> None:
        """``BeforeDownload`` on each node, in that node's process: observe-only on this path."""
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
        """``AfterInit`` with Ray's model path and our timing (before Ray boots the engine).

        First fills vLLM's model-info cache for the downloaded model where a fresh node lacks
        it (:func:`~node_init.engine.warm_model_info`), so Ray's boot skips vLLM's inspection subprocess.
        """
        if self.hooks_done:
            return
        engine_config: Any = self.llm_config.get_engine_config()
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
