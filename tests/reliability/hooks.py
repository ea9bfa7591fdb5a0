"""Faulty handlers for the reliability suite (imported on every node by path)."""

from __future__ import annotations

import os
import time

from eventbus import HandlerSet
from node_init import AfterInit, BeforeDownload, BeforeEngineInit, BeforeInit, CallbackCtx

PHASE_EVENTS = {"before_init": BeforeInit, "before_download": BeforeDownload,
                "before_engine_init": BeforeEngineInit, "after_init": AfterInit}


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

    secret = reveal(ctx.llm_config.download.s3.secret_access_key)  # a frame local a traceback could show
    raise RuntimeError(f"injected failure on {event.node_id} ({len(secret or '')} characters held)")
