"""Every wait of an init, derived in one place from the config (:class:`Bounds`).

The relations docs/failures.md states hold for every config the parser accepts, and a property
test checks them: a wait on a peer is two thirds of the stall bound at most, so the source
still has a third of it to send a range's first bytes; a node task ends within
:attr:`Bounds.stop_s` of being asked; an init fails within ``init_timeout_s`` plus
:attr:`Bounds.slack_s`; a retry never waits longer than :attr:`Bounds.retry_wait_s` (a third of
the stall bound), so a server's long ``Retry-After`` is asked again sooner and never what fails a
download as stalled. ``tests/test_waits.py`` fails on a number bounding a wait anywhere else in
``node_init`` (polling intervals are named there, each with why).

Third-party calls that wait, each given its bound and retry policy from here (the scan cannot see
inside them):

- obstore's ``S3Store`` (S3 listings and reads): ``timeout`` :attr:`~Bounds.request_s` for a
  listing, :attr:`~Bounds.download_s` for a ranged GET (its bytes are bounded by the stall
  watchdog), ``connect_timeout`` :attr:`~Bounds.connect_s`, ``retry_config`` no retries of its own.
- urllib3's ``PoolManager`` (GCS, Azure and Hub requests, the signed S3 HEAD): ``Timeout(connect=
  connect_s, read=request_s)``, a streamed body's read :attr:`~Bounds.silence_s`; ``retries=False``.
- awscrt's SigV4 signing of a HEAD: its future is waited :attr:`~Bounds.request_s`.
- boto3/botocore (the S3 HEAD under the AWS credential chain): ``Config(connect_timeout=connect_s,
  read_timeout=request_s)``, one attempt (``total_max_attempts``); the chain's instance and container
  metadata calls: ``metadata_service_timeout`` connect_s, ``metadata_service_num_attempts``
  ``retries + 1``.
- google-auth (``gs://`` credentials): its transport is urllib3 with ``Timeout(connect_s,
  request_s)`` and no retries, given to ``google.auth.default`` and ``load_credentials_from_file``
  and to every token refresh. google-auth keeps two waits of its own that no setting reaches: its
  token endpoint's retry (three tries, backoff from 1 s) and the metadata server's check
  (``GCE_METADATA_TIMEOUT``, 3 s a try, passed by google-auth itself).
- azure-identity (``azure://`` without a key or SAS token): each credential's pipeline gets
  ``connection_timeout`` connect_s, ``read_timeout`` request_s, ``retry_total`` retries,
  ``retry_backoff_factor`` :data:`BACKOFF_FIRST_S`, ``retry_backoff_max`` retry_wait_s.
- huggingface_hub: the Hub module sets its calls' timeouts and retries (``node_init.download``'s Hub).
- filelock (a node's download lock): ``acquire(timeout=lock_s)``.
- Ray (``ray.get``/``ray.wait`` in ``cluster/``): :meth:`Bounds.rpc` of the wait each call carries.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import msgspec

from ._config import DownloadConfig, EngineConfig, NodeInitConfig, PlacementConfig


def _default(struct: type[msgspec.Struct], name: str) -> Any:
    """A config field's default, read from its struct (never copied here)."""
    (field,) = [f for f in msgspec.structs.fields(struct) if f.name == name]
    return field.default

