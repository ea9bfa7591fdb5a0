"""The engine: boot vLLM's ``AsyncLLM``, on dummy weights when the weights are still on their way.

- :func:`boot_engine` builds the engine in a worker thread (vLLM is imported there,
  lazily: ``import node_init`` works without vLLM) and returns a :class:`VLLMEngine`.
- :meth:`VLLMEngine.load_weights` hands an engine booted on dummy weights the real
  ones in place (``update_config`` + ``reload_weights``, then the tied ``lm_head``
  re-pack of :class:`NodeInitWorkerExtension`, run in vLLM's workers).
- :func:`start_import` starts importing vLLM when node init starts (nothing it does waits on a
  hook), and :func:`warm_model_info` fills the model-info cache a fresh node lacks, so the boot
  skips vLLM's inspection subprocess.
- ``node_init.ray_serve`` (above the flow, not here) plugs both into ``ray.serve.llm``.

The vLLM internals used here, and the versions they were tested with, are listed
in ``docs/vllm-internals.md``.
"""

from ._vllm import WORKER_EXTENSION as WORKER_EXTENSION
from ._vllm import EngineBuilder as EngineBuilder
from ._vllm import VLLMEngine as VLLMEngine
from ._vllm import boot_engine as boot_engine
from ._vllm import build_async_llm as build_async_llm
from ._vllm import engine_args as engine_args
from ._warm import import_started as import_started
from ._warm import model_architectures as model_architectures
from ._warm import prepare_vllm as prepare_vllm
from ._warm import start_import as start_import
from ._warm import warm_model_info as warm_model_info
from ._worker import NodeInitWorkerExtension as NodeInitWorkerExtension

__all__ = [
    "WORKER_EXTENSION",
    "EngineBuilder",
    "NodeInitWorkerExtension",
    "VLLMEngine",
    "boot_engine",
    "build_async_llm",
    "engine_args",
    "import_started",
    "model_architectures",
    "prepare_vllm",
    "start_import",
    "warm_model_info",
]
