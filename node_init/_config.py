"""The node-init config (msgspec) and ``load_config`` for YAML, JSON and TOML files."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import msgspec

from ._errors import ConfigError
from ._modes import STREAMING_LOAD_FORMATS, DownloadMode

#: What the config cannot check itself, installed by the module that knows it (``node_init.download``,
#: imported by the package root before any config is parsed): ``"source"``, a model source URI;
#: ``"revision"``, a Hub revision; ``"load_format"``, the engine's, with its model source. Each raises
#: ``ValueError`` saying what is wrong. The config holds no knowledge of source kinds, and imports none of
#: their modules.
_CHECKS: dict[str, Callable[..., None]] = {}

_Check = Literal["source", "revision", "load_format"]


def register_check(name: _Check, check: Callable[..., None]) -> None:
    """Install the check the config runs on each ``name`` value it parses (``load_format``: given the
    model source and the value)."""
    _CHECKS[name] = check


def _check(name: _Check, *values: object) -> None:
    check = _CHECKS.get(name)
    if check is None:  # node_init's root imports node_init.download: only a partial import gets here
        raise RuntimeError(f"no {name} check installed: import node_init (not node_init._config alone)")
    check(*values)


class _Strict(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Base: unknown fields are errors, values are immutable once validated."""


class Secret(str):
    """A string whose ``repr``, ``str`` and formatting are redacted: it never reaches a log or an error.

    ``reveal(secret)`` gives the value to the one place that needs it (the S3 client).
    msgspec refuses to encode it, so it cannot slip into an event either.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"


def reveal(secret: str | None) -> str | None:
    """The value behind a :class:`Secret` (a plain ``str`` copy), or ``None``."""
    return None if secret is None else secret[:]


class S3Config(_Strict, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """S3-compatible endpoint settings; the standard AWS variables of each node override them.

    Attributes:
        endpoint_url: ``http(s)://host[:port]`` of an S3-compatible store (default: AWS).
        region: The bucket's region.
        access_key_id: With ``secret_access_key``: sign with these keys. Without keys, the
            node's environment, then the standard AWS credential chain (profiles, SSO, web
            identity, instance roles) are used.
        secret_access_key: Held as a :class:`Secret` (redacted everywhere).
        anonymous: Send unsigned requests (a public bucket).
    """

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    anonymous: bool = False

    def __post_init__(self) -> None:
        if self.secret_access_key is not None and not isinstance(self.secret_access_key, Secret):
            msgspec.structs.force_setattr(self, "secret_access_key", Secret(self.secret_access_key))


class GCSConfig(_Strict, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Google Cloud Storage settings; a node's ``STORAGE_EMULATOR_HOST`` overrides the endpoint.

    Attributes:
        endpoint_url: ``http(s)://host[:port]`` of the JSON API (default: Google's).
        anonymous: Send no credentials (a public bucket; ``gs://anonymous@bucket`` says the same).
        credentials_file: A service-account or external-account JSON file; else
            ``GOOGLE_APPLICATION_CREDENTIALS``, then the application-default file, then the metadata
            server (through ``google-auth``).
    """

    endpoint_url: str | None = None
    anonymous: bool = False
    credentials_file: str | None = None


