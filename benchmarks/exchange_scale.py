"""What one shared init costs the exchange hub, at 8, 64 and 512 nodes, with a 140 GB model.

The real :class:`~node_init.cluster.Exchange` (the hub's logic for one init) is driven in process by
simulated nodes: references only, no bytes. Each node joins with every range of the model and its
provisional claim, offers its share piece by piece (the default piece: a quarter of the 16 MiB range),
and takes every other range's pieces in order, eight ranges at a time (``download.concurrency``), as
``SharedSource`` does; then it says it finished. The loop is looptime's virtual clock, so no wait's
bound strikes because the simulation itself is slow. Counted: hub calls per init (a take says the
piece before it was written, so that costs no call of its own) and the hub logic's CPU-seconds.

A hub call also costs the hub's process Ray's own work (receive, deserialize, run, serialize the
answer, whose object reference is borrowed). That is measured here on a real Ray actor shaped like
the hub (async, ``max_concurrency`` 10,000): the actor's CPU per call of a ``take`` that answers with a
piece's reference, so calls convert to seconds honestly. Estimated hub CPU per init = logic CPU +
calls x that cost.

Run: ``python benchmarks/exchange_scale.py [--nodes 8 64] [--model-gb 140]``; writes
``results/exchange_scale.{json,md}``. Today's design cannot reach 512 nodes in a sensible time here
(about 18 million takes), which is why the rows stop at 64 unless asked.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import resource
import sys
import time
from pathlib import Path
from typing import Any

from _common import markdown_table, write_outputs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node_init.cluster import Exchange, piece_size, pieces_of, provisional

MIB = 1 << 20
PART = 16 * MIB  # download.part_size_mb's default
SHARD = 5 * (1 << 30)  # safetensors shards of 5 GiB, as large models are published
CONCURRENCY = 8  # download.concurrency's default: ranges a node reads at once
SILENCE_S = 20.0  # a third of the default stall bound


def units_for(model_bytes: int) -> list[tuple[str, str, int, int]]:
    units = []
    for i, lo_file in enumerate(range(0, model_bytes, SHARD)):
        size = min(SHARD, model_bytes - lo_file)
        units += [(f"model-{i:05d}.safetensors", "etag", lo, min(lo + PART, size)) for lo in range(0, size, PART)]
    return units


class Counted:
    """The exchange, each method call counted as the hub call a node would make."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.exchange, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return await method(*args, **kwargs)

        return call


async def one_init(nodes: int, model_bytes: int) -> dict[str, Any]:
    names = [f"node{i:04d}" for i in range(nodes)]
    units = units_for(model_bytes)
    piece = piece_size(PART)
    guess = provisional(units, names)
    hub = Counted(Exchange(piece))
    await hub.expect(names)

    async def node(name: str) -> None:
        owners = await hub.join(name, units, 60.0, [u for u, o in guess.items() if o == name])
        mine = [u for u in units if owners.get(u) == name]
        theirs = collections.deque(u for u in units if owners.get(u) not in (None, name))

        async def offer_all() -> None:
            for unit in mine:
                for i in range(pieces_of(unit, piece)):
                    await hub.offer(name, unit, i, [f"ref-{unit[0]}-{unit[2]}-{i}", 0, name], piece)
                    await asyncio.sleep(0)  # the next piece arrives from the source later

        async def take_worker() -> None:
            while theirs:
                unit = theirs.popleft()
                count = pieces_of(unit, piece)
                for i in range(count):
                    box = await hub.take(name, unit, i, SILENCE_S)
                    assert isinstance(box, list), (name, unit, i, box)
                await hub.taken(name, unit, count - 1)  # the last piece: no next take says it

        async with asyncio.TaskGroup() as tg:
            tg.create_task(offer_all())
            for _ in range(CONCURRENCY):
                tg.create_task(take_worker())
        await hub.finished(name)

    cpu0, t0 = time.process_time(), time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for name in names:
            tg.create_task(node(name))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    pieces = sum(pieces_of(u, piece) for u in units)
    calls = sum(hub.calls.values())
    return {"nodes": nodes, "ranges": len(units), "pieces": pieces, "calls": calls, "by_call": dict(hub.calls),
            "calls_per_range_plus_node": calls / (len(units) + nodes), "logic_cpu_s": cpu, "sim_wall_s": wall}