#: The smallest ``download.stall_timeout_s`` accepted: a third of it bounds a peer's silence, and
#: below a third of a second a healthy peer's Ray call reads as a hung one.
MIN_STALL_S = 1.0
#: A Ray call's own latency on top of the wait it carries (actor queue, worker start, object transfer).
RPC_SLACK_S = 30.0
#: A node task's outer bound past its own (lock wait, download): catches a node that never answers.
NODE_SLACK_S = 60.0
#: Seconds the event loop gets to honour the watchdog's cancellation before its thread is interrupted.
GRACE_S = 5.0
#: Seconds between progress items a node streams (and between its checks for a stop request).
PROGRESS_EVERY_S = 0.25
#: Seconds a stopping node task gives its download thread to remove its temp files before it
#: returns without it (a thread stuck in a handler's C call cannot be interrupted: it is left
#: to finish or to die with its worker process).
THREAD_JOIN_S = 3.0
#: Seconds a node task asked to stop has before the replica cancels it: its thread's join, two
#: polls of the stop key, and a second for the KV write and the stream's end to cross.
STOP_S = THREAD_JOIN_S + 2 * PROGRESS_EVERY_S + 1.0
#: Seconds to wait for a cancelled node task's stream to end (then it is left to Ray).
CANCEL_DRAIN_S = 2.0
#: Bound on everything a failed init undoes (engine shutdown, placement group, InitFailed publish).
TEARDOWN_S = 10.0
#: The longest a source's connection is given to open (a host that takes longer is down or
#: unreachable); a shorter stall bound is the bound.
CONNECT_S = 10.0
#: The first backoff before a retry of a request; it doubles per attempt (times a jitter of 0.5-1).
BACKOFF_FIRST_S = 0.2
#: The longest backoff between two tries of one request.
BACKOFF_MAX_S = 8.0
#: The longest ``Retry-After`` waited out; a longer one is a server saying "not today": the retry
#: comes after this (or after :attr:`Bounds.retry_wait_s`, the shorter) and, if the answer is the
#: same, the error.
RETRY_AFTER_MAX_S = 60.0

# --- The exchange's waits (node_init/cluster/; docs/exchange.md names each) ---
# The exchange's actors are sent to Ray by value and never import node_init: they import these
# numbers, which travel with them as values.
#: A take's whole wait, in owner silences (:attr:`Bounds.peer_wait_s`): the range's owner gets one
#: silence, and a node that took the range over while the taker waited gets one more.
TAKE_SILENCES = 2
#: Seconds between an exchange actor's looks at its inits (expiry, idleness) and between a node's
#: reports of the bytes it holds for its peers: a polling interval, each look re-checks its own bound.
WATCH_EVERY_S = 1.0
#: An exchange actor looks at its idleness at least this many times per ``idle_s`` (and at most
#: :data:`WATCH_EVERY_S` apart), so it exits within a quarter of its idle bound past it.
IDLE_LOOKS = 4
#: Seconds between a node task's looks for its ``Decision`` until it is sent (then
#: :data:`PROGRESS_EVERY_S`): a polling interval, the replica may boot the engine on that decision.
DECISION_POLL_S = 0.02
#: Times a node takes one piece of a peer's range before it reads the rest from the source: the
#: first take, the new owner's offer once a lost piece's range was taken over, and one more if that
#: owner's object is lost too. Each take waits within what is left of :attr:`Bounds.peer_wait_s`.
TAKE_ATTEMPTS = 3
# --- end of the exchange's waits ---


