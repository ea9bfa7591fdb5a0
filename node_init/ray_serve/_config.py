"""Our settings inside a Ray ``LLMConfig``: read them, and check them where Serve builds the application.

Both Serve paths (the stock callback and our server class) carry our settings in
``LLMConfig.callback_config.callback_kwargs`` (any :class:`~node_init.NodeInitConfig` field but
``model_id``, which comes from the ``LLMConfig``). This module imports ``ray.serve``.
"""

from __future__ import annotations

from typing import Any, Literal

import structlog
from ray.serve.exceptions import RayServeException

from .._config import NodeInitConfig, parse_config
from .._errors import CallbackLoadError, ConfigError
from .._events import HOOKS
from .._loader import load_callback_class, load_handler_set

_log = structlog.get_logger("node_init.ray_serve")
#: The import path of our stock-path callback, as configs name it.
CALLBACK_CLASS = "node_init.ray_serve:EventBusCallback"
_FILE = "LLMConfig.callback_config.callback_kwargs"
#: The ``callback_kwargs`` key choosing who runs node init on the stock path (not a NodeInitConfig field).
NODE_INIT_KEY = "node_init"
NodeInitBy = Literal["ours", "ray"]


def node_init_by(kwargs: dict[str, Any]) -> NodeInitBy:
    """Who runs node init under :class:`~node_init.ray_serve.EventBusCallback` on stock ``ray.serve.llm``:
    ``ours`` (the default: our placement, per-node tasks and downloader, Ray's own download never runs)
    or ``ray`` (Ray's ``initialize_node`` downloads; our hooks only observe).

    Raises:
        ConfigError: any other value, naming the field.
    """
    value = kwargs.get(NODE_INIT_KEY, "ours")
    if value not in ("ours", "ray"):
        raise ConfigError(f"must be 'ours' or 'ray', got {value!r}", file=_FILE, field=NODE_INIT_KEY)
    return "ray" if value == "ray" else "ours"


def node_init_config(llm_config: Any, kwargs: dict[str, Any]) -> NodeInitConfig:
    """Our config from a Ray ``LLMConfig`` and the ``callback_kwargs`` that carry our settings.

    ``model_loading_config.model_source`` in any of Ray's forms becomes ours (a ``CloudMirrorConfig``
    sets ``model_source`` and ``extra_files``); with no source, a ``model_id`` that is a Hugging Face
    Hub id is the source, as Ray reads it.

    Raises:
        ConfigError: naming the field of ``callback_kwargs`` that is wrong.
    """
    from ..download import hub_or_path

    node_init_by(kwargs)
    ours = {k: v for k, v in kwargs.items() if k != NODE_INIT_KEY}
    data: dict[str, Any] = {"placement": None, **ours, "model_id": llm_config.model_id}
    source = llm_config.model_loading_config.model_source
    if source is not None and "model_source" not in kwargs:
        data["model_source"] = source  # a string, or Ray's CloudMirrorConfig (bucket_uri, extra_files)
    elif source is None and "model_source" not in kwargs and hub_or_path(llm_config.model_id).startswith("hf://"):
        data["model_source"] = llm_config.model_id  # Ray downloads model_id from the Hub: so do we
    engine = dict(data.get("engine") or {})
    engine.setdefault("kind", "vllm")
    engine["kwargs"] = {**dict(llm_config.engine_kwargs), **dict(engine.get("kwargs") or {})}
    data["engine"] = engine
    try:
        return parse_config(data, file=_FILE)
    except ConfigError as exc:
        if "model_source" in kwargs or not (exc.field or "").startswith("model_source"):
            raise
        # Named where the user wrote it: Ray's model_loading_config, not our callback_kwargs.
        raise ConfigError(exc.reason, file="LLMConfig.model_loading_config", field=exc.field) from None


_HOOKS = tuple(HOOKS)


class ServeConfigError(ConfigError, RayServeException):
    """A :class:`~node_init.ConfigError` found where Serve builds the application.

    Also a ``RayServeException``: Serve then fails the build at once (``DEPLOY_FAILED`` with
    this message), where any other exception is retried three times in fresh workers first.
    """


def validate_llm_config(llm_config: Any) -> NodeInitConfig | None:
    """Check our settings in an ``LLMConfig`` where the application is built, before any replica.

    Returns our config, or ``None`` when the ``LLMConfig`` does not use our callback. The build runs
    in the application's runtime_env, where its ``working_dir`` has landed: an import path that does
    not import here is an error, unless the ``LLMConfig``'s own runtime_env ships a ``working_dir`` or
    ``py_modules`` it may come from (then it is checked on the node, where that lands).

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
    if not str(name).endswith("EventBusCallback"):  # ours by path, or the class (or a subclass named so)
        return None
    config = node_init_config(llm_config, dict(llm_config.callback_config.callback_kwargs))
    shipped = _ships_code_elsewhere(llm_config)
    paths = [("callback", config.callback)] + [(f"handlers[{i}]", p) for i, p in enumerate(config.handlers)]
    for field, path in paths:
        if path is None:
            continue
        try:
            obj = (load_callback_class(path, config.callback_kwargs) if field == "callback"
                   else load_handler_set(path))
        except CallbackLoadError as exc:
            if shipped and isinstance(exc.__cause__, ModuleNotFoundError):
                _log.info("import path not importable here; checked where the LLMConfig's runtime_env lands",
                          path=path)
                continue
            raise ConfigError(str(exc), file=_FILE, field=field) from None
        if field == "callback" and not any(callable(getattr(obj, hook, None)) for hook in _HOOKS):
            raise ConfigError(f"{path} implements none of {', '.join(_HOOKS)} (Ray's own hooks such as "
                              "on_before_node_init are not ours): it would never be called", file=_FILE,
                              field="callback")
    return config


def _ships_code_elsewhere(llm_config: Any) -> bool:
    """Whether the ``LLMConfig``'s own runtime_env ships code (``working_dir``/``py_modules``) that this
    process does not have: the build runs in the application's runtime_env, where an application-level
    ``working_dir`` (``serve run --working-dir``) has landed, but a deployment-level one has not."""
    env = getattr(llm_config, "runtime_env", None) or {}
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


