"""Ray Serve LLM integration, under the import path users' configs name.

``LLMConfig.callback_config = {"callback_class": "node_init.ray_serve:EventBusCallback", ...}`` and
``LLMConfig.server_cls = "node_init.ray_serve:OverlappedLLMServer"``. Two ways in, both configured
through ``callback_config.callback_kwargs`` (any :class:`~node_init.NodeInitConfig` field but ``model_id``):

- :class:`EventBusCallback` alone: Ray keeps control of node init; our ``BeforeInit`` (veto and ctx
  honoured), an observe-only ``BeforeDownload`` on each node and ``AfterInit`` are published.
- :class:`OverlappedLLMServer`: replaces Ray's node init with :func:`~node_init.initialize_node`
  (per-node veto and reports, progress, overlapped engine boot) in the replica's placement group.

Serve integration is a consumer of the flow and sits above it (``_serve_config``, ``_serve_callback``,
``_serve_server``). Importing this module imports ``ray.serve.llm`` (and vLLM).
"""

from ._serve_callback import EventBusCallback as EventBusCallback
from ._serve_config import ServeConfigError as ServeConfigError
from ._serve_config import build_openai_app as build_openai_app
from ._serve_config import node_init_config as node_init_config
from ._serve_config import validate_llm_config as validate_llm_config
from ._serve_server import OverlappedLLMServer as OverlappedLLMServer
from ._serve_server import OverlappedVLLMEngine as OverlappedVLLMEngine

__all__ = ["EventBusCallback", "OverlappedLLMServer", "OverlappedVLLMEngine", "ServeConfigError", "build_openai_app",
           "node_init_config", "validate_llm_config"]
