"""The node-init config (msgspec) and ``load_config`` for YAML, JSON and TOML files."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import msgspec

from ._errors import ConfigError
from ._modes import STREAMING_LOAD_FORMATS, DownloadMode


class _Strict(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Base: unknown fields are errors, values are immutable once validated."""


class S3Config(_Strict, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """S3-compatible endpoint settings; the standard AWS variables of each node override them."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    anonymous: bool = False


class DownloadConfig(_Strict, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """How nodes fetch the model.

    Attributes:
        cache_dir: Cache root (``NODE_INIT_CACHE_DIR`` on a node overrides it).
        timeout_s: Total bound of one node's download.
        stall_timeout_s: Bound on a period with no bytes received.
        lock_timeout_s: How long a second process waits for the node's downloader.
        retries: Attempts per file after the first, on transient errors.
        local_node: Mode on the replica's own node.
        worker_nodes: Mode on the other nodes of the placement group.
        part_size_mb: Size of one ranged read of a large object.
        concurrency: Parallel ranged reads / files per node.
        expected_rate_mb_s: Link speed for ``overlap: auto`` until one is measured.
        s3: Endpoint settings.
    """

    cache_dir: str = "~/.cache/node-init"
    timeout_s: float = 600.0
    stall_timeout_s: float = 60.0
    lock_timeout_s: float = 900.0
    retries: int = 3
    local_node: DownloadMode | None = None
    worker_nodes: DownloadMode | None = None
    part_size_mb: int = 16
    concurrency: int = 8
    expected_rate_mb_s: float | None = None
    s3: S3Config = S3Config()

    @property
    def node_bound_s(self) -> float:
        """Outer bound on one node's task: its own bounds (lock wait, download) plus slack.

        The node enforces ``lock_timeout_s`` and ``timeout_s`` itself; this catches a node
        that never answers at all.
        """
        return self.timeout_s + self.lock_timeout_s + 60.0


class PlacementConfig(_Strict, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The placement group to create when neither a handler nor Serve provides one."""

    bundles: list[dict[str, float]] = msgspec.field(default_factory=lambda: [{"CPU": 1.0}])
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    ready_timeout_s: float = 60.0


class EngineConfig(_Strict, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The engine to boot: ``vllm`` or ``none``; ``kwargs`` go to vLLM's engine args."""

    kind: Literal["vllm", "none"] = "none"
    overlap: Literal["auto", "on", "off"] = "auto"
    boot_timeout_s: float = 600.0
    kwargs: dict[str, Any] = {}


class NodeInitConfig(_Strict, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Everything node initialization needs; see the README for an example file.

    Attributes:
        model_id: The model's name (also the engine's served name).
        model_source: ``s3://bucket/prefix``, a local directory or ``file://`` URI,
            or ``hf://org/name`` (a Hugging Face cache, offline); ``None`` means
            the engine loads ``model_id`` itself and nothing is downloaded.
        callback: Import path of a class-style callback (``pkg.mod:Class``).
        callback_kwargs: Keyword arguments for the callback class.
        callback_timeout_s: Bound on each class-style hook (runs it in a thread).
        handlers: Import paths of ``HandlerSet``s.
        handler_options: Settings for handlers, by handler module name
            (``{disk_guard: {margin_mb: 512}}``); handlers read ``ctx.llm_config.handler_options``.
        runtime_env: Ray runtime env of the node tasks (``py_modules`` for handlers).
    """

    model_id: str
    model_source: str | None = None
    callback: str | None = None
    callback_kwargs: dict[str, Any] = {}
    callback_timeout_s: float | None = None
    handlers: list[str] = []
    handler_options: dict[str, dict[str, Any]] = {}
    runtime_env: dict[str, Any] | None = None
    download: DownloadConfig = DownloadConfig()
    placement: PlacementConfig | None = PlacementConfig()
    engine: EngineConfig = EngineConfig()

    def __post_init__(self) -> None:
        for name, value in (
            ("download.timeout_s", self.download.timeout_s),
            ("download.stall_timeout_s", self.download.stall_timeout_s),
            ("download.lock_timeout_s", self.download.lock_timeout_s),
            ("engine.boot_timeout_s", self.engine.boot_timeout_s),
        ):
            if not value > 0:
                raise ConfigError(f"must be > 0, got {value}", field=name)
        if self.download.retries < 0:
            raise ConfigError("must be >= 0", field="download.retries")
        if self.download.concurrency < 1 or self.download.part_size_mb < 1:
            raise ConfigError("must be >= 1", field="download.concurrency/part_size_mb")
        if self.placement is not None:
            if not self.placement.bundles:
                raise ConfigError("needs at least one bundle", field="placement.bundles")
            if not self.placement.ready_timeout_s > 0:
                raise ConfigError("must be > 0", field="placement.ready_timeout_s")
        if not self.model_id:
            raise ConfigError("must not be empty", field="model_id")
        try:
            msgspec.json.encode(self.engine.kwargs)
        except (TypeError, msgspec.EncodeError) as exc:
            raise ConfigError(f"must be JSON-encodable: {exc}", field="engine.kwargs") from None

    @property
    def load_format(self) -> str:
        """The engine's configured ``load_format`` (``auto`` if unset)."""
        return str(self.engine.kwargs.get("load_format", "auto"))

    @property
    def streaming(self) -> bool:
        """Whether the load format streams weights at load time (nothing to download)."""
        return self.load_format in STREAMING_LOAD_FORMATS

    def default_mode(self, local: bool) -> DownloadMode:
        """The configured mode of the replica's node (``local``) or of the others."""
        mode = self.download.local_node if local else self.download.worker_nodes
        if mode is not None:
            return mode
        return DownloadMode.NONE if self.streaming else DownloadMode.MODEL_AND_TOKENIZER


_AT = re.compile(r" - at `\$\.?(.*)`$")


def _field_of(message: str) -> tuple[str, str | None]:
    """Split msgspec's ``"... - at `$.a.b`"`` into (message, "a.b")."""
    match = _AT.search(message)
    if not match:
        return message, None
    return message[: match.start()], (match.group(1) or None)


def parse_config(data: Any, *, file: str | None = None) -> NodeInitConfig:
    """Validate a mapping (e.g. ``callback_kwargs`` from a Ray ``LLMConfig``) into a config.

    Raises:
        ConfigError: naming the field path (and the file, if given).
    """
    try:
        return msgspec.convert(data, NodeInitConfig, strict=False)
    except msgspec.ValidationError as exc:
        message, field = _field_of(str(exc))
        raise ConfigError(message, file=file, field=field) from None
    except ConfigError as exc:
        raise ConfigError(exc.reason, file=file, field=exc.field) from None


def load_config(path: str | os.PathLike[str]) -> NodeInitConfig:
    """Load a config file: YAML (``.yaml``/``.yml``), JSON (``.json``) or TOML (``.toml``).

    Raises:
        ConfigError: for a missing or unreadable file, bad syntax, unknown fields,
            wrong types or bad values, naming the file and the field path.
    """
    p = Path(path)
    name = str(p)
    suffix = p.suffix.lower()
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=name) from None
    try:
        if suffix in (".yaml", ".yml"):
            data = msgspec.yaml.decode(raw)
        elif suffix == ".json":
            data = msgspec.json.decode(raw)
        elif suffix == ".toml":
            data = msgspec.toml.decode(raw)
        else:
            raise ConfigError(f"unknown suffix {suffix!r}; use .yaml, .yml, .json or .toml", file=name)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"malformed {suffix[1:].upper()}: {exc}", file=name) from None
    except ValueError as exc:  # e.g. YAML scanner errors surface as ValueError subclasses
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"malformed {suffix[1:].upper()}: {exc}", file=name) from None
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}", file=name)
    return parse_config(data, file=name)
