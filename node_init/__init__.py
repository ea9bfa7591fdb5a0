"""Typed node initialization for Ray Serve LLM, on the ``eventbus``.

Layering: ``eventbus`` (generic bus) <- ``node_init`` (this package) <-
``handlers`` (ready-made subscribers, loaded by import path; this package never
imports them). Inside ``node_init``, the flow reads top to bottom:

- here, at the top: the events, :class:`CallbackCtx`, the config, the errors, the
  class-style callbacks and :func:`wire` (a bus from a config's import paths), and
  :func:`initialize_node`, the flow itself (with its overlap policy);
- ``node_init.download``: sources and the downloader that fills a node's cache (no Ray);
- ``node_init.cluster``: the placement group and the Ray task on each of its nodes;
- ``node_init.engine``: vLLM's boot and the weight hand-off;
- ``node_init.ray_serve`` (imported on demand): plugs the flow into ``ray.serve.llm``. No
  subpackage imports the flow; only it and the CLI, above the flow, do.

Start with :func:`initialize_node` and :func:`load_config`; subscribe to the
events (:data:`EVENTS`, each declared once with its phase, where it is published and
its class-style hook: ``BeforeInit``, ``BeforeDownload``, ``DownloadProgress``,
``BeforeEngineInit``, ``AfterInit``, ``InitFailed``) with an ``eventbus.HandlerSet``
or write a class-style :class:`RayServeLLMCallback`. Every wait of an init is
derived in one place from its config (:class:`Bounds`). ``node_init.ray_serve``
(imported on demand, a consumer of the flow above it) plugs into ``ray.serve.llm``.
"""

from ._bounds import Bounds as Bounds
from ._callback import RayServeLLMCallback as RayServeLLMCallback
from ._callback import get_or_create_callback as get_or_create_callback
from ._config import AzureConfig as AzureConfig
from ._config import DownloadConfig as DownloadConfig
from ._config import EngineConfig as EngineConfig
from ._config import ExtraFiles as ExtraFiles
from ._config import GCSConfig as GCSConfig
from ._config import HFConfig as HFConfig
from ._config import MirrorConfig as MirrorConfig
from ._config import NodeInitConfig as NodeInitConfig
from ._config import PlacementConfig as PlacementConfig
from ._config import S3Config as S3Config
from ._config import Secret as Secret
from ._config import load_config as load_config
from ._config import parse_config as parse_config
from ._config import reveal as reveal
from ._ctx import CallbackCtx as CallbackCtx
from ._errors import CallbackLoadError as CallbackLoadError
from ._errors import ConfigError as ConfigError
from ._errors import DownloadError as DownloadError
from ._errors import EngineError as EngineError
from ._errors import NodeInitError as NodeInitError
from ._errors import PhaseError as PhaseError
from ._events import EVENTS as EVENTS
from ._events import AfterInit as AfterInit
from ._events import BeforeDownload as BeforeDownload
from ._events import BeforeEngineInit as BeforeEngineInit
from ._events import BeforeInit as BeforeInit
from ._events import DownloadProgress as DownloadProgress
from ._events import ErrorInfo as ErrorInfo
from ._events import EventSpec as EventSpec
from ._events import InitFailed as InitFailed
from ._events import NodeDecided as NodeDecided
from ._events import NodeReport as NodeReport
from ._events import registered as registered
from ._init import InitResult as InitResult
from ._init import initialize_node as initialize_node
from ._init import pin_model_source as pin_model_source
from ._loader import load_handler_set as load_handler_set
from ._loader import load_object as load_object
from ._logging import configure_logging as configure_logging
from ._modes import DownloadMode as DownloadMode
from ._phases import Phase as Phase
from ._wiring import wire as wire

__all__ = [
    "EVENTS",
    "AfterInit",
    "BeforeDownload",
    "BeforeEngineInit",
    "BeforeInit",
    "Bounds",
    "CallbackCtx",
    "CallbackLoadError",
    "ConfigError",
    "DownloadConfig",
    "DownloadError",
    "DownloadMode",
    "DownloadProgress",
    "EngineConfig",
    "EngineError",
    "ErrorInfo",
    "ExtraFiles",
    "AzureConfig",
    "GCSConfig",
    "HFConfig",
    "EventSpec",
    "InitFailed",
    "InitResult",
    "MirrorConfig",
    "NodeInitConfig",
    "NodeDecided",
    "NodeInitError",
    "NodeReport",
    "Phase",
    "PhaseError",
    "PlacementConfig",
    "RayServeLLMCallback",
    "S3Config",
    "Secret",
    "configure_logging",
    "get_or_create_callback",
    "initialize_node",
    "pin_model_source",
    "load_config",
    "load_handler_set",
    "load_object",
    "parse_config",
    "registered",
    "reveal",
    "wire",
]
