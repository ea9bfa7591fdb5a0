"""What one shared init costs the exchange hub, at 8, 64 and 512 nodes, with a 140 GB model.

The exchange runs as it does on a cluster, in process and on looptime's virtual clock: the real
:class:`~node_init.cluster.ExchangeHub` assigns the ranges (one ``join`` per node), and each node's
agent (a real :class:`~node_init.cluster.AgentState`, as each node's
:class:`~node_init.cluster.ExchangeAgent` runs it) hands out the ranges its node owns. Simulated
nodes move references only, no bytes: each joins with every range of the model and its provisional
claim, offers its share piece by piece to its own agent (the default piece: a quarter of the 16 MiB
range), and takes every other range from its owner's agent, eight ranges at a time
(``download.concurrency``), as ``SharedSource`` does: a take answers with every offer of the range
already made, and one note after the last piece releases them.

Counted: hub calls and the hub's logic CPU-seconds per init (the join phase alone, which is all the
hub does in a healthy init, with each call's arguments pickled and unpickled as Ray would (every node's
ranges travel in its join; the exchange's sets are made once per distinct set), and the answer published
once); agent calls, the most any
one agent serves, and the agents' logic CPU. At 512 nodes the agent phase is simulated for one
agent (its node's ranges, taken by all 511 peers): the assignment balances bytes, so every agent
serves about as much, and the full phase would be 4 million takes on this one process.

A call also costs the receiving process Ray's own work (receive, deserialize, run, serialize the
answer). That is measured on a real Ray actor shaped like the hub and the agents (async,
``max_concurrency`` 10,000): its CPU per call of a ``take`` that answers with a piece's reference.
Estimated CPU = logic CPU + calls x that cost.

Run: ``python benchmarks/exchange_scale.py [--nodes 8 64 512] [--model-gb 140]``; writes
``results/exchange_scale_agents.{json,md}``. The design before this one (every piece offered to
and taken from the hub) was measured by this script as of commit fc9eb5a: its rows are in
``results/exchange_scale_today.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import pickle
import resource
import sys
import time
from pathlib import Path
from typing import Any

from _common import markdown_table, write_outputs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node_init.cluster import AgentState, ExchangeHub, HubState, needs_digest, piece_size, pieces_of, provisional

Unit = tuple[str, str, int, int]  # a range: (key, version tag, start, end)


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
    """An exchange, each method call counted as the Ray call a node would make, its arguments
    pickled and unpickled on the way (Ray serializes them; a reference travels as a small object)."""

    def __init__(self, exchange: Any) -> None:
        self.exchange = exchange
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.exchange, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
            answer = await method(*args, **kwargs)
            pickle.dumps(answer)
            return answer

        return call


class _Published:
    """Stands for the object reference of the one published answer: the hub pickles the answer once
    (``ray.put``); every node's join returns this small reference."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _Published.empty, ()

    @staticmethod
    def empty() -> _Published:
        return _Published(None)


class _Hub(ExchangeHub):
    """The hub, its answer published as on Ray (pickled once, handed out by reference)."""

    def _make(self, piece: int) -> HubState:
        return HubState(piece, publish=lambda answer: (pickle.dumps(answer), _Published(answer))[1])


