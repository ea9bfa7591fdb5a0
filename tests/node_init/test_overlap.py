"""The overlap policy's decision, on what it is given (no Ray, no engine)."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from node_init import DownloadMode, parse_config
from node_init.cluster import Decision
from node_init.overlap import (
    OVERLAP_MIN_S,
    OVERLAP_PROBE_S,
    choose_overlap,
    decide,
    live_rate,
    overlap_possible,
    why_not,
)

MB = 1_000_000


def cfg(overlap: str = "auto", source: str = "s3://models/m", **download: Any) -> Any:
    return parse_config({"model_id": "m", "model_source": source, "download": download,
                         "engine": {"kind": "vllm", "overlap": overlap}})


async def _set_after(event: anyio.Event, delay_s: float) -> None:
    """The node's download finishing ``delay_s`` from now."""
    await anyio.sleep(delay_s)
    event.set()


def decision(missing: int = 100 * MB, *, mode: DownloadMode = DownloadMode.MODEL_AND_TOKENIZER,
             vetoed: bool = False, rate: float | None = None) -> Decision:
    return Decision(node_id="n", mode=mode, vetoed=vetoed, path="/p", missing_bytes=missing, rate_mb_s=rate)


@pytest.mark.parametrize(("kwargs", "possible", "reason"), [
    ({}, True, ""),
    ({"missing": 0}, False, "cached"),                                  # a complete cache: nothing to hide
    ({"mode": DownloadMode.TOKENIZER_ONLY}, False, "mode TOKENIZER_ONLY"),  # the weights never come here
    ({"mode": DownloadMode.NONE}, False, "mode NONE"),
    ({"vetoed": True}, False, "vetoed"),
])
def test_possible_only_when_the_whole_model_is_still_to_come(kwargs: dict[str, Any], possible: bool,
                                                             reason: str) -> None:
    assert overlap_possible(cfg(), decision(**kwargs)) is possible
    assert why_not(cfg(), decision(**kwargs)) == reason  # the logged reason names the case, not "impossible"


def test_a_streaming_load_format_never_overlaps() -> None:
    streaming = parse_config({"model_id": "m", "model_source": "s3://bkt/m",
                              "engine": {"kind": "vllm", "kwargs": {"load_format": "runai_streamer"}}})
    assert not overlap_possible(streaming, decision())


def test_off_and_on_are_obeyed_where_possible() -> None:
    common = {"remote": True, "missing_bytes": 100 * MB, "rate_mb_s": 1000.0, "finished": False}
    assert not decide("off", possible=True, **common).overlap
    assert decide("on", possible=True, **common).overlap
    assert not decide("on", possible=False, **common).overlap
    # `on` overlaps a local source too; `auto` boots it plainly.
    assert decide("on", possible=True, **{**common, "remote": False}).overlap
    assert decide("auto", possible=True, **{**common, "remote": False}).reason == "local"


def test_auto_overlaps_when_the_estimate_exceeds_the_threshold() -> None:
    def auto(missing_mb: float, rate: float | None, finished: bool = False) -> Any:
        return decide("auto", possible=True, remote=True, missing_bytes=int(missing_mb * MB), rate_mb_s=rate,
                      finished=finished)

    slow = auto(100, 10.0)  # 10 s
    assert slow.overlap and slow.reason == "slow" and slow.estimated_s == pytest.approx(10.0)
    fast = auto(100, 1000.0)  # 0.1 s
    assert not fast.overlap and fast.reason == "fast"
    assert not auto(OVERLAP_MIN_S * 10 - 1, 10.0).overlap  # just under the threshold
    assert auto(OVERLAP_MIN_S * 10 + 1, 10.0).overlap
    waiting = auto(100, None)  # no byte in the probe: another replica's download, or a slow start
    assert waiting.overlap and waiting.reason == "no bytes yet"
    assert auto(100, 10.0, finished=True).reason == "finished"


def test_live_rate_from_progress_samples() -> None:
    assert live_rate([]) is None
    assert live_rate([(10.0, 0), (12.0, 20 * MB)]) == pytest.approx(10.0)
    # One sample: bytes over the probe window.
    assert live_rate([(10.0, 5 * MB)]) == pytest.approx(5 / OVERLAP_PROBE_S)
    assert live_rate([(10.0, 0)]) is None


