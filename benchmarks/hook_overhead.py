"""Publish cost of the event bus against the floor, a minimal loop and its peers.

For N = 0, 1, 10, 100 handlers, sync and async, in one run, interleaved:

- floor: a plain loop of direct calls / awaits;
- minimal: a minimal typed dispatch loop (handler tuple cached per event type,
  one await per async handler, a veto check, nothing else);
- ours: ``await bus.publish(event, ctx)``;
- ray: Ray 2.60's ``CallbackBase.run_callback`` (one callback object per
  subscriber, since Ray takes one callback class per deployment);
- blinker: ``Signal.send_async`` with N async receivers (async only);
- pluggy: ``pm.hook.x(...)`` with N hookimpls (sync only).

Prints a markdown table of median ns per publish and ratios; writes
``results/hook_overhead.{json,md,png}``.

Run: ``python benchmarks/hook_overhead.py [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _common import RESULTS, markdown_table, median, write_outputs

from eventbus import Event, EventBus

Runner = Callable[[int], Awaitable[float]]  # loops -> seconds


class Ev(Event, frozen=True, kw_only=True):
    x: int = 0


def make_handlers(n: int, is_async: bool) -> list[Any]:
    if is_async:

        async def h(event: Any, ctx: Any) -> None:
            return None

        return [h] * n

    def s(event: Any, ctx: Any) -> None:
        return None

    return [s] * n


def floor_runner(n: int, is_async: bool) -> Runner:
    handlers = make_handlers(n, is_async)
    ev, ctx = Ev(), object()
    if is_async:

        async def run(loops: int) -> float:
            t = time.perf_counter()
            for _ in range(loops):
                for h in handlers:
                    await h(ev, ctx)
            return time.perf_counter() - t
    else:

        async def run(loops: int) -> float:
            t = time.perf_counter()
            for _ in range(loops):
                for h in handlers:
                    h(ev, ctx)
            return time.perf_counter() - t

    return run


def minimal_runner(n: int, is_async: bool) -> Runner:
    """The target's yardstick: cached tuple per type, await per async handler, veto check."""
    entries = tuple((h, is_async) for h in make_handlers(n, is_async))
    cache: dict[type, tuple[tuple[Any, bool], ...]] = {Ev: entries}
    ev, ctx = Ev(), object()

    async def dispatch(event: Any, c: Any) -> bool:
        vetoed = False
        for h, a in cache[type(event)]:
            r = (await h(event, c)) if a else h(event, c)
            if r is False:
                vetoed = True
        return vetoed

    async def run(loops: int) -> float:
        t = time.perf_counter()
        for _ in range(loops):
            await dispatch(ev, ctx)
        return time.perf_counter() - t

    return run


def ours_runner(n: int, is_async: bool) -> Runner:
    bus = EventBus()
    for h in make_handlers(n, is_async):
        bus.subscribe(Ev, h)
    ev, ctx = Ev(), object()
    publish = bus.publish

    async def run(loops: int) -> float:
        t = time.perf_counter()
        for _ in range(loops):
            await publish(ev, ctx)
        return time.perf_counter() - t

    return run


def ray_runner(n: int, is_async: bool) -> Runner:
    from ray.llm._internal.common.callbacks.base import CallbackBase

    if is_async:

        class Cb(CallbackBase):
            async def on_before_node_init(self) -> None:
                return None
    else:

        class Cb(CallbackBase):  # type: ignore[no-redef]
            def on_before_node_init(self) -> None:  # type: ignore[override]
                return None

    cbs = [Cb(llm_config=None) for _ in range(n)]  # type: ignore[arg-type]

    async def run(loops: int) -> float:
        t = time.perf_counter()
        for _ in range(loops):
            for cb in cbs:
                await cb.run_callback("on_before_node_init")
        return time.perf_counter() - t

    return run


def blinker_runner(n: int) -> Runner:
    import blinker

    sig = blinker.Signal()
    for _ in range(n):

        async def r(sender: Any, **kw: Any) -> None:
            return None

        sig.connect(r, weak=False)
    ev, ctx = Ev(), object()

    async def run(loops: int) -> float:
        t = time.perf_counter()
        for _ in range(loops):
            await sig.send_async(ev, ctx=ctx)
        return time.perf_counter() - t

    return run


