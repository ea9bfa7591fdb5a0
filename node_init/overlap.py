"""The overlap policy: boot the engine on dummy weights while the weights download, or not.

Overlap is possible only when the replica's own node will fetch the whole model
(mode ``MODEL_AND_TOKENIZER``, not vetoed), the load format is not a streaming
one, and something is missing. ``engine.overlap: on`` then overlaps; ``off``
never does; ``auto`` overlaps a remote source when the missing bytes would take
longer than :data:`OVERLAP_MIN_S` to arrive, at the node's last measured rate,
else ``download.expected_rate_mb_s``, else the rate sampled live for
:data:`OVERLAP_PROBE_S`; a probe that sees no byte at all while the download is not done (a slow
start, or a second replica waiting on the first one's download lock) counts as a download in
progress and overlaps. The threshold guards the cost of overlapping
(the in-place reload, and the CPU the download takes from the boot).

An engine cannot start before vLLM is imported, and node init starts that import with the init, so
the download runs meanwhile. Given ``engine_ready``, ``auto`` decides once the engine could start,
on the bytes still missing then and the rate the node sees: a download the import already hid
boots plainly and pays no hand-off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import anyio
import attrs

from ._config import NodeInitConfig
from ._modes import DownloadMode
from .cluster import Decision

#: ``auto`` overlaps when the weights would take longer than this (seconds) to arrive.
OVERLAP_MIN_S = 2.0
#: How long ``auto`` samples the live download rate when none was measured before.
OVERLAP_PROBE_S = 0.5
#: How often ``auto`` looks whether the engine could start yet.
ENGINE_POLL_S = 0.05


@attrs.frozen
class OverlapChoice:
    """What the policy decided, and on what grounds (logged with the decision).

    Attributes:
        overlap: Whether to boot on dummy weights now.
        reason: ``off``; why it cannot (``cached``: nothing missing, ``vetoed``, ``streaming``,
            ``mode TOKENIZER_ONLY``...); ``on``, ``local``, ``finished``, ``no bytes yet``, ``fast``
            or ``slow``.
        rate_mb_s: The rate the estimate used, if any.
        estimated_s: Estimated seconds until the weights are in (0 when not estimated).
    """

    overlap: bool
    reason: str
    rate_mb_s: float | None = None
    estimated_s: float = 0.0


def overlap_possible(config: NodeInitConfig, decision: Decision) -> bool:
    """Whether the replica's node ends with something to fetch that an engine could take in place."""
    return (decision.mode is DownloadMode.MODEL_AND_TOKENIZER and not decision.vetoed
            and not config.streaming and decision.missing_bytes > 0)


def why_not(config: NodeInitConfig, decision: Decision) -> str:
    """Why the replica's node leaves nothing an engine could take in place ("" if it does)."""
    if decision.vetoed:
        return "vetoed"
    if config.streaming:
        return "streaming"
    if decision.mode is not DownloadMode.MODEL_AND_TOKENIZER:
        return f"mode {decision.mode.name}"
    if decision.missing_bytes <= 0:
        return "cached"  # every weight is in this node's cache already: a plain boot
    return ""


def is_remote(config: NodeInitConfig) -> bool:
    """Whether the model comes over the network (``auto`` boots a local source plainly)."""
    from .download import is_remote_source

    return is_remote_source(config.model_source)


def live_rate(samples: Sequence[tuple[float, int]], probe_s: float = OVERLAP_PROBE_S) -> float | None:
    """MB/s from ``(monotonic time, bytes done)`` progress samples of the node, or ``None``."""
    if not samples:
        return None
    t0, b0 = samples[0]
    t1, b1 = samples[-1]
    if t1 > t0 and b1 > b0:
        return (b1 - b0) / 1e6 / (t1 - t0)
    return b1 / 1e6 / probe_s if b1 > 0 else None


def decide(setting: Literal["auto", "on", "off"], *, possible: bool, remote: bool, missing_bytes: int,
           rate_mb_s: float | None, finished: bool, why_not: str = "impossible") -> OverlapChoice:
    """The policy itself, on what is known (see the module doc); ``why_not``: the reason given
    when it is not ``possible``."""
    if setting == "off":
        return OverlapChoice(False, "off")
    if not possible:
        return OverlapChoice(False, why_not)
    if setting == "on":
        return OverlapChoice(True, "on")
    if not remote:
        return OverlapChoice(False, "local")
    if finished:
        return OverlapChoice(False, "finished")
    if not rate_mb_s:
        # Nothing measured and no byte in the probe while the download goes on: the weights are
        # far away, or another process on this node holds the download lock and is fetching them
        # (a second replica). Either way it is a download in progress.
        return OverlapChoice(True, "no bytes yet")
    estimate = missing_bytes / 1e6 / rate_mb_s
    return OverlapChoice(estimate > OVERLAP_MIN_S, "slow" if estimate > OVERLAP_MIN_S else "fast",
                         rate_mb_s, estimate)


async def choose_overlap(config: NodeInitConfig, decision: Decision, *, done: anyio.Event,
                         samples: Sequence[tuple[float, int]],
                         engine_ready: Callable[[], bool] | None = None) -> OverlapChoice:
    """Decide for this init, sampling the live rate first when ``auto`` has nothing to go on.

    Args:
        config: The init's config (``engine.overlap``, ``download.expected_rate_mb_s``).
        decision: The replica's own node's decision after ``BeforeDownload``.
        done: Set when that node's download finished.
        samples: That node's progress so far ``(monotonic time, bytes done)``, appended to while we wait.
        engine_ready: Whether an engine could start now (vLLM imported); ``auto`` waits for it,
            at most ``engine.boot_timeout_s``, then decides on what is still missing.
    """
    setting = config.engine.overlap
    possible = overlap_possible(config, decision)
    remote = is_remote(config)
    rate = decision.rate_mb_s or config.download.expected_rate_mb_s
    missing = decision.missing_bytes
    if setting == "auto" and possible and remote and engine_ready is not None:
        with anyio.move_on_after(config.engine.boot_timeout_s):
            while not engine_ready() and not done.is_set():
                with anyio.move_on_after(ENGINE_POLL_S):
                    await done.wait()
        if samples and not done.is_set():
            missing = max(0, missing - samples[-1][1])
            if samples[-1][0] - samples[0][0] >= OVERLAP_PROBE_S:
                rate = live_rate(samples)  # the link as it is now, over a window long enough
    if setting == "auto" and possible and remote and rate is None and not done.is_set():
        # Nothing measured yet: sample the live rate briefly (a fast link finishes meanwhile).
        with anyio.move_on_after(OVERLAP_PROBE_S):
            await done.wait()
        rate = None if done.is_set() else live_rate(samples)
    return decide(setting, possible=possible, why_not=why_not(config, decision), remote=remote, missing_bytes=missing,
                  rate_mb_s=rate, finished=done.is_set())


__all__ = ["OVERLAP_MIN_S", "OVERLAP_PROBE_S", "OverlapChoice", "choose_overlap", "decide", "is_remote", "live_rate",
           "overlap_possible", "why_not"]
