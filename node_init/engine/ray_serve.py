"""Ray Serve LLM integration: our events on stock ``ray.serve.llm``, or our full flow in its replicas.

Two ways in, both configured through ``LLMConfig.callback_config``, whose
``callback_kwargs`` hold our settings (any :class:`~node_init.NodeInitConfig`
field but ``model_id``, which comes from the ``LLMConfig``)::

    LLMConfig(
        model_loading_config={"model_id": "tiny", "model_source": "s3://models/tiny"},
        callback_config={
            "callback_class": "node_init.ray_serve:EventBusCallback",
            "callback_kwargs": {"handlers": ["my_pkg.hooks:handlers"]},
        },
        server_cls="node_init.ray_serve:OverlappedLLMServer",  # optional: our full flow
    )

- :class:`EventBusCallback` alone: Ray keeps control of node init; our
  ``BeforeInit`` (veto and ctx honoured), an observe-only ``BeforeDownload`` on
  each node and ``AfterInit`` are published (see the README's stock-path table).
- :class:`OverlappedLLMServer`: replaces Ray's node init with
  :func:`~node_init.initialize_node` (per-node veto and reports, progress,
  overlapped engine boot), using the replica's placement group; each hook fires once.

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
from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine as RayVLLMEngine
from ray.serve.exceptions import RayServeException
from ray.serve.llm.deployment import LLMServer

from eventbus import EventBus

from .._config import NodeInitConfig, parse_config
from .._ctx import CallbackCtx
from .._errors import CallbackLoadError, ConfigError, PhaseError
from .._events import AfterInit, BeforeDownload, BeforeInit
from .._init import InitResult, initialize_node
from .._loader import load_callback_class, load_handler_set
from .._logging import configure_logging
from .._modes import DownloadMode
from .._publish import publish_failure, publish_phase, publish_phase_sync
from .._wiring import node_bus, wire
from ._vllm import VLLMEngine
from ._warm import prepare_vllm

_log = structlog.get_logger("node_init.ray_serve")


def node_init_config(llm_config: Any, kwargs: dict[str, Any]) -> NodeInitConfig:
    """Our config from a Ray ``LLMConfig`` and the ``callback_kwargs`` that carry our settings.

    Raises:
        ConfigError: naming the field of ``callback_kwargs`` that is wrong.
    """
    data: dict[str, Any] = {"placement": None, **kwargs, "model_id": llm_config.model_id}
    source = llm_config.model_loading_config.model_source
    if isinstance(source, str) and "model_source" not in kwargs:
        data["model_source"] = source
    engine = dict(data.get("engine") or {})
    engine.setdefault("kind", "vllm")
    engine["kwargs"] = {**dict(llm_config.engine_kwargs), **dict(engine.get("kwargs") or {})}
    data["engine"] = engine
    return parse_config(data, file="LLMConfig.callback_config.callback_kwargs")


_HOOKS = ("on_before_init", "on_before_download", "on_after_init")
_FILE = "LLMConfig.callback_config.callback_kwargs"


class ServeConfigError(ConfigError, RayServeException):
    """A :class:`~node_init.ConfigError` found where Serve builds the application.

    Also a ``RayServeException``: Serve then fails the build at once (``DEPLOY_FAILED`` with
    this message), where any other exception is retried three times in fresh workers first.
    """


def validate_llm_config(llm_config: Any) -> NodeInitConfig | None:
    """Check our settings in an ``LLMConfig`` where the application is built, before any replica.

    Returns our config, or ``None`` when the ``LLMConfig`` does not use our callback. An import
    path that does not import here is an error unless the runtime env of this process (the
    application's) ships a ``working_dir`` or ``py_modules`` it may come from: then it is checked
    where it lands, as before.

    Raises:
        ServeConfigError: naming the field of ``callback_kwargs`` (or ``callback``) that is wrong.
    """
    try:
        return _validate(llm_config)
    except ConfigError as exc:
        raise ServeConfigError(exc.reason, file=exc.file, field=exc.field) from None


def _validate(llm_config: Any) -> NodeInitConfig | None:
    callback_class = llm_config.callback_config.callback_class
    name = callback_class if isinstance(callback_class, str) else getattr(callback_class, "__qualname__", "")
    if not (isinstance(callback_class, type) and issubclass(callback_class, EventBusCallback)) and \
            not str(name).endswith("EventBusCallback"):
        return None
    config = node_init_config(llm_config, dict(llm_config.callback_config.callback_kwargs))
    shipped = _runtime_env_ships_code()
    paths = [("callback", config.callback)] + [(f"handlers[{i}]", p) for i, p in enumerate(config.handlers)]
    for field, path in paths:
        if path is None:
            continue
        try:
            obj = (load_callback_class(path, config.callback_kwargs) if field == "callback"
                   else load_handler_set(path))
        except CallbackLoadError as exc:
            if shipped and isinstance(exc.__cause__, ModuleNotFoundError):
                _log.info("import path not importable here; checked where the runtime_env lands", path=path)
                continue
            raise ConfigError(str(exc), file=_FILE, field=field) from None
        if field == "callback" and not any(callable(getattr(obj, hook, None)) for hook in _HOOKS):
            raise ConfigError(f"{path} implements none of {', '.join(_HOOKS)} (Ray's own hooks such as "
                              "on_before_node_init are not ours): it would never be called", file=_FILE,
                              field="callback")
    return config


def _runtime_env_ships_code() -> bool:
    import ray

    if not ray.is_initialized():
        return False
    env = ray.get_runtime_context().runtime_env or {}
    return bool(env.get("working_dir") or env.get("py_modules"))


def build_openai_app(builder_config: dict[str, Any]) -> Any:
    """Ray's ``build_openai_app``, with our settings checked first (a mistake fails the build).

    Name it as the application's ``import_path`` (``node_init.ray_serve:build_openai_app``): a wrong
    field, value or import path then fails when Serve builds the application (``DEPLOY_FAILED``,
    the field named), not three replica starts later.
    """
    from ray.llm._internal.serve.core.ingress.builder import LLMServingArgs
    from ray.serve.llm import build_openai_app as ray_build_openai_app

    for llm_config in LLMServingArgs.model_validate(builder_config).llm_configs:
        validate_llm_config(llm_config)
    return ray_build_openai_app(builder_config)


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
        outcome = await self._publish(BeforeInit(model_id=self.config.model_id), ctx, "before_init")
        _to_ray(ctx, self.ctx)
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
        event = BeforeDownload(model_id=self.config.model_id, node_id=node_id,
                               mode=ctx.worker_node_download_model)
        outcome = publish_phase_sync(node_bus(self.config, node_id), event, ctx, phase="before_download",
                                     node_id=node_id)
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
        await self._publish(event, ctx, "after_init")
        _to_ray(ctx, self.ctx)

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


class OverlappedVLLMEngine(RayVLLMEngine):  # type: ignore[misc]
    """Ray's vLLM engine with its node init replaced by :func:`~node_init.initialize_node`.

    The engine boots through Ray's own engine config (so serving behaves as
    stock), overlapped with the downloads when the config allows it.
    """

    node_init_result: InitResult | None = None

    async def start(self) -> None:
        if self._running:
            return
        callback: Any = self.llm_config.get_or_create_callback()
        kwargs = dict(self.llm_config.callback_config.callback_kwargs)
        config = node_init_config(self.llm_config, kwargs)
        self._prepared: Any = None
        self._client: Any = None
        ray_ctx = callback.ctx

        def build(args: dict[str, Any]) -> Any:
            engine_config: Any = self.llm_config.get_engine_config()
            engine_config.hf_model_id = args["model"]
            self.llm_config.update_engine_kwargs(
                **{k: args[k] for k in ("load_format", "worker_extension_cls") if k in args})
            self._prepared = RayVLLMEngine._prepare_engine_config(self, ray_ctx)
            vllm_args, _, vllm_config = self._prepared
            self._client = RayVLLMEngine._start_async_llm_engine(self, vllm_args, vllm_config,
                                                                ray_ctx.placement_group)
            return self._client

        # Our flow wires its own bus from the same settings; the callback's hooks then become
        # no-ops, so each hook fires once.
        result = await initialize_node(config, ray_llm_config=self.llm_config, engine_builder=build)
        self.node_init_result = result
        if isinstance(callback, EventBusCallback):
            callback.hooks_done = True
        ray_ctx.run_init_node = False  # Ray's own node init is replaced by ours
        if result.engine is None:
            raise PhaseError("BeforeEngineInit was vetoed: a Serve replica cannot serve without an engine",
                             phase="before_engine_init")
        load_format = config.engine.kwargs.get("load_format")
        if load_format is not None or isinstance(result.engine, VLLMEngine):
            self.llm_config.update_engine_kwargs(load_format=load_format or "auto")
        await super().start()

    def _prepare_engine_config(self, callback_ctx: Any) -> Any:
        return self._prepared if getattr(self, "_prepared", None) else super()._prepare_engine_config(callback_ctx)

    def _start_async_llm_engine(self, *args: Any, **kwargs: Any) -> Any:
        return self._client if getattr(self, "_client", None) else super()._start_async_llm_engine(*args, **kwargs)


class OverlappedLLMServer(LLMServer):  # type: ignore[misc]
    """``LLMServer`` whose engine is :class:`OverlappedVLLMEngine` (select it with ``LLMConfig.server_cls``).

    Ray asks it for its deployment options when the application is built: our settings are
    checked there (:func:`validate_llm_config`), so a mistake fails the build, not the replicas.
    """

    _default_engine_cls = OverlappedVLLMEngine  # type: ignore[assignment]

    @classmethod
    def get_deployment_options(cls, llm_config: Any) -> Any:  # type: ignore[override]
        validate_llm_config(llm_config)
        return super().get_deployment_options(llm_config)


__all__ = ["EventBusCallback", "OverlappedLLMServer", "OverlappedVLLMEngine", "build_openai_app", "node_init_config",
           "validate_llm_config"]
