"""Node-init wall time on 1, 2 and 4 nodes: a link per node, or one origin link for all; sharing on or off.

A ``ray.cluster_utils.Cluster`` of 4 nodes on this machine, each with its own cache root. Node i
reaches the one S3-compatible server through its own proxy (its ``AWS_ENDPOINT_URL``), which goes
through one shared proxy: capping the node proxies gives each node its own link (``per-node``),
capping the shared one gives all nodes one origin link (``shared``, a bucket behind one NAT or
proxy). A synthetic 4-file model of ~105 MB, engine ``none``. ``download.share`` ``off`` (every
node fetches everything from the origin) against ``auto`` (each range once from the origin, the
rest between nodes through Ray's object store). Origin bytes are what crossed the shared proxy.

Run: ``python benchmarks/scale_nodes.py [--quick] [--rate 25]``; writes ``results/scale_nodes.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from _common import RESULTS, markdown_table, median, write_outputs
from _origin_link import QUIET_S, REPO, origin_link_cluster, quiet_cluster

NODES = (1, 2, 4)
LINKS = ("per-node", "shared")
SHARES = ("off", "auto")


async def one_init(n: int, share: str, run: str, root: Path) -> dict[str, Any]:
    from node_init import initialize_node, parse_config
    from node_init.cluster import forget_holdings

    # Every row measures one init from the origin: no node may read from an earlier row's holders.
    forget_holdings("s3://bench/synthetic-100mb")

    config = parse_config({
        "model_id": (model_id := f"scale-{n}-{share}-{run}"), "model_source": "s3://bench/synthetic-100mb",
        "placement": {"bundles": [{f"n{i}": 1} for i in range(n)], "strategy": "SPREAD", "ready_timeout_s": 60},
        "download": {"timeout_s": 600, "share": share,
                     "s3": {"access_key_id": "testing", "secret_access_key": "testing"}},
    })
    quiet_cluster(max(NODES))
    t0 = time.monotonic()
    result = await initialize_node(config)
    total = time.monotonic() - t0
    await result.close()
    assert len(result.reports) == n, [r.node_id for r in result.reports]
    for i in range(n):  # each row writes the model once per node: free it before the next
        (root / f"n{i}" / model_id).unlink(missing_ok=True)  # a link to the snapshot in the store
        shutil.rmtree(root / f"n{i}" / ".node-init" / model_id, ignore_errors=True)
    return {"total": total, "download": result.timings["download"],
            "slowest_node": max(r.seconds for r in result.reports),
            "peer_bytes": sum(r.peer_bytes for r in result.reports)}


KILL_AT_MB = 10


async def kill_one(cluster: Any, doomed: Any, root: Path, source: Path) -> dict[str, Any]:
    """4 nodes sharing one init; the last node is removed (its raylet killed) once it has some bytes."""
    import hashlib

    import anyio

    from eventbus import EventBus
    from node_init import DownloadProgress, NodeInitError, initialize_node, parse_config

    config = parse_config({
        "model_id": "scale-killed", "model_source": "s3://bench/synthetic-100mb",
        "placement": {"bundles": [{f"n{i}": 1} for i in range(4)], "strategy": "SPREAD", "ready_timeout_s": 60},
        "download": {"timeout_s": 600, "share": "auto",
                     "s3": {"access_key_id": "testing", "secret_access_key": "testing"}},
    })
    from node_init.cluster import forget_holdings

    forget_holdings("s3://bench/synthetic-100mb")
    bus, seen = EventBus(), []
    bus.subscribe(DownloadProgress, lambda e, c: seen.append(e))
    quiet_cluster(max(NODES))

    async def remove_when_it_has_bytes() -> None:
        while not any(e.node_id == doomed.node_id and e.bytes_done >= KILL_AT_MB * 1e6 for e in seen):
            await anyio.sleep(0.05)
        cluster.remove_node(doomed, allow_graceful=False)

    t0, error = time.monotonic(), "succeeded"
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(remove_when_it_has_bytes)
            result = await initialize_node(config, bus=bus)
            await result.close()
            tg.cancel_scope.cancel()
    except* NodeInitError as group:
        err = group.exceptions[0]
        error = f"{type(err).__name__} naming node {'n3' if getattr(err, 'node_id', '') == doomed.node_id else '?'}"
    seconds = time.monotonic() - t0

    def digest(d: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}

    want = digest(source)
    identical = all(digest(root / f"n{i}" / "scale-killed") == want for i in range(3))
    return {"error": error, "seconds": seconds, "survivors_identical": identical}


def main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    from node_init.testing import write_model_files

    local = Path(tempfile.mkdtemp(prefix="scale-src-"))
    write_model_files(local, {f"model-0000{i}-of-00004.safetensors": 25 << 20 for i in range(1, 5)})
    size = sum(p.stat().st_size for p in local.iterdir())
    rate = args.rate * 1e6
    root = Path(tempfile.mkdtemp(prefix="scale-nodes-"))
    cases = [(link, share, n) for link in LINKS for share in SHARES for n in NODES]
    samples: dict[tuple[str, str, int], list[dict[str, Any]]] = {c: [] for c in cases}
    try:
        with origin_link_cluster(max(NODES), lambda i: {"NODE_INIT_CACHE_DIR": str(root / f"n{i}")}) as cl:
            cl.server.upload_dir(local, "bench", "synthetic-100mb")
            shared, proxies = cl.shared, cl.proxies
            for n in NODES:  # warm-up, discarded: a Ray worker on every node, as on a cluster that served before
                asyncio.run(one_init(n, "off", "warm-up", root))
            # The cluster's first shared init starts the exchange hub and agents (actors: worker processes);
            # the rows below are later inits, which find it running. Measured on its own, per-node links.
            for p in proxies:
                p.rate = rate
            first = asyncio.run(one_init(max(NODES), "auto", "first-shared", root))
            print(f"first shared init (starts the exchange hub), per-node link: {first['total']:.2f}s", flush=True)
            for run in range(args.repeats):
                for link, share, n in cases if run % 2 == 0 else list(reversed(cases)):  # interleaved
                    for p in proxies:
                        p.rate = rate if link == "per-node" else None
                    shared.rate = rate if link == "shared" else None
                    before = shared.bytes_sent
                    sample = asyncio.run(one_init(n, share, f"{link}-{run}", root))
                    sample["origin_bytes"] = shared.bytes_sent - before
                    samples[(link, share, n)].append(sample)
                    print(f"{link} link, share {share}, {n} node(s): {sample['total']:.2f}s, "
                          f"origin {sample['origin_bytes'] / 1e6:.0f} MB", flush=True)
            for p in proxies:
                p.rate = None
            shared.rate = rate
            before = shared.bytes_sent
            killed = asyncio.run(kill_one(cl.cluster, cl.added[-1], root, local))
            killed["origin_bytes"] = shared.bytes_sent - before
            print(f"node killed mid-exchange: {killed}", flush=True)
    finally:
        for d in (local, root):  # four node caches of the model each: gigabytes over the rows
            shutil.rmtree(d, ignore_errors=True)
    rows = [{"link": link, "share": share, "nodes": n,
             **{k: median([s[k] for s in samples[(link, share, n)]]) for k in samples[(link, share, n)][0]}}
            for link, share, n in cases]
    one = {(r["link"], r["share"]): r["total"] for r in rows if r["nodes"] == 1}
    targets = {("shared", "auto"): ("<= 1.30x", 1.30), ("per-node", "auto"): ("<= 0.70x", 0.70)}
    lines = []
    for r in rows:
        ratio = r["total"] / one[(r["link"], r["share"])]
        goal = targets.get((r["link"], r["share"])) if r["nodes"] == max(NODES) else None
        verdict = "" if goal is None else f"{goal[0]}: {'met' if ratio <= goal[1] else 'missed'}"
        lines.append([r["link"], r["share"], r["nodes"], f"{r['total']:.2f}", f"{ratio:.2f}x",
                      f"{r['origin_bytes'] / size:.2f}x", f"{r['peer_bytes'] / 1e6:.0f}", verdict])
    table = markdown_table(
        ["origin link", "share", "nodes", "node init s", "vs 1 node", "origin bytes / model", "peer MB",
         f"target ({max(NODES)} nodes)"], lines)
    table += (f"\n\nThe cluster's first shared init starts the exchange hub and each node's exchange agent, Ray "
              f"actors (a worker process each); every row above is a later init, which finds them running. "
              f"That first init, {max(NODES)} nodes, "
              f"per-node link: {first['total']:.2f} s ({first['total'] / one[('per-node', 'auto')]:.2f}x one node).")
    table += (f"\n\nA node removed mid-exchange (shared link, share auto, 4 nodes; `Cluster.remove_node` once it "
              f"had {KILL_AT_MB} MB): {killed['error']} after {killed['seconds']:.1f} s; the 3 survivors' snapshots "
              f"{'byte-identical to the source' if killed['survivors_identical'] else 'NOT identical to the source'}; "
              f"origin bytes {killed['origin_bytes'] / size:.2f}x the model.")
    table += (f"\n\nModel: 4 files, {size / 1e6:.0f} MB; {args.rate:g} MB/s per link; medians of {args.repeats} "
              f"runs, interleaved, each started on an idle cluster (the last run's placement group returned, then "
              f"{QUIET_S:g} s); {date.today().isoformat()}, this machine (2 cores: proxies, S3 server and "
              "the Ray nodes share them).")
    print()
    print(table)
    write_outputs("scale_nodes", {"rate_mb_s": args.rate, "model_bytes": size, "date": date.today().isoformat(),
                                  "rows": rows, "killed": killed, "first_shared": first,
                                  "samples": {"/".join(map(str, k)): v for k, v in samples.items()}}, table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    for ax, link in zip(axes, LINKS, strict=True):
        width = 0.38
        for k, share in enumerate(SHARES):
            vals = [next(r["total"] for r in rows if (r["link"], r["share"], r["nodes"]) == (link, share, n))
                    for n in NODES]
            ax.bar([i + (k - 0.5) * width for i in range(len(NODES))], vals, width, label=f"share {share}")
        ax.set_xticks(range(len(NODES)), [str(n) for n in NODES])
        ax.set_xlabel("nodes")
        ax.set_title(f"{link} origin link, {args.rate:g} MB/s")
    axes[0].set_ylabel("node init wall time (s)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "scale_nodes.png", dpi=110)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=25.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one run per size")
    a = ap.parse_args()
    if a.quick:
        a.repeats = 1
    main(a)