@attrs.frozen
class Bounds:
    """The waits of one init, each named, from the config's few settings.

    Attributes:
        init_s: ``init_timeout_s``: the whole init.
        stall_s: ``download.stall_timeout_s``: no byte at all for this long fails a download.
        download_s: ``download.timeout_s``: one node's download.
        lock_s: ``download.lock_timeout_s``: a second process's wait for the node's downloader.
        placement_s: ``placement.ready_timeout_s``: a placement group's wait to be ready (its default
            for a handler's group when the config makes none).
        boot_s: ``engine.boot_timeout_s``: the engine's boot.
        hub_idle_s: ``download.share_hub_idle_s``: the exchange hub's life with no init open.
        retries: ``download.retries``: tries of a request after the first, on transient errors.
    """

    #: The smallest ``download.stall_timeout_s`` a config may set.
    MIN_STALL_S: ClassVar[float] = MIN_STALL_S

    init_s: float = _default(NodeInitConfig, "init_timeout_s")
    stall_s: float = _default(DownloadConfig, "stall_timeout_s")
    download_s: float = _default(DownloadConfig, "timeout_s")
    lock_s: float = _default(DownloadConfig, "lock_timeout_s")
    placement_s: float = _default(PlacementConfig, "ready_timeout_s")
    boot_s: float = _default(EngineConfig, "boot_timeout_s")
    hub_idle_s: float = _default(DownloadConfig, "share_hub_idle_s")
    retries: int = _default(DownloadConfig, "retries")

    @classmethod
    def of(cls, config: NodeInitConfig) -> Bounds:
        """The bounds of an init."""
        bounds = cls.of_download(config.download, init_s=config.init_timeout_s)
        if config.placement is not None:
            bounds = attrs.evolve(bounds, placement_s=config.placement.ready_timeout_s)
        return attrs.evolve(bounds, boot_s=config.engine.boot_timeout_s)

    @classmethod
    def of_download(cls, cfg: DownloadConfig, *, init_s: float | None = None) -> Bounds:
        """The bounds of a download (``init_s``: the init around it, if known)."""
        bounds = cls(stall_s=cfg.stall_timeout_s, download_s=cfg.timeout_s, lock_s=cfg.lock_timeout_s,
                     hub_idle_s=cfg.share_hub_idle_s, retries=cfg.retries)
        return bounds if init_s is None else attrs.evolve(bounds, init_s=init_s)

    @property
    def request_s(self) -> float:
        """A source's call (a listing, an API call, a HEAD) answers within the stall bound."""
        return self.stall_s

    @property
    def connect_s(self) -> float:
        """A source's connection opens within :data:`CONNECT_S`, or the stall bound if shorter."""
        return min(CONNECT_S, self.stall_s)

    @property
    def retry_wait_s(self) -> float:
        """The longest wait before a retry (a backoff, or a server's ``Retry-After``): a silence (a
        third of the stall bound), and :data:`RETRY_AFTER_MAX_S` at most. A range that waits to be
        retried leaves its next request two thirds of the stall bound to send bytes: a server asking
        for a longer wait than the stall bound allows is asked again sooner, never the reason a
        download fails as stalled."""
        return min(RETRY_AFTER_MAX_S, self.silence_s)

    @property
    def silence_s(self) -> float:
        """An owner that offers nothing for this long, and has not finished, counts as hung."""
        return self.stall_s / 3

    @property
    def peer_wait_s(self) -> float:
        """A node's wait for one piece of a peer's range, all told (two silences, two thirds of
        the stall bound): however often the range changes hands, the source keeps a third."""
        return TAKE_SILENCES * self.silence_s

    @property
    def retry_s(self) -> float:
        """The least a new owner gets after a lost piece (half a silence): Ray's get of a hung
        owner's object was seen to return seconds late, so a retry is never given nothing."""
        return self.silence_s / 2

    @property
    def join_s(self) -> float:
        """The exchange's wait for every node of the init to join before it assigns."""
        return self.stall_s

    @property
    def holders_s(self) -> float:
        """All the holders of one range, tried in turn (two thirds of the stall bound)."""
        return 2 * self.stall_s / 3

    @property
    def node_s(self) -> float:
        """Outer bound on one node's task: its own bounds (lock wait, download) plus slack."""
        return self.download_s + self.lock_s + NODE_SLACK_S

    @property
    def exchange_idle_s(self) -> float:
        """The hub drops an init's exchange unused this long (its replica died)."""
        return self.node_s + NODE_SLACK_S

    @property
    def stop_s(self) -> float:
        """A node task asked to stop (or past its deadline) has ended within this."""
        return STOP_S

    @property
    def slack_s(self) -> float:
        """An init fails within ``init_s`` plus this: the node tasks' stop, a cancelled task's
        drain, and the teardown of what the init started (each its own bound)."""
        return STOP_S + CANCEL_DRAIN_S + TEARDOWN_S

    @property
    def actor_call_s(self) -> float:
        """An exchange call that waits for nothing itself (a lost piece's note, a rehome, a new hub
        asking an older one whether it is idle): Ray's own latency only."""
        return self.rpc(0)

    def rpc(self, wait_s: float) -> float:
        """The bound on a Ray call that itself waits ``wait_s``."""
        return wait_s + RPC_SLACK_S
