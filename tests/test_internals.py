"""The Ray and Ray Serve LLM internals listed in docs/vllm-internals.md are where we reach for them.

A version bump that moves one fails here, naming it, before a user meets it in a replica.
"""

from __future__ import annotations

import importlib

import pytest

RAY_CORE = [
    ("ray.experimental.internal_kv", "_internal_kv_put"),
    ("ray.experimental.internal_kv", "_internal_kv_get"),
    ("ray.experimental.internal_kv", "_internal_kv_exists"),
    ("ray.experimental.internal_kv", "_internal_kv_del"),
    ("ray.experimental.internal_kv", "_internal_kv_list"),
    ("ray.cloudpickle", "register_pickle_by_value"),
    ("ray.util.scheduling_strategies", "NodeAffinitySchedulingStrategy"),
]
RAY_SERVE_LLM = [
    ("ray.llm._internal.common.callbacks.base", "CallbackBase"),
    ("ray.llm._internal.common.callbacks.base", "CallbackCtx"),
    ("ray.llm._internal.common.utils.download_utils", "NodeModelDownloadable"),
    ("ray.llm._internal.common.utils.download_utils", "get_model_location_on_disk"),
    ("ray.llm._internal.serve.engines.vllm.vllm_engine", "VLLMEngine"),
    ("ray.llm._internal.serve.core.ingress.builder", "LLMServingArgs"),
    ("ray.serve.llm.deployment", "LLMServer"),
]


@pytest.mark.parametrize(("module", "name"), RAY_CORE, ids=[f"{m}.{n}" for m, n in RAY_CORE])
def test_a_ray_core_internal_we_use_is_there(module: str, name: str) -> None:
    assert hasattr(importlib.import_module(module), name), f"{module}.{name} moved: see docs/vllm-internals.md"


@pytest.mark.parametrize(("module", "name"), RAY_SERVE_LLM, ids=[f"{m}.{n}" for m, n in RAY_SERVE_LLM])
def test_a_ray_serve_llm_internal_we_use_is_there(module: str, name: str) -> None:
    pytest.importorskip("ray.serve.llm")
    assert hasattr(importlib.import_module(module), name), f"{module}.{name} moved: see docs/vllm-internals.md"


def test_ray_engine_hooks_we_override_exist() -> None:
    pytest.importorskip("ray.serve.llm")
    from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine
    from ray.serve.llm.deployment import LLMServer

    for method in ("_prepare_engine_config", "_start_async_llm_engine", "start"):
        assert callable(getattr(VLLMEngine, method, None)), f"Ray's VLLMEngine.{method} moved"
    assert hasattr(LLMServer, "_default_engine_cls"), "LLMServer._default_engine_cls moved"


@pytest.mark.ray
def test_the_head_node_resource_we_pin_the_hub_with_exists(ray_cluster: object) -> None:
    import ray

    assert any(r == "node:__internal_head__" for r in ray.cluster_resources()), \
        "node:__internal_head__ is gone: the exchange hub cannot be pinned to the head node"
