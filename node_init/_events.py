"""The typed events of node initialization (msgspec structs; all encode to JSON)."""

from __future__ import annotations

from typing import Any

import msgspec

from eventbus import Event

from ._modes import DownloadMode


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A failure, as plain data (it crosses processes and encodes to JSON)."""

    type: str
    message: str
    phase: str
    node_id: str | None = None


class NodeReport(msgspec.Struct, frozen=True, kw_only=True):
    """What one node's task did.

    Attributes:
        node_id: The Ray node.
        path: The model directory on that node ("" when nothing was fetched).
        mode: The mode in force after ``BeforeDownload``.
        files: Files fetched (relative keys); files already cached are not listed.
        bytes: Bytes fetched.
        cached_bytes: Bytes already in the cache and reused.
        peer_bytes: Of ``bytes``, those taken from other nodes of the init (``download.share``).
        seconds: Wall time of the node's task.
        vetoed: Whether a ``BeforeDownload`` handler vetoed the download.
        custom_data: What that node's handlers put in ``ctx.custom_data``.
        errors: Errors of ``on_error="log"`` handlers on that node.
    """

    node_id: str
    path: str = ""
    mode: DownloadMode = DownloadMode.NONE
    files: tuple[str, ...] = ()
    bytes: int = 0
    cached_bytes: int = 0
    peer_bytes: int = 0
    seconds: float = 0.0
    vetoed: bool = False
    custom_data: dict[str, Any] = {}
    errors: tuple[ErrorInfo, ...] = ()


class BeforeInit(Event, frozen=True, kw_only=True):
    """Published first, in the replica. A veto skips our placement group and every download."""

    model_id: str


class BeforeDownload(Event, frozen=True, kw_only=True):
    """Published on each node of the placement group, in that node's process.

    A veto skips that node's download; a handler may also change the mode in
    ``ctx`` (it is read after the publish).
    """

    model_id: str
    node_id: str
    source: str = ""
    destination: str = ""
    mode: DownloadMode = DownloadMode.MODEL_AND_TOKENIZER
    files: tuple[str, ...] = ()
    expected_bytes: int = 0


class DownloadProgress(Event, frozen=True, kw_only=True):
    """Bytes fetched so far by one node (re-published in the replica)."""

    node_id: str
    bytes_done: int
    bytes_total: int


class BeforeEngineInit(Event, frozen=True, kw_only=True):
    """Published in the replica before the engine boots. A veto starts no engine."""

    model_id: str
    model_path: str
    engine_kwargs: dict[str, Any] = {}


class AfterInit(Event, frozen=True, kw_only=True):
    """Published in the replica when everything is up. A ``False`` is only logged."""

    model_id: str
    model_path: str
    timings: dict[str, float] = {}
    reports: tuple[NodeReport, ...] = ()


class InitFailed(Event, frozen=True, kw_only=True):
    """Published in the replica when a phase failed, before the error is raised."""

    model_id: str
    phase: str
    node_id: str | None = None
    error: ErrorInfo
