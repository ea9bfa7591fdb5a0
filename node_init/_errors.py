"""The error tree of node initialization. Every error pickles, so it crosses Ray tasks intact."""

from __future__ import annotations

import re
from typing import Any

from ._phases import Phase


class NodeInitError(Exception):
    """Base of every node-initialization error."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take keyword-style fields: rebuild from __dict__, not from args.
        return (_rebuild, (type(self), str(self), self.__dict__))


def _rebuild(cls: type[NodeInitError], message: str, state: dict[str, Any]) -> NodeInitError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class ConfigError(NodeInitError):
    """A config file or value is invalid.

    Attributes:
        file: The config file, or ``None`` for a config built in code.
        field: The field path, e.g. ``download.retries``, or ``None`` for the whole file.
    """

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None) -> None:
        self.file = file
        self.field = field
        self.reason = message
        where = ", ".join(p for p in (file and f"file {file}", field and f"field {field}") if p)
        super().__init__(f"{where}: {message}" if where else message)


class CallbackLoadError(NodeInitError):
    """An import path named in config did not load.

    Attributes:
        path: The import path (``pkg.mod:attr``).
        node_id: The Ray node where it failed, or ``None`` outside Ray.
    """

    def __init__(self, message: str, *, path: str, node_id: str | None = None) -> None:
        self.path = path
        self.node_id = node_id
        where = f" on node {node_id}" if node_id else ""
        super().__init__(f"cannot load {path!r}{where}: {message}")


class PhaseError(NodeInitError):
    """A phase of node initialization failed.

    ``__cause__`` is the underlying error (a handler's ``HandlerError``, an I/O error...).

    Attributes:
        phase: ``before_init``, ``placement``, ``download``, ``before_engine_init``,
            ``engine``, ``after_init``.
        node_id: The node where it failed, or ``None`` for the replica itself.
        cause: ``"Type: message"`` of the underlying error (kept as text so it pickles).
    """

    def __init__(self, message: str, *, phase: str, node_id: str | None = None, cause: str = "") -> None:
        self.phase = phase
        self.node_id = node_id
        self.cause = cause
        where = f" on node {node_id}" if node_id else ""
        super().__init__(f"{phase} failed{where}: {message}")


class DownloadError(PhaseError):
    """A download failed (after its retries), timed out or was refused.

    Attributes:
        source: The model source URI.
        file: The file (relative key) that failed, if one did.
        resumable: Whether what was written may be kept for the next attempt to resume from
            (``False`` after a checksum mismatch or a failed write: the partial files go).
        checksum_mismatch: Whether the bytes differed from the checksum the origin states.
    """

    def __init__(
        self,
        message: str,
        *,
        node_id: str | None = None,
        source: str = "",
        file: str | None = None,
        cause: str = "",
        resumable: bool = True,
        checksum_mismatch: bool = False,
    ) -> None:
        self.source = source
        self.file = file
        self.resumable = resumable
        self.checksum_mismatch = checksum_mismatch
        shown = file if file is None or file.isprintable() else repr(file)[1:-1]  # a NUL or newline, escaped
        detail = f"{message} (source {source}" + (f", file {shown})" if file else ")")
        super().__init__(detail, phase=Phase.DOWNLOAD, node_id=node_id, cause=cause)


class EngineError(PhaseError):
    """The engine failed to boot, to load its weights, or was left on dummy weights."""

    def __init__(self, message: str, *, node_id: str | None = None, cause: str = "") -> None:
        super().__init__(message, phase=Phase.ENGINE, node_id=node_id, cause=cause)


_S3_CODE = re.compile(r"<Code>([^<]+)</Code>")
_XML_BODY = re.compile(r":?\s*(<\?xml|<Error>).*", re.S)
_TIMING = re.compile(r" in [0-9.]+(ns|µs|us|ms|s)\b")


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception on one readable line, for messages and ``cause`` fields.

    A client's multi-line debug dump (obstore appends ``Debug source: ...``) is cut, and an S3
    error body is reduced to its code: ``GenericError: ... GET http://host/bucket/key - Server
    returned non-2xx status code: 503 Service Unavailable (SlowDown)``.
    """
    text = str(exc).split("\n\nDebug source:", 1)[0]
    code = _S3_CODE.search(text)
    if code:
        text = _XML_BODY.sub("", text) + f" ({code.group(1)})"
    text = _TIMING.sub("", " ".join(text.split()))
    return f"{type(exc).__name__}: {text}"


def brief(exc: BaseException, *, lines: int = 4, limit: int = 500) -> str:
    """``Type: message`` cut to its first few lines (obstore and vLLM append long debug dumps)."""
    text = describe(exc).split("\n\nDebug source:", 1)[0]
    kept = [line.strip() for line in text.splitlines() if line.strip()][:lines]
    return " | ".join(kept)[:limit]


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to raise for a task group: the first typed node error, else the first error."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if isinstance(exc, NodeInitError):
            return exc
    return next((e for e in leaves if isinstance(e, Exception)), leaves[0])