def pluggy_runner(n: int) -> Runner:
    import pluggy

    spec, impl = pluggy.HookspecMarker("bench"), pluggy.HookimplMarker("bench")

    class Spec:
        @spec
        def before_init(self, event: Any, ctx: Any) -> None: ...

    pm = pluggy.PluginManager("bench")
    pm.add_hookspecs(Spec)
    for i in range(n):

        class Plugin:
            @impl
            def before_init(self, event: Any, ctx: Any) -> None:
                return None

        pm.register(Plugin(), name=f"p{i}")
    hook = pm.hook.before_init
    ev, ctx = Ev(), object()

    async def run(loops: int) -> float:
        t = time.perf_counter()
        for _ in range(loops):
            hook(event=ev, ctx=ctx)
        return time.perf_counter() - t

    return run


async def empty_await_runner(loops: int) -> float:
    async def empty() -> None:
        return None

    t = time.perf_counter()
    for _ in range(loops):
        await empty()
    return time.perf_counter() - t


async def measure(runners: dict[str, Runner], loops: int, repeats: int) -> dict[str, float]:
    """Median ns per call of each runner, runs interleaved so drift hits all alike."""
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for r in runners.values():
        await r(max(loops // 10, 1))  # warm up
    for _ in range(repeats):
        for name, r in runners.items():
            gc.disable()
            try:
                samples[name].append(await r(loops) / loops * 1e9)
            finally:
                gc.enable()
    return {k: median(v) for k, v in samples.items()}


async def main(quick: bool) -> None:
    repeats = 5 if quick else 15
    rows: list[dict[str, Any]] = []
    for n in (0, 1, 10, 100):
        loops = max(200, (20000 if quick else 60000) // max(n, 1))
        for kind in ("sync", "async"):
            is_async = kind == "async"
            runners: dict[str, Runner] = {
                "floor": floor_runner(n, is_async),
                "minimal": minimal_runner(n, is_async),
                "ours": ours_runner(n, is_async),
                "ray": ray_runner(n, is_async),
            }
            if is_async:
                runners["blinker"] = blinker_runner(n)
            else:
                runners["pluggy"] = pluggy_runner(n)
            if n == 0:
                runners["empty_await"] = empty_await_runner
            res = await measure(runners, loops, repeats)
            row: dict[str, Any] = {"n": n, "kind": kind, "ns": res}
            ours = res["ours"]
            row["ours_vs_minimal"] = ours / res["minimal"]
            row["peer_speedup"] = {
                p: res[p] / ours for p in ("ray", "blinker", "pluggy") if p in res
            }
            if n == 0:
                row["ours_vs_empty_await"] = ours / res["empty_await"]
            rows.append(row)
            print(f"n={n:<3} {kind:<5} " + "  ".join(f"{k}={v:,.0f}ns" for k, v in res.items()), flush=True)

    header = ["N", "handlers", "floor ns", "minimal ns", "ours ns", "ours/minimal",
              "Ray run_callback ns", "Ray/ours", "peer", "peer ns", "peer/ours"]
    table_rows = []
    for row in rows:
        res = row["ns"]
        peer = "blinker" if row["kind"] == "async" else "pluggy"
        table_rows.append([
            row["n"], row["kind"], f"{res['floor']:,.0f}", f"{res['minimal']:,.0f}",
            f"{res['ours']:,.0f}", f"{row['ours_vs_minimal']:.2f}x",
            f"{res['ray']:,.0f}", f"{row['peer_speedup']['ray']:.1f}x",
            peer, f"{res[peer]:,.0f}", f"{row['peer_speedup'][peer]:.1f}x",
        ])
    table = markdown_table(header, table_rows)
    empty = [r for r in rows if r["n"] == 0]
    table += "\n\nNo subscriber: " + ", ".join(
        f"{r['kind']} publish = {r['ours_vs_empty_await']:.2f}x one bare `await` of an empty coroutine"
        for r in empty
    )
    print()
    print(table)
    path = write_outputs("hook_overhead", {"repeats": repeats, "rows": rows}, table)
    plot(rows)
    print(f"\nwrote {path} and {RESULTS / 'hook_overhead.png'}")


def plot(rows: list[dict[str, Any]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, kind in zip(axes, ("sync", "async"), strict=True):
        sub = [r for r in rows if r["kind"] == kind and r["n"] > 0]
        ns = [r["n"] for r in sub]
        for name in ("floor", "minimal", "ours", "ray", "blinker", "pluggy"):
            if name in sub[0]["ns"]:
                ax.plot(ns, [r["ns"][name] for r in sub], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("handlers")
        ax.set_title(f"{kind} handlers")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ns per publish (median)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "hook_overhead.png", dpi=110)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (for a smoke run)")
    args = ap.parse_args()
    asyncio.run(main(args.quick))