class AzureConfig(_Strict, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Azure Blob Storage settings, for ``azure://`` and ``abfss://`` sources.

    Attributes:
        endpoint_url: The Blob service's base URL (default: ``https://<account>.blob.core.windows.net``,
            also for ``abfss://``: the Blob API reads a Data Lake account). Azurite's is
            ``http://127.0.0.1:10000/devstoreaccount1``.
        account_key: A storage account key (a :class:`Secret`); else ``AZURE_STORAGE_KEY``.
        sas_token: A SAS token (a :class:`Secret`); else ``AZURE_STORAGE_SAS_TOKEN``.
        anonymous: Send no credentials (a container with public read access).

    Without a key or a SAS token, ``azure-identity`` (the ``[azure]`` extra) is asked, in Azure's
    order: a service principal (``AZURE_CLIENT_ID``/``AZURE_TENANT_ID``/``AZURE_CLIENT_SECRET``),
    workload identity (``AZURE_FEDERATED_TOKEN_FILE``), then the managed identity.
    """

    endpoint_url: str | None = None
    account_key: str | None = None
    sas_token: str | None = None
    anonymous: bool = False

    def __post_init__(self) -> None:
        for name in ("account_key", "sas_token"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Secret):
                msgspec.structs.force_setattr(self, name, Secret(value))


class HFConfig(_Strict, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Hugging Face Hub settings, for ``org/name`` and ``hf://org/name[@revision]`` sources.

    Attributes:
        endpoint_url: The Hub's URL (a mirror, a private Hub); a node's ``HF_ENDPOINT`` overrides it.
        token: A Hub token (a :class:`Secret`); else ``HF_TOKEN``, else the file the Hugging Face CLI
            writes (``$HF_HOME/token``).
    """

    endpoint_url: str | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if self.token is not None and not isinstance(self.token, Secret):
            msgspec.structs.force_setattr(self, "token", Secret(self.token))


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
        expected_rate_mb_s: Link speed for ``overlap: auto`` until one is measured (MB/s).
        verify: How a cached file is checked before reuse: ``stat`` (size, mtime and inode
            as recorded when it was written) or ``full`` (also re-hash every byte).
        share: Fetch once per cluster: the nodes of one init that need the same files each fetch
            a disjoint share of the ranges from the source and take the rest from each other
            through Ray's object store. ``auto``: for every remote source (S3, GCS, Azure, the Hub) when two
            or more nodes need the same files; ``on``: for any source (a shared ``file://`` mount too);
            ``off``: every node fetches everything from the source.
        share_memory_mb: Bound on the bytes a node holds in Ray's object store for its peers
            (a range over it is not offered: peers fetch it from the source).
        share_hub_idle_s: The cluster's exchange hub (one actor, a worker process) exits after this
            long with no init open; the next shared init starts it again (about a second).
        require_checksum: Fail the download, naming the files, when the origin states no checksum for
            some of them (by default such a file is checked by its size alone, and reported as ``size``).
        s3: S3 endpoint and credential settings.
        gcs: Google Cloud Storage endpoint and credential settings.
        azure: Azure Blob Storage endpoint and credential settings (``azure://``, ``abfss://``).
        hf: Hugging Face Hub endpoint and token (``org/name``, ``hf://``).
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
    verify: Literal["stat", "full"] = "stat"
    share: Literal["auto", "on", "off"] = "auto"
    share_memory_mb: int = 512
    share_hub_idle_s: float = 600.0
    require_checksum: bool = False
    s3: S3Config = S3Config()
    gcs: GCSConfig = GCSConfig()
    azure: AzureConfig = AzureConfig()
    hf: HFConfig = HFConfig()



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


class ExtraFiles(_Strict, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Files fetched on every node besides the model (Ray's ``CloudMirrorConfig.extra_files``).

    Attributes:
        bucket_uri: A source prefix (any scheme a model source takes); every file under it is fetched.
        destination_path: Where they land on each node (``~`` and ``$VARS`` expanded there); it
            becomes a link to a verified snapshot, like the model's directory.
    """

    bucket_uri: str
    destination_path: str


class MirrorConfig(_Strict, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Ray's ``CloudMirrorConfig`` form of ``model_source``: ``{bucket_uri, extra_files}``."""

    bucket_uri: str | None = None
    extra_files: list[ExtraFiles] = []


class NodeInitConfig(_Strict, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Everything node initialization needs; docs/configuration.md has every key and an example file.

    Attributes:
        model_id: The model's name (also the engine's served name).
        model_source: ``s3://``, ``gs://``, ``azure://`` or ``abfss://`` (Ray's forms), a Hugging Face Hub
            id (``org/name``, ``hf://org/name[@revision]``; ``HF_HUB_OFFLINE=1``: this node's cache), a local
            directory or ``file://`` URI, or Ray's ``CloudMirrorConfig`` mapping (``{bucket_uri,
            extra_files}``: it sets this and ``extra_files``); ``None`` means
            the engine loads ``model_id`` itself and nothing is downloaded.
        callback: Import path of a class-style callback (``pkg.mod:Class``).
        callback_kwargs: Keyword arguments for the callback class.
        callback_timeout_s: Bound on each class-style hook (runs it in a thread).
        extra_files: Files fetched on every node besides the model (after it, each into its own
            destination), as Ray's ``CloudMirrorConfig.extra_files``.
        handlers: Import paths of ``HandlerSet``s.
        handler_options: Settings for handlers, by handler module name
            (``{disk_guard: {margin_mb: 512}}``); handlers read ``ctx.llm_config.handler_options``.
        runtime_env: Ray runtime env of the node tasks (``py_modules`` for handlers).
        init_timeout_s: Bound on the whole initialization (handlers, placement, downloads,
            engine); enforced by a watchdog thread, so a handler blocking the event loop
            cannot keep it from firing. The default fits a large model on a slow link.
    """

    model_id: str
    model_source: str | None = None
    extra_files: list[ExtraFiles] = []
    init_timeout_s: float = 3600.0
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
        # Everything that can be checked before any Ray call is checked here (see ``_validate``).
        _validate(self)

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


def _validate(c: NodeInitConfig) -> None:
    """Bounds, sources, names, paths and resources of a config: a ``ConfigError`` naming the field."""
    for name, value in (
        ("download.timeout_s", c.download.timeout_s),
        ("download.stall_timeout_s", c.download.stall_timeout_s),
        ("download.lock_timeout_s", c.download.lock_timeout_s),
        ("engine.boot_timeout_s", c.engine.boot_timeout_s),
        ("init_timeout_s", c.init_timeout_s),
    ):
        if not value > 0:
            raise ConfigError(f"must be > 0, got {value}", field=name)
    from ._bounds import MIN_STALL_S

    if c.download.stall_timeout_s < MIN_STALL_S:
        raise ConfigError(f"must be >= {MIN_STALL_S:g} s, got {c.download.stall_timeout_s} (a third of it bounds a "
                          "peer's silence; shorter, a healthy peer's Ray call reads as a hung one)",
                          field="download.stall_timeout_s")
    if not c.download.share_hub_idle_s > 0:
        raise ConfigError(f"must be > 0, got {c.download.share_hub_idle_s}", field="download.share_hub_idle_s")
    if c.download.retries < 0:
        raise ConfigError(f"must be >= 0, got {c.download.retries}", field="download.retries")
    for name, count in (("download.concurrency", c.download.concurrency),
                        ("download.part_size_mb", c.download.part_size_mb),
                        ("download.share_memory_mb", c.download.share_memory_mb)):
        if count < 1:
            raise ConfigError(f"must be >= 1, got {count}", field=name)
    if c.download.expected_rate_mb_s is not None and not c.download.expected_rate_mb_s > 0:
        raise ConfigError(f"must be > 0, got {c.download.expected_rate_mb_s}", field="download.expected_rate_mb_s")
    if c.callback_timeout_s is not None and not c.callback_timeout_s > 0:
        raise ConfigError(f"must be > 0, got {c.callback_timeout_s}", field="callback_timeout_s")
    if c.placement is not None:
        _validate_placement(c.placement)
    _validate_model_id(c.model_id)
    if c.model_source is not None:
        _validate_source(c.model_source)
    for i, extra in enumerate(c.extra_files):
        _validate_source(extra.bucket_uri, field=f"extra_files[{i}].bucket_uri")
        if not extra.destination_path.strip():
            raise ConfigError("must not be empty", field=f"extra_files[{i}].destination_path")
    if c.download.s3.endpoint_url is not None:
        _validate_endpoint(c.download.s3.endpoint_url)
    if c.download.gcs.endpoint_url is not None:
        _validate_endpoint(c.download.gcs.endpoint_url, field="download.gcs.endpoint_url")
    if c.download.gcs.credentials_file is not None and not c.download.gcs.credentials_file.strip():
        raise ConfigError("must not be empty (leave it out to use GOOGLE_APPLICATION_CREDENTIALS)",
                          field="download.gcs.credentials_file")
    if c.download.hf.endpoint_url is not None:
        _validate_endpoint(c.download.hf.endpoint_url, field="download.hf.endpoint_url")
    if c.download.hf.token is not None and not str(reveal(c.download.hf.token)).strip():
        raise ConfigError("must not be empty (leave it out to use HF_TOKEN)", field="download.hf.token")
    azure = c.download.azure
    if azure.endpoint_url is not None:
        _validate_endpoint(azure.endpoint_url, field="download.azure.endpoint_url")
    for name in ("account_key", "sas_token"):
        if getattr(azure, name) is not None and not str(reveal(getattr(azure, name))).strip():
            raise ConfigError("must not be empty (leave it out to use the environment)", field=f"download.azure.{name}")
    if azure.account_key is not None and azure.sas_token is not None:
        raise ConfigError("give an account key or a SAS token, not both", field="download.azure.sas_token")
    if not c.download.cache_dir.strip():
        raise ConfigError("must not be empty", field="download.cache_dir")
    from ._errors import CallbackLoadError
    from ._loader import split_path

    for name, path in [("callback", c.callback), *((f"handlers[{i}]", p) for i, p in enumerate(c.handlers))]:
        if path is not None:
            try:
                split_path(path)
            except CallbackLoadError as exc:
                raise ConfigError(str(exc), field=name) from None
    try:
        msgspec.json.encode(c.engine.kwargs)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ConfigError(f"must be JSON-encodable: {exc}", field="engine.kwargs") from None
    _validate_tokenizer(c.engine.kwargs)
    _validate_load_format(c)


def _validate_load_format(c: NodeInitConfig) -> None:
    """``load_format``: one vLLM 0.32 accepts; from the Hub, one whose files are known
    (``node_init.download.LOAD_FORMATS``: the snapshot holds only what it reads)."""
    value = c.engine.kwargs.get("load_format")
    if value is None or not c.model_source:
        return
    try:
        _check("load_format", c.model_source, value)  # download's: which formats it knows the files of
    except ValueError as exc:
        raise ConfigError(str(exc), field="engine.kwargs.load_format") from None


def _validate_tokenizer(kwargs: dict[str, Any]) -> None:
    """``tokenizer`` / ``tokenizer_revision``: node init fetches a Hub tokenizer itself (``_tokenizer``)."""
    name, revision = kwargs.get("tokenizer"), kwargs.get("tokenizer_revision")
    if name is not None and not (isinstance(name, str) and name.strip()):
        raise ConfigError(f"must be a Hub id or a path, got {name!r}", field="engine.kwargs.tokenizer")
    if isinstance(name, str) and name.startswith("hf://"):
        _validate_source(name, field="engine.kwargs.tokenizer")
    if revision is None:
        return
    try:
        if not isinstance(revision, str):
            raise ValueError(f"must be a branch, tag or commit, got {revision!r}")
        _check("revision", revision)
        if isinstance(name, str) and "@" in name.removeprefix("hf://"):
            raise ValueError(f"{name!r} names a revision already")
    except ValueError as exc:
        raise ConfigError(str(exc), field="engine.kwargs.tokenizer_revision") from None


def _validate_placement(p: PlacementConfig) -> None:
    if not p.bundles:
        raise ConfigError("needs at least one bundle", field="placement.bundles")
    for i, bundle in enumerate(p.bundles):
        if not bundle:
            raise ConfigError("a bundle needs at least one resource", field=f"placement.bundles[{i}]")
        for resource, amount in bundle.items():
            if not amount >= 0:
                raise ConfigError(f"must be >= 0, got {amount}", field=f"placement.bundles[{i}].{resource}")
        if not any(amount > 0 for amount in bundle.values()):
            raise ConfigError("a bundle needs a resource > 0", field=f"placement.bundles[{i}]")
    if not p.ready_timeout_s > 0:
        raise ConfigError(f"must be > 0, got {p.ready_timeout_s}", field="placement.ready_timeout_s")


def _validate_model_id(model_id: str) -> None:
    if not model_id.strip():
        raise ConfigError("must not be empty", field="model_id")
    name = model_id.strip().replace("/", "--").replace("\\", "--")
    if name in (".", "..") or name.startswith(".") or any(p in (".", "..") for p in re.split(r"[/\\]", model_id)):
        raise ConfigError(f"{model_id!r} cannot name a cache directory (no '.', '..' or leading dot)",
                          field="model_id")


def _validate_source(uri: str, field: str = "model_source") -> None:
    try:
        _check("source", uri)  # the source registry's: each kind checks its own URIs
    except ValueError as exc:
        raise ConfigError(str(exc), field=field) from None


def _validate_endpoint(url: str, field: str = "download.s3.endpoint_url") -> None:
    from urllib.parse import urlparse

    try:
        parsed = urlparse(url)
        port = parsed.port
    except ValueError as exc:
        raise ConfigError(f"{url!r} is not a URL: {exc}", field=field) from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname or " " in url:
        raise ConfigError(f"{url!r} is not an http(s)://host[:port] URL", field=field)
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"{url!r}: port out of range", field=field)


_AT = re.compile(r" - at `\$\.?(.*)`$")


def _field_of(message: str) -> tuple[str, str | None]:
    """Split msgspec's ``"... - at `$.a.b`"`` into (message, "a.b")."""
    match = _AT.search(message)
    if not match:
        return message, None
    return message[: match.start()], (match.group(1) or None)


def _allowed_values(field: str | None) -> list[str]:
    """The values a ``Literal`` or enum field takes (``engine.overlap`` -> auto, on, off)."""
    import enum
    import typing

    tp: Any = NodeInitConfig
    for part in (field or "").split("."):
        hints = typing.get_type_hints(tp) if isinstance(tp, type) and issubclass(tp, msgspec.Struct) else {}
        if part.split("[")[0] not in hints:
            return []
        tp = hints[part.split("[")[0]]
        options = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) else []
        if typing.get_origin(tp) is not Literal and len(options) == 1:
            tp = options[0]  # X | None
    if typing.get_origin(tp) is Literal:
        return [str(a) for a in typing.get_args(tp)]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [m.name for m in tp]
    return []


def _mirror(data: Any) -> Any:
    """Ray's ``CloudMirrorConfig`` form of ``model_source`` (a mapping, or Ray's object): its
    ``bucket_uri`` becomes the source, its ``extra_files`` join ``extra_files``."""
    source = data.get("model_source") if isinstance(data, dict) else None
    if source is None or isinstance(source, str):
        return data
    if hasattr(source, "model_dump"):  # Ray's pydantic CloudMirrorConfig itself
        source = source.model_dump()
    try:
        mirror = msgspec.convert(source, MirrorConfig, strict=False)
    except msgspec.ValidationError as exc:
        message, field = _field_of(str(exc))
        raise ConfigError(message, field="model_source" + (f".{field}" if field else "")) from None
    extra = [msgspec.to_builtins(e) for e in mirror.extra_files]
    return {**data, "model_source": mirror.bucket_uri, "extra_files": [*extra, *(data.get("extra_files") or [])]}


def parse_config(data: Any, *, file: str | None = None) -> NodeInitConfig:
    """Validate a mapping (e.g. ``callback_kwargs`` from a Ray ``LLMConfig``) into a config.

    Raises:
        ConfigError: naming the field path (and the file, if given).
    """
    try:
        return msgspec.convert(_mirror(data), NodeInitConfig, strict=False)
    except msgspec.ValidationError as exc:
        message, field = _field_of(str(exc))
        allowed = _allowed_values(field)
        if allowed and message.startswith("Invalid enum value"):
            message += f"; expected one of {', '.join(allowed)}"
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
