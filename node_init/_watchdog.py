"""The init's overall bound (``init_timeout_s``), kept by a thread: a blocked event loop cannot stop it.

At the deadline the watchdog logs what is still running (the phase, the event being published
and its handlers, each node still deciding or downloading) and cancels the init on its loop.
Only if the loop does not run that cancellation within :data:`~node_init._bounds.GRACE_S`
(synchronous code of the init holds it: a sync handler) does the watchdog raise
:class:`InitTimeout` in the loop's thread. Once the loop has run the cancellation, or the init
has ended, it never does: an init winding down (node tasks stopping, InitFailed) is bounded by
its own waits, and an exception raised into a thread after the init returned would land at a
random point of the caller's code.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections.abc import Callable

import anyio
import structlog

from ._bounds import GRACE_S
from ._errors import PhaseError

_log = structlog.get_logger("node_init")


class InitTimeout(Exception):
    """Raised into the event loop's thread when it did not honour the watchdog's cancellation."""


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    # ``None`` clears a pending one that has not been delivered yet.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exc) if exc is not None else None)


class Watchdog:
    """Cancels an init that outlives its bound, and says what was still running.

    Args:
        timeout_s: The bound.
        describe: What is running now, in words (called from the watchdog's thread).
    """

    def __init__(self, timeout_s: float, describe: Callable[[], str]) -> None:
        self.timeout_s = timeout_s
        self._describe = describe
        # One lock orders "the init ended" / "the loop took the cancel" against the interrupt.
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._cancelled = False
        self._interrupted = False
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
        """The init ended (either way): the watchdog does nothing more, and an interrupt it raised
        that the loop's thread has not yet received is withdrawn."""
        with self._lock:
            self._done.set()
            if self._interrupted:
                _set_async_exc(self._thread_id, None)

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
        if self._done.wait(GRACE_S):
            return
        with self._lock:
            if self._done.is_set() or self._cancelled:
                return  # the loop took the cancel: the init winds down within its own bounds
            # Synchronous code of the init holds the loop: interrupt it there.
            self._interrupted = True
            _set_async_exc(self._thread_id, InitTimeout)

    def _cancel(self) -> None:
        with self._lock:
            self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    def error(self, phase: str) -> PhaseError:
        """The error to raise once the watchdog fired."""
        return PhaseError(f"init_timeout_s ({self.timeout_s:g} s) expired; still running: {self.what}",
                          phase=phase, cause=f"InitTimeout: {self.what}")