def ray_call_cost(calls: int = 3000) -> dict[str, float]:
    """CPU-seconds a hub-shaped Ray actor spends per ``take`` answered with a piece's reference, and
    the round trip of one call, on this machine."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        @ray.remote(num_cpus=0, max_concurrency=10_000)
        class Hub:
            def __init__(self) -> None:
                self.box: list[Any] = []

            async def offer(self, key: Any, node: str, unit: Any, index: int, box: list[Any], nbytes: int) -> str:
                self.box = box
                return "ok"

            async def take(self, key: Any, node: str, unit: Any, index: int, timeout: float) -> list[Any]:
                return self.box

            async def cpu(self) -> float:
                r = resource.getrusage(resource.RUSAGE_SELF)
                return r.ru_utime + r.ru_stime

        hub = Hub.remote()  # type: ignore[attr-defined]
        key, unit = ("init", 4 * MIB, 600.0), ("model-00000.safetensors", "etag", 0, PART)
        ray.get(hub.offer.remote(key, "owner", unit, 0, [ray.put(b"x" * 1024), 0, "owner"], 1024))
        ray.get([hub.take.remote(key, "n", unit, 0, SILENCE_S) for _ in range(200)])  # warm
        c0 = ray.get(hub.cpu.remote())
        ray.get([hub.take.remote(key, "n", unit, 0, SILENCE_S) for _ in range(calls)])
        per_call_cpu = (ray.get(hub.cpu.remote()) - c0) / calls
        t0 = time.perf_counter()
        for _ in range(300):
            ray.get(hub.take.remote(key, "n", unit, 0, SILENCE_S))
        return {"hub_cpu_per_call_s": per_call_cpu, "round_trip_s": (time.perf_counter() - t0) / 300}
    finally:
        ray.shutdown()


def main() -> None:
    import looptime

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--model-gb", type=float, default=140.0)
    ap.add_argument("--design", default="today", help="a label for the rows (the protocol measured)")
    args = ap.parse_args()
    cost = ray_call_cost()
    print(f"one hub call on a real Ray actor: {cost['hub_cpu_per_call_s'] * 1e6:.0f} us of the hub's CPU, "
          f"{cost['round_trip_s'] * 1e3:.2f} ms round trip", flush=True)
    rows = []
    for n in args.nodes:
        loop = looptime.new_event_loop()
        try:
            row = loop.run_until_complete(one_init(n, int(args.model_gb * 1e9)))
        finally:
            loop.close()
        row["hub_cpu_s"] = row["logic_cpu_s"] + row["calls"] * cost["hub_cpu_per_call_s"]
        row["design"] = args.design
        rows.append(row)
        print(f"{n} nodes: {row['calls']:,} hub calls ({row['calls_per_range_plus_node']:.1f} x (ranges + nodes)), "
              f"logic {row['logic_cpu_s']:.1f} CPU-s, hub {row['hub_cpu_s']:.1f} CPU-s", flush=True)
    table = markdown_table(
        ["design", "nodes", "ranges", "pieces", "hub calls", "calls / (ranges + nodes)", "logic CPU s",
         "est. hub CPU s"],
        [[r["design"], r["nodes"], f"{r['ranges']:,}", f"{r['pieces']:,}", f"{r['calls']:,}",
          f"{r['calls_per_range_plus_node']:.1f}", f"{r['logic_cpu_s']:.1f}", f"{r['hub_cpu_s']:.1f}"] for r in rows])
    print()
    print(table)
    path = write_outputs(f"exchange_scale_{args.design}", {"model_gb": args.model_gb, "ray_call": cost, "rows": rows},
                         table)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
