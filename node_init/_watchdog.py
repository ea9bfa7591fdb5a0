"""The init's overall bound (``init_timeout_s``), kept by a thread: a blocked event loop cannot stop it.

At the deadline the watchdog logs what is still running (the phase, the event being published
and its handlers, each node still deciding or downloading) and cancels the init on its loop. If
the loop does not answer within :data:`GRACE_S` (a sync handler holds it), the watchdog raises
:class:`InitTimeout` in the loop's thread, which interrupts Python code there (a handler stuck
inside one blocking C call is interrupted when that call returns).
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections.abc import Callable

import anyio
import structlog

from ._errors import PhaseError

_log = structlog.get_logger("node_init")
#: Seconds the loop gets to honour the cancellation before its thread is interrupted.
GRACE_S = 5.0


class InitTimeout(Exception):
    """Raised into the event loop's thread when it did not honour the watchdog's cancellation."""


class Watchdog:
    """Cancels an init that outlives its bound, and says what was still running.

    Args:
        timeout_s: The bound.
        describe: What is running now, in words (called from the watchdog's thread).
    """

    def __init__(self, timeout_s: float, describe: Callable[[], str]) -> None:
        self.timeout_s = timeout_s
        self._describe = describe
        self._done = threading.Event()
        self._cancelled = threading.Event()
        self.fired = False
        self.what = ""
        self._scope: anyio.CancelScope | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id = threading.get_ident()

    def start(self, scope: anyio.CancelScope) -> None:
        """Arm it for ``scope`` (cancelled at the deadline), from the loop's own thread (asyncio)."""
        self._scope = scope
        self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        threading.Thread(target=self._watch, name="node-init-watchdog", daemon=True).start()

    def stop(self) -> None:
        """The init ended (either way): the watchdog does nothing more."""
        self._done.set()

    def _watch(self) -> None:
        if self._done.wait(self.timeout_s):
            return
        self.fired = True
        self.what = self._describe()
        _log.error("node init timed out", init_timeout_s=self.timeout_s, running=self.what)
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._cancel)  # runs once the loop is free
            except RuntimeError:  # the loop is closed: the init is over
                return
        if self._done.wait(GRACE_S) or (self._cancelled.is_set() and self._done.wait(GRACE_S)):
            return
        # The loop is held by synchronous code: interrupt it.
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), ctypes.py_object(InitTimeout))

    def _cancel(self) -> None:
        self._cancelled.set()
        if self._scope is not None:
            self._scope.cancel()

    def error(self, phase: str) -> PhaseError:
        """The error to raise once the watchdog fired."""
        return PhaseError(f"init_timeout_s ({self.timeout_s:g} s) expired; still running: {self.what}",
                          phase=phase, cause=f"InitTimeout: {self.what}")
