"""Faulty handlers for the reliability suite (imported on every node by path)."""

from __future__ import annotations

import os
import time

from eventbus import HandlerSet
from node_init import EVENTS, BeforeDownload, CallbackCtx

#: The event of each phase that has one a handler can veto (the registry says which).
PHASE_EVENTS = {str(spec.phase): cls for cls, spec in EVENTS.items() if spec.vetoable or spec.hook}


def _raiser(phase: str) -> HandlerSet:
    hs = HandlerSet()

    def boom(event: object, ctx: CallbackCtx) -> None:
        raise RuntimeError(f"injected failure in {phase} (pid {os.getpid()})")

    boom.__qualname__ = f"boom_{phase}"
    hs.add(PHASE_EVENTS[phase], boom)
    return hs


def _hanger(phase: str) -> HandlerSet:
    hs = HandlerSet()

    def hang(event: object, ctx: CallbackCtx) -> None:
        time.sleep(3600)  # a blocking call that never returns

    hang.__qualname__ = f"hang_{phase}"
    hs.add(PHASE_EVENTS[phase], hang, timeout=1.0, to_thread=True)
    return hs


raise_before_init = _raiser("before_init")
raise_before_download = _raiser("before_download")
raise_before_engine_init = _raiser("before_engine_init")
raise_after_init = _raiser("after_init")
hang_before_init = _hanger("before_init")
hang_before_download = _hanger("before_download")
hang_before_engine_init = _hanger("before_engine_init")
hang_after_init = _hanger("after_init")

# Raises CancelledError-like cancellation inside a handler: asyncio's CancelledError.
cancel_before_download = HandlerSet()


@cancel_before_download.on(BeforeDownload)
async def cancelled(event: BeforeDownload, ctx: CallbackCtx) -> None:
    import asyncio

    raise asyncio.CancelledError("injected cancellation")


#: A handler that holds the S3 secret in a local variable, then fails (logged, with its traceback).
leaky = HandlerSet()


@leaky.on(BeforeDownload, on_error="log")
def fail_holding_the_secret(event: BeforeDownload, ctx: CallbackCtx) -> None:
    from node_init import reveal

    download = ctx.llm_config.download  # a frame local a traceback could show:
    secret = reveal(download.s3.secret_access_key) or reveal(download.azure.account_key)
    raise RuntimeError(f"injected failure on {event.node_id} ({len(secret or '')} characters held)")


def _stuck(phase: str, kind: str) -> HandlerSet:
    """A handler that never returns: ``sync`` on the publishing thread (on a node, one C call nothing
    can interrupt), ``async`` awaiting forever, ``thread`` a C call in a worker thread."""
    import anyio

    hs = HandlerSet()
    if kind == "async":
        async def stuck(event: object, ctx: CallbackCtx) -> None:
            await anyio.sleep_forever()

        hs.add(PHASE_EVENTS[phase], stuck)
    else:
        def stuck(event: object, ctx: CallbackCtx) -> None:  # type: ignore[misc]
            time.sleep(3600)

        hs.add(PHASE_EVENTS[phase], stuck, to_thread=kind == "thread")
    stuck.__qualname__ = f"stuck_{kind}_{phase}"
    return hs


stuck_sync_before_download = _stuck("before_download", "sync")
stuck_async_before_download = _stuck("before_download", "async")
stuck_thread_before_download = _stuck("before_download", "thread")

