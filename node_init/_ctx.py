"""``CallbackCtx``: the mutable state every handler of one initialization shares."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import msgspec

from ._config import NodeInitConfig
from ._modes import DownloadMode, coerce_mode


def _check_json(where: str, key: Any, value: Any) -> None:
    try:
        msgspec.json.encode(value)
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(
            f"{where}[{key!r}] must be JSON-encodable (it crosses processes and events): {exc}"
        ) from None


class JsonDict(dict[str, Any]):
    """A dict that refuses values msgspec cannot encode to JSON, where they are set."""

    __slots__ = ("_where",)

    def __init__(self, where: str, data: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._where = where
        if data:
            self.update(data)

    def __setitem__(self, key: str, value: Any) -> None:
        _check_json(self._where, key, value)
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def __ior__(self, other: Iterable[Any]) -> JsonDict:  # type: ignore[override,misc]
        self.update(other)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (JsonDict, (self._where, dict(self)))


def _to_json_dict(where: str, value: Any) -> JsonDict:
    if isinstance(value, JsonDict) and value._where == where:
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"{where} must be a mapping, got {type(value).__name__}")
    return JsonDict(where, value)


# Named converters (attrs' mypy plugin accepts only named functions).
def _custom_data(value: Any) -> JsonDict:
    return _to_json_dict("ctx.custom_data", value)


def _extra_kwargs(value: Any) -> JsonDict:
    return _to_json_dict("ctx.extra_init_kwargs", value)


def _runtime_env(value: Any) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(f"ctx.runtime_env must be a mapping or None, got {type(value).__name__}")
    return dict(value) if value is not None else None


_frozen = attrs.setters.frozen
_convert = attrs.setters.convert


@attrs.define(eq=False)
class CallbackCtx:
    """Shared, mutable state of one node initialization.

    Attributes:
        llm_config: Our :class:`NodeInitConfig` (read-only).
        ray_llm_config: Ray's ``LLMConfig`` on the Serve paths, else ``None`` (read-only).
        local_node_download_model: Mode on the replica's own node; strings and
            Ray's ``NodeModelDownloadable`` convert, anything else is a ``ValueError``.
        worker_node_download_model: Mode on the other nodes of the placement group.
        placement_group: Set it in ``BeforeInit`` to use your own placement group.
        runtime_env: Ray runtime env of the node tasks.
        extra_init_kwargs: Engine arguments merged over the configured ones.
        custom_data: Your state; JSON-encodable values only. Each node's
            handlers' additions come back under ``custom_data["nodes"][node_id]``.
    """

    llm_config: NodeInitConfig = attrs.field(on_setattr=_frozen)
    ray_llm_config: Any = attrs.field(default=None, on_setattr=_frozen)
    local_node_download_model: DownloadMode = attrs.field(
        default=DownloadMode.MODEL_AND_TOKENIZER, converter=coerce_mode, on_setattr=_convert
    )
    worker_node_download_model: DownloadMode = attrs.field(
        default=DownloadMode.MODEL_AND_TOKENIZER, converter=coerce_mode, on_setattr=_convert
    )
    placement_group: Any = None
    runtime_env: dict[str, Any] | None = attrs.field(
        default=None, converter=_runtime_env, on_setattr=_convert
    )
    extra_init_kwargs: dict[str, Any] = attrs.field(
        factory=lambda: JsonDict("ctx.extra_init_kwargs"), converter=_extra_kwargs,
        on_setattr=_convert
    )
    custom_data: dict[str, Any] = attrs.field(
        factory=lambda: JsonDict("ctx.custom_data"), converter=_custom_data, on_setattr=_convert
    )

    @classmethod
    def for_config(cls, config: NodeInitConfig, ray_llm_config: Any = None) -> CallbackCtx:
        """A fresh ctx with the config's modes and runtime env."""
        return cls(
            llm_config=config,
            ray_llm_config=ray_llm_config,
            local_node_download_model=config.default_mode(local=True),
            worker_node_download_model=config.default_mode(local=False),
            runtime_env=config.runtime_env,
        )

    def snapshot(self) -> dict[str, Any]:
        """The plain, JSON-encodable fields a node task receives."""
        return {
            "local_node_download_model": self.local_node_download_model.value,
            "worker_node_download_model": self.worker_node_download_model.value,
            "runtime_env": self.runtime_env,
            "extra_init_kwargs": dict(self.extra_init_kwargs),
            "custom_data": dict(self.custom_data),
        }

    @classmethod
    def from_snapshot(cls, config: NodeInitConfig, snapshot: Mapping[str, Any]) -> CallbackCtx:
        """Rebuild a ctx in a node's process from :meth:`snapshot`."""
        return cls(llm_config=config, **snapshot)
