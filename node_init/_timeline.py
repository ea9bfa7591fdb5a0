"""What ``node-init`` shows of an init: a line per phase as it happens, then the timeline and the reports."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import msgspec

from eventbus import Event, EventBus

from ._config import NodeInitConfig
from ._events import AfterInit, BeforeEngineInit, BeforeInit, DownloadProgress, InitFailed, NodeDecided
from ._init import InitResult


class Timeline:
    """Records every event with its time; prints per-node progress bars (at most twice a second) unless
    ``bars`` is off."""

    def __init__(self, out: TextIO = sys.stderr, *, bars: bool = True) -> None:
        self.start = time.monotonic()
        self.events: list[tuple[float, Event]] = []
        self.out = out
        self.bars = bars
        self._bars: dict[str, tuple[int, int]] = {}
        self._last_print = 0.0

    def attach(self, bus: EventBus) -> None:
        # Highest priority: record before any handler can fail the publish.
        bus.subscribe(Event, self.record, priority=1_000_000)

    def record(self, event: Event, ctx: object) -> None:
        now = time.monotonic() - self.start
        if isinstance(event, DownloadProgress):
            self._bars[event.node_id] = (event.bytes_done, event.bytes_total)
            if self.bars and (now - self._last_print > 0.5 or event.bytes_done == event.bytes_total):
                self._last_print = now
                self._draw()
            if self.events and isinstance(self.events[-1][1], DownloadProgress) and \
                    self.events[-1][1].node_id == event.node_id:
                self.events[-1] = (now, event)  # keep one progress line per node run
                return
        self.events.append((now, event))

    def _draw(self) -> None:
        for node_id, (done, total) in self._bars.items():
            frac = done / total if total else 1.0
            bar = "#" * int(frac * 30)
            print(f"  download {node_id[:12]} [{bar:<30}] {done / 1e6:8.1f}/{total / 1e6:.1f} MB",
                  file=self.out, flush=True)

    def render(self) -> str:
        lines = ["timeline (s since start):"]
        for t, event in self.events:
            fields = {k: v for k, v in msgspec.structs.asdict(event).items()
                      if k not in ("reports", "files", "engine_kwargs")}
            text = ", ".join(f"{k}={_short(v)}" for k, v in fields.items())
            lines.append(f"  {t:7.3f}  {type(event).__name__:<17} {text}")
        return "\n".join(lines)


class Story:
    """One line per phase, as it happens, for a person at a terminal (``node-init demo``).

    Args:
        out: Where the lines go.
        start: The ``time.monotonic()`` the seconds count from.
    """

    def __init__(self, out: TextIO, start: float) -> None:
        self.out = out
        self.start = start
        self.config: NodeInitConfig | None = None
        self._fetched: set[str] = set()

    def attach(self, bus: EventBus, config: NodeInitConfig) -> None:
        """Tell the phases of the init of ``config`` published on ``bus``."""
        self.config = config
        # Just after the timeline, before any handler: a line per phase even if a handler fails it.
        bus.subscribe(Event, self.on_event, priority=999_999)

    def say(self, phase: str, text: str) -> None:
        """One line: seconds since the start, the phase, what happens."""
        print(f"{time.monotonic() - self.start:7.1f}s  {phase:<9} {text}", file=self.out, flush=True)

    def on_event(self, event: Event, ctx: object) -> None:
        if isinstance(event, BeforeInit):
            engine = ", then the engine" if self.config and self.config.engine.kind != "none" else ""
            self.say("init", f"{event.model_id}: placement, a download task per node{engine}")
        elif isinstance(event, NodeDecided):
            what = (f"vetoed by {', '.join(event.vetoed_by)}" if event.vetoed_by
                    else f"{event.mode.name}, {event.missing_bytes / 1e6:.1f} MB to fetch")
            self.say("download", f"node {event.node_id[:12]}: {what}")
        elif isinstance(event, DownloadProgress):
            if event.bytes_done == event.bytes_total and event.node_id not in self._fetched:
                self._fetched.add(event.node_id)
                self.say("download", f"node {event.node_id[:12]}: {event.bytes_total / 1e6:.1f} MB in place")
        elif isinstance(event, BeforeEngineInit):
            overlap = self.config.engine.overlap if self.config else "?"
            self.say("engine", f"vLLM starts on {event.model_path} (overlap: {overlap})")
        elif isinstance(event, AfterInit):
            total = event.timings.get("total", 0.0)
            how = (f"the engine booted on dummy weights, then took the weights in place (boot and download "
                   f"ran together {event.timings.get('overlap', 0.0):.1f} s)" if event.overlap
                   else "the engine booted on the weights")
            if self.config and self.config.engine.kind == "none":
                how = "no engine"
            self.say("ready", f"{event.model_id} in {total:.1f} s; {how}")
        elif isinstance(event, InitFailed):
            self.say("failed", f"{event.phase}: {event.error.type}: {event.error.message}")


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) > 40:
        return "..." + value[-37:]
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {round(v, 3) if isinstance(v, float) else _short(v)}"
                               for k, v in value.items()) + "}"
    return repr(value) if isinstance(value, str) else str(value)


def render_reports(result: InitResult) -> str:
    """The model's path, a line per node (mode, files, bytes fetched and cached, checks), the timings."""
    lines = [f"model path: {result.model_path}", "nodes:"]
    for r in result.reports:
        checked: dict[str, int] = {}
        for how in r.verified.values():
            checked[how] = checked.get(how, 0) + 1
        lines.append(
            f"  {r.node_id[:16]}  mode={r.mode.value:<19} fetched={len(r.files)} files "
            f"{r.bytes / 1e6:.1f} MB  cached={r.cached_bytes / 1e6:.1f} MB  {r.seconds:.2f}s"
            f"{'  VETOED' if r.vetoed else ''}  custom_data={r.custom_data}"
            + (f"  checked={','.join(f'{k}:{n}' for k, n in sorted(checked.items()))}" if checked else "")
            + (f"  rereads={len(r.rereads)}" if r.rereads else "")
            + (f"  bad_nodes={ {n[:12]: c for n, c in r.bad_nodes.items()} }" if r.bad_nodes else "")
        )
    lines.append("timings: " + ", ".join(f"{k}={v:.3f}s" for k, v in result.timings.items()))
    return "\n".join(lines)
