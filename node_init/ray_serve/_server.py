"""``OverlappedLLMServer``: Ray Serve LLM's server with its node init replaced by :func:`~node_init.initialize_node`.

A consumer of the flow, above it. This module imports ``ray.serve.llm`` (and so vLLM).
"""

from __future__ import annotations

from typing import Any

from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine as RayVLLMEngine
from ray.serve.llm.deployment import LLMServer

from .._errors import PhaseError
from .._init import InitResult, initialize_node
from .._phases import Phase
from ..engine import VLLMEngine
from ._callback import EventBusCallback
from ._config import node_init_config, validate_llm_config


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
            # Every argument the flow settled (the config's, and what BeforeEngineInit handlers set in
            # ctx.extra_init_kwargs) reaches Ray's engine config; the model and its name are Ray's own.
            self.llm_config.update_engine_kwargs(
                **{k: v for k, v in args.items() if k not in ("model", "served_model_name")})
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
                             phase=Phase.BEFORE_ENGINE_INIT)
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
