"""Ray Serve LLM integration, under the import path users' configs name.

``LLMConfig.callback_config = {"callback_class": "node_init.ray_serve:EventBusCallback", ...}`` and
``LLMConfig.server_cls = "node_init.ray_serve:OverlappedLLMServer"``; the code lives in
:mod:`node_init.engine.ray_serve`. Importing this module imports ``ray.serve.llm`` (and vLLM).
"""

from .engine.ray_serve import EventBusCallback as EventBusCallback
from .engine.ray_serve import OverlappedLLMServer as OverlappedLLMServer
from .engine.ray_serve import OverlappedVLLMEngine as OverlappedVLLMEngine
from .engine.ray_serve import ServeConfigError as ServeConfigError
from .engine.ray_serve import build_openai_app as build_openai_app
from .engine.ray_serve import node_init_config as node_init_config
from .engine.ray_serve import validate_llm_config as validate_llm_config

__all__ = ["EventBusCallback", "OverlappedLLMServer", "OverlappedVLLMEngine", "ServeConfigError", "build_openai_app",
           "node_init_config", "validate_llm_config"]
