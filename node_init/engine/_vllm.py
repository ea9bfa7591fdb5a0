"""Boot vLLM (``AsyncLLM``), possibly on dummy weights, and hand it real ones.

vLLM is imported lazily, here only: ``import node_init`` works without it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import structlog

from .._config import NodeInitConfig
from .._errors import EngineError, brief
from ._warm import prepare_vllm

_log = structlog.get_logger("node_init.engine")
#: vLLM imports our worker-side code by this path (``worker_extension_cls``).
WORKER_EXTENSION = "node_init.engine._worker.NodeInitWorkerExtension"


class VLLMEngine:
    """A running vLLM ``AsyncLLM`` and what node init knows about it.

    Attributes:
        llm: The ``vllm.v1.engine.async_llm.AsyncLLM``.
        model_path: Where it loaded (or will load) its weights from.
        on_dummy_weights: Whether it still runs on dummy weights (overlap, before the hand-off).
        load_format: The configured ``load_format`` it takes the real weights with.
    """

    def __init__(self, llm: Any, model_path: str, *, on_dummy_weights: bool, load_format: str) -> None:
        self.llm = llm
        self.model_path = model_path
        self.on_dummy_weights = on_dummy_weights
        self.load_format = load_format
        self._closed = False

    async def load_weights(self, weights_path: str) -> float:
        """Take the real weights in place (``update_config`` + ``reload_weights`` + tied re-pack).

        Returns:
            Seconds it took.

        Raises:
            EngineError: when the reload fails (the engine is then useless: shut it down).
        """
        start = time.monotonic()
        try:
            await self.llm.collective_rpc("update_config", args=({"load_config": {"load_format": self.load_format}},))
            await self.llm.collective_rpc("reload_weights", kwargs={"weights_path": weights_path})
            await self.llm.collective_rpc("node_init_repack_lm_head")
        except Exception as exc:
            raise EngineError(f"loading the weights from {weights_path} failed: {brief(exc)}",
                              cause=brief(exc)) from exc
        self.model_path = weights_path
        self.on_dummy_weights = False
        return time.monotonic() - start

    async def _greedy(self, prompt: str, max_tokens: int) -> Any:
        from vllm import SamplingParams

        final = None
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        async for out in self.llm.generate(prompt, params, request_id=uuid.uuid4().hex):
            final = out
        assert final is not None
        return final.outputs[0]

    async def generate_ids(self, prompt: str, max_tokens: int = 16) -> list[int]:
        """Greedy token ids for ``prompt`` (temperature 0)."""
        return list((await self._greedy(prompt, max_tokens)).token_ids)

    async def complete(self, prompt: str, max_tokens: int = 16) -> str:
        """Greedy completion text for ``prompt``."""
        return str((await self._greedy(prompt, max_tokens)).text)

    async def shutdown(self) -> None:
        """Stop the engine and its EngineCore process. Idempotent."""
        if self._closed:
            return
        self._closed = True
        llm, self.llm = self.llm, None
        await anyio.to_thread.run_sync(llm.shutdown)
        # Dropped here, not at interpreter exit, where vLLM's __del__ would fail noisily.
        del llm


def engine_args(config: NodeInitConfig, model_path: str, kwargs: dict[str, Any], *, dummy: bool) -> dict[str, Any]:
    """vLLM engine arguments: the merged kwargs, our worker extension, dummy weights if asked."""
    args = {"model": model_path, "served_model_name": config.model_id, **kwargs}
    args.setdefault("worker_extension_cls", WORKER_EXTENSION)
    if dummy:
        args["load_format"] = "dummy"
    return args


#: Builds an ``AsyncLLM`` from engine arguments; blocking (runs in a thread).
EngineBuilder = Callable[[dict[str, Any]], Any]


def build_async_llm(args: dict[str, Any]) -> Any:
    """The default :data:`EngineBuilder`: ``AsyncLLM.from_engine_args``."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))


async def boot_engine(config: NodeInitConfig, model_path: str, kwargs: dict[str, Any], *,
                      dummy: bool = False, builder: EngineBuilder | None = None) -> VLLMEngine:
    """Build an ``AsyncLLM`` on ``model_path`` (config + tokenizer suffice when ``dummy``).

    The build blocks (it spawns vLLM's EngineCore), so it runs in a thread. If
    the caller is cancelled meanwhile, the thread is left to finish and shuts
    the engine it built down itself: no engine process outlives a failed init.

    Args:
        builder: How to build the engine from its arguments (Ray Serve passes
            its own, to keep its engine config); default ``AsyncLLM.from_engine_args``.

    Raises:
        EngineError: when vLLM is missing or the engine fails to start.
    """
    try:
        # Importing vLLM takes seconds: node init started it in a thread when it began (this
        # waits for the rest), off the event loop, which keeps serving progress and health checks.
        await prepare_vllm(model_path)
    except ImportError as exc:
        raise EngineError(f"vLLM is not installed ({exc}); install the [cpu] or [gpu] extra",
                          cause=brief(exc)) from exc
    args = engine_args(config, model_path, kwargs, dummy=dummy)
    abandoned = threading.Event()
    make = builder or build_async_llm

    def build() -> list[Any]:
        # Handed over in a list the caller empties: something in vLLM's boot keeps this frame
        # alive, and a local holding the engine would keep it from being collected after
        # shutdown (its __del__ then fails at interpreter exit).
        box = [make(args)]
        if abandoned.is_set():
            box.pop().shutdown()
        return box

    _log.info("engine booting", model_path=model_path, dummy=dummy)
    start = time.monotonic()
    try:
        llm = (await anyio.to_thread.run_sync(build, abandon_on_cancel=True)).pop()
    except BaseException as exc:
        abandoned.set()
        if isinstance(exc, Exception):
            raise EngineError(f"the engine failed to start on {model_path}: {brief(exc)}",
                              cause=brief(exc)) from exc
        raise
    _log.info("engine up", seconds=round(time.monotonic() - start, 3), dummy=dummy)
    return VLLMEngine(llm, model_path, on_dummy_weights=dummy, load_format=str(kwargs.get("load_format", "auto")))
