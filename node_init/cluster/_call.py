"""The one place a node waits for an exchange actor's answer: ``ray.get`` within a bound, timed,
and every way Ray can fail to answer made one exception (:class:`Unanswered`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from ._metrics import timed_call


class Unanswered(Exception):
    """An exchange call got no answer: its actor died (``dead``: with its node, or it exited), the
    call ran past its bound, or Ray failed to carry it. The caller then uses the source.

    Args:
        error: What Ray raised.
        dead: Whether the actor itself is gone (the caller may ask the hub where its ranges went).
    """

    def __init__(self, error: BaseException, *, dead: bool) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error, self.dead = error, dead

    @property
    def kind(self) -> str:
        """The name of what Ray raised (for logs: the message may be long)."""
        return type(self.error).__name__

    @property
    def late(self) -> bool:
        """Whether the call ran past its bound (rather than failed)."""
        return isinstance(self.error, TimeoutError)


@contextlib.contextmanager
def answering(name: str | None) -> Iterator[None]:
    """The block's calls are exchange calls: timed as ``name`` (``node_init_exchange_call_seconds``;
    ``None``: not timed), and a failure to answer raised as :class:`Unanswered`."""
    import ray

    try:
        with timed_call(name) if name is not None else contextlib.nullcontext():
            yield
    except ray.exceptions.RayActorError as exc:
        raise Unanswered(exc, dead=True) from exc
    except (ray.exceptions.RayError, TimeoutError) as exc:  # GetTimeoutError is both
        raise Unanswered(exc, dead=False) from exc


def call(name: str | None, timeout: float, send: Callable[..., Any], *args: Any) -> Any:
    """Send one exchange call (``send(*args)`` makes it: a handle's method, returning the actor
    call's object reference) and wait at most ``timeout`` for its answer.

    Raises:
        Unanswered: No answer in time, or the actor is gone.
    """
    import ray

    with answering(name):
        return ray.get(send(*args), timeout=timeout)


def read(ref: Any, timeout: float) -> Any:
    """An object's value (a piece a peer offered), within ``timeout``.

    Raises:
        Unanswered: Not readable in time (its owner hangs), or lost (its owner's node died).
    """
    import ray

    with answering(None):
        return ray.get(ref, timeout=timeout)