async def one_init(nodes: int, model_bytes: int, *, agents_simulated: int | None = None) -> dict[str, Any]:
    names = [f"node{i:04d}" for i in range(nodes)]
    units = units_for(model_bytes)
    piece = piece_size(PART)
    key = ("init", piece, 3600.0)
    guess = provisional(units, names)
    digest = needs_digest(units)
    hub = Counted(_Hub(idle_s=600.0, call_s=30.0))  # download.share_hub_idle_s's default, Bounds.actor_call_s

    # The hub's part: every node joins (what the hub does in a healthy init, all of it).
    claims = {name: [u for u, o in guess.items() if o == name] for name in names}  # each node's own work
    cpu0 = time.process_time()
    await hub.expect(key, names)
    answers: dict[str, Any] = {}

    async def join(name: str) -> None:
        [answers[name]] = await hub.join(key, name, digest, [units], 60.0, claims[name], [name])

    async with asyncio.TaskGroup() as tg:
        for name in names:
            tg.create_task(join(name))
    hub_cpu = time.process_time() - cpu0
    assignment = answers[names[0]].value
    published = pickle.dumps(assignment)  # the one object every node and agent reads

    # The agents' part: each node's agent hands out what its node owns.
    served = names if agents_simulated is None else names[:agents_simulated]
    agents = {name: Counted(AgentState(piece)) for name in served}
    cpu0 = time.process_time()
    for name, agent in agents.items():
        await agent.exchange.adopt(pickle.loads(published), name)
    owners = assignment.owners

    async def owner(name: str) -> None:
        for unit in [u for u in units if owners.get(u) == name]:
            for i in range(pieces_of(unit, piece)):
                await agents[name].offer(name, unit, i, [f"ref-{unit[0]}-{unit[2]}-{i}", 0, name], piece)
                await asyncio.sleep(0)  # the next piece arrives from the source later
        await agents[name].finished(name)

    async def consumer(name: str) -> None:
        theirs = collections.deque(u for u in units if owners.get(u) in agents and owners[u] != name)

        async def take_worker() -> None:
            while theirs:
                unit = theirs.popleft()
                home, count, i = agents[owners[unit]], pieces_of(unit, piece), 0
                while i < count:
                    run = await home.take_run(name, unit, i, SILENCE_S)
                    assert isinstance(run, list), (name, unit, i, run)
                    i += len(run)
                await home.taken(name, unit, count - 1)  # the last piece: no next take says it

        async with asyncio.TaskGroup() as tg:
            for _ in range(CONCURRENCY):
                tg.create_task(take_worker())

    async with asyncio.TaskGroup() as tg:
        for name in served:
            tg.create_task(owner(name))
        for name in names:
            tg.create_task(consumer(name))
    agent_cpu = time.process_time() - cpu0
    if hub.exchange._watcher is not None:  # the hub's idle watch: no actor to end here
        hub.exchange._watcher.cancel()
    per_agent = {name: sum(agent.calls.values()) for name, agent in agents.items()}
    hub_calls = sum(hub.calls.values())
    return {"nodes": nodes, "ranges": len(units), "pieces": sum(pieces_of(u, piece) for u in units),
            "hub_calls": hub_calls, "hub_by_call": dict(hub.calls),
            "hub_calls_per_range_plus_node": hub_calls / (len(units) + nodes), "hub_logic_cpu_s": hub_cpu,
            "agents_simulated": len(served), "agent_calls_max": max(per_agent.values()),
            "agent_calls_mean": sum(per_agent.values()) / len(per_agent),
            "agent_logic_cpu_s_each": agent_cpu / len(served)}


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
    ap.add_argument("--nodes", type=int, nargs="+", default=[8, 64, 512])
    ap.add_argument("--model-gb", type=float, default=140.0)
    ap.add_argument("--full-agents-up-to", type=int, default=64,
                    help="simulate every agent up to this many nodes; above it, one (see the module's doc)")
    args = ap.parse_args()
    cost = ray_call_cost()  # imports Ray too, which the hub's code asks about (not counted as its work)
    per_call = cost["hub_cpu_per_call_s"]
    print(f"one call on a real Ray actor: {per_call * 1e6:.0f} us of its CPU, "
          f"{cost['round_trip_s'] * 1e3:.2f} ms round trip", flush=True)
    rows = []
    for n in args.nodes:
        loop = looptime.new_event_loop()
        try:
            row = loop.run_until_complete(one_init(
                n, int(args.model_gb * 1e9), agents_simulated=None if n <= args.full_agents_up_to else 1))
        finally:
            loop.close()
        row["hub_cpu_s"] = row["hub_logic_cpu_s"] + row["hub_calls"] * per_call
        row["agent_cpu_s"] = row["agent_logic_cpu_s_each"] + row["agent_calls_max"] * per_call
        rows.append(row)
        ratio = row["hub_calls_per_range_plus_node"]
        print(f"{n} nodes: {row['hub_calls']:,} hub calls ({ratio:.2f} x (ranges + nodes)), "
              f"hub {row['hub_cpu_s']:.2f} CPU-s; an agent serves at most {row['agent_calls_max']:,} calls, "
              f"{row['agent_cpu_s']:.1f} CPU-s", flush=True)
    table = markdown_table(
        ["nodes", "ranges", "pieces", "hub calls", "hub calls / (ranges + nodes)", "est. hub CPU s",
         "calls to one agent (max)", "est. CPU s per agent"],
        [[r["nodes"], f"{r['ranges']:,}", f"{r['pieces']:,}", f"{r['hub_calls']:,}",
          f"{r['hub_calls_per_range_plus_node']:.2f}", f"{r['hub_cpu_s']:.2f}", f"{r['agent_calls_max']:,}",
          f"{r['agent_cpu_s']:.1f}"] for r in rows])
    print()
    print(table)
    path = write_outputs("exchange_scale_agents", {"model_gb": args.model_gb, "ray_call": cost, "rows": rows}, table)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
