"""Get vLLM ready before the engine boots: import it early, and fill the model-info cache a fresh node lacks.

Neither needs the weights nor a handler's decision, so node init starts the import with the init
itself, concurrently with the placement group, the node tasks and the hooks (:func:`start_import`),
and the boot only waits for what is left of it.

On a node that never ran this model class, vLLM inspects the class in a fresh Python subprocess
(``vllm.model_executor.models.registry._run_in_subprocess``: it imports vLLM and torch all over
again, ~15 s here) and caches the answer under ``$VLLM_CACHE_ROOT/modelinfos``. That subprocess exists
to keep CUDA uninitialized in the engine's parent process. Where there is no CUDA to initialize (the
CPU platform), :func:`warm_model_info` computes the same answer in this process, where vLLM is already
imported, and writes it with vLLM's own cache writer, so vLLM finds it and skips the subprocess. On
other platforms it runs vLLM's own inspection, early. The engine that serves is unchanged: same
process layout, same executor, same model class.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import importlib.util
import json
import threading
import time
from pathlib import Path

import structlog

_log = structlog.get_logger("node_init.engine")

#: What ``AsyncLLM.from_engine_args`` imports in this process before it starts the EngineCore.
_MODULES = ("vllm", "vllm.engine.arg_utils", "vllm.v1.engine.async_llm", "vllm.model_executor.models.registry")

_lock = threading.Lock()
_import: concurrent.futures.Future[float] | None = None


def _import_vllm() -> float:
    start = time.monotonic()
    for name in _MODULES:
        importlib.import_module(name)
    return time.monotonic() - start


def start_import() -> concurrent.futures.Future[float]:
    """Start importing vLLM in a background thread, once per process; later calls share it.

    Returns:
        A future of the seconds the import took; it raises what the import raised
        (``ImportError`` when vLLM is not installed).
    """
    global _import
    with _lock:
        if _import is None or (_import.done() and _import.exception() is not None):
            future: concurrent.futures.Future[float] = concurrent.futures.Future()

            def run() -> None:
                try:
                    future.set_result(_import_vllm())
                except BaseException as exc:  # handed to whoever waits on the future
                    future.set_exception(exc)

            # A daemon thread: an import cannot be cancelled, and it must not hold up the exit.
            threading.Thread(target=run, name="node-init-import-vllm", daemon=True).start()
            _import = future
        return _import


def model_architectures(model_path: str) -> list[str]:
    """The model classes vLLM may resolve for the model at ``model_path`` (from its ``config.json``).

    ``architectures`` when the config names them; otherwise the classes ``transformers`` maps
    the ``model_type`` to (vLLM falls back the same way).
    """
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return []
    archs = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    if archs or not isinstance(config.get("model_type"), str):
        return archs
    from transformers.models.auto import modeling_auto

    found: list[str] = []
    for mapping in (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, modeling_auto.MODEL_MAPPING_NAMES):
        name = mapping.get(config["model_type"])
        if isinstance(name, str) and name not in found:
            found.append(name)
    return found


def warm_model_info(model_path: str) -> list[str]:
    """Fill vLLM's model-info cache for the model at ``model_path``; blocking (run it in a thread).

    Best effort: a class vLLM cannot inspect here is left for vLLM to inspect (and report) itself.

    Returns:
        The registry entries it inspected (empty when the cache was already warm).
    """
    from vllm.model_executor.models.registry import ModelRegistry, _LazyRegisteredModel, _ModelInfo
    from vllm.platforms import current_platform

    in_process = current_platform.is_cpu()  # no CUDA to keep uninitialized in this process
    done: list[str] = []
    for arch in model_architectures(model_path):
        entry = ModelRegistry.models.get(arch)
        if not isinstance(entry, _LazyRegisteredModel):
            continue  # unknown to vLLM, or already imported: nothing to inspect
        key = f"{entry.module_name}.{entry.class_name}"
        if key in done:
            continue
        module = importlib.util.find_spec(entry.module_name)
        if module is None or not module.origin:
            continue
        digest = entry._get_modelinfo_module_hash(Path(module.origin))
        if entry._load_modelinfo_from_cache(digest) is not None:
            continue
        start = time.monotonic()
        if in_process:
            entry._save_modelinfo_to_cache(_ModelInfo.from_model_cls(entry.load_model_cls()), digest)
        else:
            entry.inspect_model_cls()  # vLLM's own subprocess; it writes the cache itself
        done.append(key)
        _log.info("model info cached", model_class=key, in_process=in_process,
                  seconds=round(time.monotonic() - start, 3))
    return done


def import_started() -> bool:
    """Whether this process has started importing vLLM (:func:`start_import`)."""
    return _import is not None


async def prepare_vllm(model_path: str) -> None:
    """Wait for the import (starting it if nobody did), then warm the model-info cache for ``model_path``.

    Raises:
        ImportError: vLLM is not installed.
    """
    import anyio.to_thread

    future = start_import()
    seconds = await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)
    _log.debug("vllm imported", seconds=round(seconds, 3))

    def warm() -> None:
        try:
            warm_model_info(model_path)
        except Exception as exc:  # only an optimization: vLLM inspects the class itself and reports
            _log.warning("could not pre-inspect the model class; vLLM will", error=f"{type(exc).__name__}: {exc}")

    await anyio.to_thread.run_sync(warm, abandon_on_cancel=True)

