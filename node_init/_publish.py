"""Publishing a phase's event: a handler's failure becomes that phase's ``PhaseError``.

Shared by the flow, the node tasks and the stock Ray Serve callback, so each of
them reports a failing handler, and a failed init, the same way.
"""

from __future__ import annotations

from typing import Any

import anyio
import structlog

from eventbus import Event, EventBus, HandlerError, Outcome

from ._bounds import TEARDOWN_S
from ._ctx import CallbackCtx
from ._errors import PhaseError, describe
from ._events import BeforeDownload, ErrorInfo, InitFailed
from ._modes import DownloadMode
from ._phases import Phase

_log = structlog.get_logger("node_init")



def phase_error(exc: HandlerError, phase: str, node_id: str | None = None) -> PhaseError:
    """The :class:`PhaseError` for a handler's failure in ``phase`` (raise it ``from exc``)."""
    return PhaseError(str(exc), phase=phase, node_id=node_id, cause=describe(exc))


async def publish_phase(bus: EventBus, event: Event, ctx: CallbackCtx | None, *, phase: str,
                        node_id: str | None = None) -> Outcome:
    """``bus.publish``; a handler's failure is raised as a :class:`PhaseError` of ``phase``."""
    try:
        return await bus.publish(event, ctx)
    except HandlerError as exc:
        raise phase_error(exc, phase, node_id) from exc


def publish_phase_sync(bus: EventBus, event: Event, ctx: CallbackCtx | None, *, phase: str,
                       node_id: str | None = None) -> Outcome:
    """``bus.publish_sync``; a handler's failure is raised as a :class:`PhaseError` of ``phase``."""
    try:
        return bus.publish_sync(event, ctx)
    except HandlerError as exc:
        raise phase_error(exc, phase, node_id) from exc


def publish_before_download(bus: EventBus, ctx: CallbackCtx, *, model_id: str, node_id: str,
                            mode: DownloadMode, source: str = "", destination: str = "",
                            files: tuple[str, ...] = (), expected_bytes: int = 0) -> Outcome:
    """Build and publish ``BeforeDownload`` on a node (in a thread of that node's process), the one
    place both the node task and the stock Ray Serve callback do it."""
    event = BeforeDownload(model_id=model_id, node_id=node_id, source=source, destination=destination, mode=mode,
                           files=files, expected_bytes=expected_bytes)
    return publish_phase_sync(bus, event, ctx, phase=Phase.BEFORE_DOWNLOAD, node_id=node_id)


async def publish_failure(bus: EventBus, ctx: CallbackCtx | None, exc: BaseException, *, model_id: str,
                          phase: str, node_id: str | None = None, log: Any = _log) -> None:
    """Log a failed init and publish ``InitFailed`` (bounded; a failing handler is only logged)."""
    info = ErrorInfo(type=type(exc).__name__, message=str(exc), phase=phase, node_id=node_id)
    log.error("node init failed", phase=phase, node_id=node_id, error=str(exc))
    try:
        with anyio.move_on_after(TEARDOWN_S):  # the original error must reach the caller
            await bus.publish(InitFailed(model_id=model_id, phase=phase, node_id=node_id, error=info), ctx)
    except Exception as handler_exc:  # the original error matters more
        log.error("an InitFailed handler failed", error=describe(handler_exc))
