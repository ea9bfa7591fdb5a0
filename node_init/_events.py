"""The typed events of node initialization (msgspec structs; all encode to JSON), and their registry.

Every event is declared once, with :func:`registered`: its phase (the phase a failing handler's
error names), where it is published, whether a veto skips anything, and the class-style hook it
maps to. The package exports, the class-style callbacks, the Serve build check, the event log's
reader and the tests read :data:`EVENTS`; adding an event is its declaration and its publish call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

import attrs
import msgspec

from eventbus import Event

from ._modes import DownloadMode
from ._phases import Phase

E = TypeVar("E", bound=type[Event])


@attrs.frozen
class EventSpec:
    """One registered event.

    Attributes:
        event: The event class.
        phase: The phase it belongs to (a handler's failure is that phase's ``PhaseError``).
        where: ``replica`` or ``node`` (published in each node's own process).
        vetoable: Whether a ``False`` skips a default action (else it is only logged).
        hook: The class-style :class:`~node_init.RayServeLLMCallback` hook it calls, if any.
    """

    event: type[Event]
    phase: Phase
    where: Literal["replica", "node"] = "replica"
    vetoable: bool = False
    hook: str | None = None


#: Every node-init event, in the order an init publishes them (filled by :func:`registered`).
EVENTS: dict[type[Event], EventSpec] = {}
#: The class-style hooks, by name, and the event each is called on.
HOOKS: dict[str, type[Event]] = {}


def registered(phase: Phase, *, where: Literal["replica", "node"] = "replica", vetoable: bool = False,
               hook: str | None = None) -> Callable[[E], E]:
    """Declare an event class in :data:`EVENTS` (a class decorator)."""

    def add(cls: E) -> E:
        EVENTS[cls] = EventSpec(cls, phase, where, vetoable, hook)
        if hook is not None:
            HOOKS[hook] = cls
        return cls

    return add


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
        verified: How each file's bytes were checked against the origin (``crc64nvme``, ``crc32c``,
            ``sha256``, ``md5``, ... or ``size`` where the origin stated no checksum).
        rereads: Files read again from the origin after their bytes differed from its checksum.
        bad_nodes: Nodes (peers of this init, or holders from earlier ones) that sent this node bytes
            differing from their owner's checksum or the origin's, with how many pieces or ranges;
            those bytes were read from the origin instead.
        takeovers: Ranges this node took over from an owner that was dead or silent (read from the
            origin in its place and offered to the others).
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
    verified: dict[str, str] = {}
    rereads: tuple[str, ...] = ()
    bad_nodes: dict[str, int] = {}
    takeovers: int = 0


@registered(Phase.BEFORE_INIT, vetoable=True, hook="on_before_init")
class BeforeInit(Event, frozen=True, kw_only=True):
    """Published first, in the replica. A veto skips our placement group and every download."""

    model_id: str


@registered(Phase.BEFORE_DOWNLOAD, where="node", vetoable=True, hook="on_before_download")
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


@registered(Phase.BEFORE_DOWNLOAD)
class NodeDecided(Event, frozen=True, kw_only=True):
    """A node's ``BeforeDownload`` outcome, re-published in the replica (the handlers ran on the node).

    Attributes:
        node_id: The node.
        mode: The mode in force after its handlers ran.
        vetoed_by: The handlers that vetoed its download (``module.qualname``), if any.
        missing_bytes: Bytes it still has to fetch.
    """

    node_id: str
    mode: DownloadMode
    vetoed_by: tuple[str, ...] = ()
    missing_bytes: int = 0


@registered(Phase.DOWNLOAD)
class DownloadProgress(Event, frozen=True, kw_only=True):
    """Bytes fetched so far by one node (re-published in the replica)."""

    node_id: str
    bytes_done: int
    bytes_total: int


@registered(Phase.BEFORE_ENGINE_INIT, vetoable=True)
class BeforeEngineInit(Event, frozen=True, kw_only=True):
    """Published in the replica before the engine boots. A veto starts no engine."""

    model_id: str
    model_path: str
    engine_kwargs: dict[str, Any] = {}


@registered(Phase.AFTER_INIT, hook="on_after_init")
class AfterInit(Event, frozen=True, kw_only=True):
    """Published in the replica when everything is up. A ``False`` is only logged."""

    model_id: str
    model_path: str
    timings: dict[str, float] = {}
    reports: tuple[NodeReport, ...] = ()
    #: Why node init downloaded nothing and left the model to the engine ("" when it downloaded it).
    download_skipped: str = ""
    #: Whether the engine booted on dummy weights while they downloaded, then took them in place.
    overlap: bool = False


@registered(Phase.AFTER_INIT)
class InitFailed(Event, frozen=True, kw_only=True):
    """Published in the replica when a phase failed, before the error is raised."""

    model_id: str
    phase: str
    node_id: str | None = None
    error: ErrorInfo
