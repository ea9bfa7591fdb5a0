"""Load objects named by import path: ``"pkg.module:attr"`` (or ``"pkg.module.attr"``, as Ray's)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from eventbus import HandlerSet

from ._errors import CallbackLoadError, describe


def split_path(path: str, *, node_id: str | None = None) -> tuple[str, str]:
    """``(module, attribute)`` of an import path.

    Raises:
        CallbackLoadError: for a path of neither form.
    """
    if not isinstance(path, str) or not path.strip():
        raise CallbackLoadError("an import path must be a non-empty string", path=str(path), node_id=node_id)
    module, sep, attr = path.partition(":")
    if not sep:
        module, _, attr = path.rpartition(".")
    if not module or not attr or ":" in attr:
        raise CallbackLoadError("expected 'pkg.module:attr' or 'pkg.module.attr'", path=path, node_id=node_id)
    return module, attr


def load_object(path: str, *, node_id: str | None = None) -> Any:
    """Import ``path`` and return the object it names.

    Raises:
        CallbackLoadError: naming the path and the node, for a module that is
            missing or fails to import, or a missing attribute.
    """
    module_name, attr = split_path(path, node_id=node_id)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        raise CallbackLoadError(
            f"no module named {missing!r} (ship it with the runtime_env's py_modules or working_dir)",
            path=path, node_id=node_id,
        ) from exc
    except Exception as exc:
        raise CallbackLoadError(f"importing {module_name} raised {describe(exc)}", path=path,
                                node_id=node_id) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CallbackLoadError(f"module {module_name!r} has no attribute {attr!r}", path=path,
                                    node_id=node_id) from None
    return obj


def load_handler_set(path: str, *, node_id: str | None = None) -> HandlerSet:
    """Load a :class:`~eventbus.HandlerSet` by import path."""
    obj = load_object(path, node_id=node_id)
    if not isinstance(obj, HandlerSet):
        raise CallbackLoadError(f"expected an eventbus.HandlerSet, got {type(obj).__name__}", path=path,
                                node_id=node_id)
    return obj


def load_callback_class(path: str, kwargs: dict[str, Any], *, node_id: str | None = None) -> type:
    """Load a class-style callback class and check it takes ``kwargs``."""
    cls = load_object(path, node_id=node_id)
    if not inspect.isclass(cls):
        raise CallbackLoadError(f"expected a class, got {type(cls).__name__}", path=path, node_id=node_id)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise CallbackLoadError(f"callback_kwargs {sorted(kwargs)} do not fit {cls.__name__}: {exc}",
                                path=path, node_id=node_id) from None
    except ValueError:
        pass
    return cls