@pytest.mark.anyio
async def test_the_measured_rate_wins_over_the_configured_one_and_no_probe_runs() -> None:
    done = anyio.Event()
    start = time.monotonic()
    choice = await choose_overlap(cfg(expected_rate_mb_s=1000.0), decision(rate=10.0), done=done, samples=[])
    assert time.monotonic() - start < OVERLAP_PROBE_S / 2  # a known rate needs no probe
    assert choice.overlap and choice.rate_mb_s == 10.0
    choice = await choose_overlap(cfg(expected_rate_mb_s=1000.0), decision(), done=done, samples=[])
    assert not choice.overlap and choice.rate_mb_s == 1000.0


@pytest.mark.anyio
async def test_auto_probes_the_live_rate_when_nothing_is_known() -> None:
    done = anyio.Event()
    now = time.monotonic()
    samples = [(now, 0), (now + 0.4, 2 * MB)]  # 5 MB/s: 100 MB takes 20 s
    start = time.monotonic()
    choice = await choose_overlap(cfg(), decision(), done=done, samples=samples)
    assert time.monotonic() - start >= OVERLAP_PROBE_S * 0.9
    assert choice.overlap and choice.rate_mb_s == pytest.approx(5.0)


@pytest.mark.anyio
async def test_a_download_waited_for_overlaps_under_auto() -> None:
    """A second replica on the node waits on the first one's lock: no bytes, yet a download in progress."""
    start = time.monotonic()
    choice = await choose_overlap(cfg(), decision(), done=anyio.Event(), samples=[])
    assert choice.overlap and choice.reason == "no bytes yet"
    assert time.monotonic() - start >= OVERLAP_PROBE_S * 0.9


@pytest.mark.anyio
async def test_a_download_that_finishes_during_the_probe_boots_plainly() -> None:
    done = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_set_after, done, 0.05)
        choice = await choose_overlap(cfg(), decision(), done=done, samples=[(0.0, 0), (1.0, 100 * MB)])
    assert not choice.overlap and choice.reason == "finished"


class _Import:
    """Stands for vLLM's import: ready once ``at`` (monotonic) has passed."""

    def __init__(self, after_s: float) -> None:
        self.at = time.monotonic() + after_s

    def ready(self) -> bool:
        return time.monotonic() >= self.at


async def _progress(samples: list[tuple[float, int]], rate_mb_s: float, until: float) -> None:
    """Append ``(time, bytes done)`` every 50 ms at ``rate_mb_s`` until ``until`` seconds have passed."""
    start = time.monotonic()
    while (now := time.monotonic()) - start < until:
        samples.append((now, int((now - start) * rate_mb_s * MB)))
        await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_auto_decides_once_the_engine_could_start_on_what_is_still_missing() -> None:
    """100 MB at 40 MB/s: 2.5 s from the start, but only ~1.3 s left when the import ends at 1.2 s."""
    samples: list[tuple[float, int]] = []
    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_progress, samples, 40.0, 1.5)
        choice = await choose_overlap(cfg(), decision(), done=anyio.Event(), samples=samples,
                                      engine_ready=_Import(1.2).ready)
    assert time.monotonic() - start >= 1.2  # waited for the import
    assert not choice.overlap and choice.reason == "fast"  # the import hid most of the download
    assert choice.rate_mb_s == pytest.approx(40.0, rel=0.25)
    assert choice.estimated_s == pytest.approx(1.3, abs=0.4)
    # The same link without an import to wait for: 2.5 s to go, so it overlaps.
    assert (await choose_overlap(cfg(), decision(rate=40.0), done=anyio.Event(), samples=[])).overlap


@pytest.mark.anyio
async def test_auto_still_overlaps_a_download_slower_than_the_import() -> None:
    samples: list[tuple[float, int]] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(_progress, samples, 5.0, 0.8)
        choice = await choose_overlap(cfg(), decision(), done=anyio.Event(), samples=samples,
                                      engine_ready=_Import(0.6).ready)
    assert choice.overlap and choice.reason == "slow" and choice.estimated_s > 15  # ~97 MB at 5 MB/s


@pytest.mark.anyio
async def test_a_download_done_before_the_import_boots_plainly_at_once() -> None:
    done = anyio.Event()
    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_set_after, done, 0.2)
        choice = await choose_overlap(cfg(), decision(), done=done, samples=[], engine_ready=_Import(30).ready)
    assert not choice.overlap and choice.reason == "finished"
    assert time.monotonic() - start < 1.0  # no waiting for the import once nothing is missing
