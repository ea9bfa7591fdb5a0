"""Ray Serve LLM integration, under the import path users' configs name.

``LLMConfig.callback_config = {"callback_class": "node_init.ray_serve:EventBusCallback", ...}`` and
``LLMConfig.server_cls = "node_init.ray_serve:OverlappedLLMServer"``. Two ways in, both configured
through ``callback_config.callback_kwargs`` (any :class:`~node_init.NodeInitConfig` field but ``model_id``):

- :class:`EventBusCallback` alone: Ray keeps control of node init; our ``BeforeInit`` (veto and ctx
  honoured), an observe-only ``BeforeDownload`` on each node and ``AfterInit`` are published.
- :class:`OverlappedLLMServer`: replaces Ray's node init with :func:`~node_init.initialize_node`
  (per-node veto and reports, progress, overlapped engine boot) in the replica's placement group.

Serve integration is a consumer of the flow and sits above it: ``_config`` (the build check and the
mapping of ``callback_kwargs`` onto :class:`~node_init.NodeInitConfig`), ``_callback`` (the callback),
``_server`` (the server class). Importing this package imports ``ray.serve.llm`` (and vLLM).
"""

from ._callback import EventBusCallback as EventBusCallback
from ._config import ServeConfigError as ServeConfigError
from ._config import build_openai_app as build_openai_app
from ._config import node_init_config as node_init_config
from ._config import validate_llm_config as validate_llm_config
from ._server import OverlappedLLMServer as OverlappedLLMServer
from ._server import OverlappedVLLMEngine as OverlappedVLLMEngine

__all__ = ["EventBusCallback", "OverlappedLLMServer", "OverlappedVLLMEngine", "ServeConfigError", "build_openai_app",
           "node_init_config", "validate_llm_config"]
