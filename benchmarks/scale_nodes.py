"""Node-init wall time on 1, 2 and 4 nodes, each with its own cache root and its own capped link.

A ``ray.cluster_utils.Cluster`` of 4 nodes on this machine; node i gets its own cache root and its
own bandwidth-capped proxy in front of one S3-compatible server (its ``AWS_ENDPOINT_URL``, which
overrides the config on that node). A synthetic multi-file model of ~100 MB, engine ``none``.
With a link per node, node init should take about as long on 4 nodes as on 1.

Run: ``python benchmarks/scale_nodes.py [--quick] [--rate 25]``; writes ``results/scale_nodes.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, markdown_table, median, write_outputs

REPO = Path(__file__).resolve().parent.parent
NODES = (1, 2, 4)


async def one_init(n: int, run: int) -> dict[str, Any]:
    from node_init import initialize_node, parse_config

    config = parse_config({
        "model_id": f"scale-{n}-{run}", "model_source": "s3://bench/synthetic-100mb",
        "placement": {"bundles": [{f"n{i}": 1} for i in range(n)], "strategy": "SPREAD", "ready_timeout_s": 60},
        "download": {"timeout_s": 600, "s3": {"access_key_id": "testing", "secret_access_key": "testing"}},
    })
    t0 = time.monotonic()
    result = await initialize_node(config)
    total = time.monotonic() - t0
    await result.close()
    assert len(result.reports) == n, [r.node_id for r in result.reports]
    return {"total": total, "download": result.timings["download"],
            "slowest_node": max(r.seconds for r in result.reports),
            "bus": result.timings["before_init"] + result.timings.get("before_engine_init", 0)
            + result.timings["after_init"]}


def main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    import ray
    from ray.cluster_utils import Cluster

    from node_init.testing import FaultProxy, S3Server, write_model_files

    server = S3Server().start()
    local = Path(tempfile.mkdtemp(prefix="scale-src-"))
    write_model_files(local, {f"model-0000{i}-of-00004.safetensors": 25 << 20 for i in range(1, 5)})
    server.upload_dir(local, "bench", "synthetic-100mb")
    size = sum(p.stat().st_size for p in local.iterdir())
    proxies = [FaultProxy(server.endpoint, rate_mb_s=args.rate).start() for _ in range(max(NODES))]
    root = Path(tempfile.mkdtemp(prefix="scale-nodes-"))
    os.environ["PYTHONPATH"] = str(REPO)
    os.environ["RAY_AUTH_MODE"] = "disabled"

    def env(i: int) -> dict[str, str]:
        return {"NODE_INIT_CACHE_DIR": str(root / f"n{i}"), "AWS_ENDPOINT_URL": proxies[i].endpoint}

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"n0": 1},
                                                            "env_vars": env(0), "include_dashboard": False})
    for i in range(1, max(NODES)):
        cluster.add_node(num_cpus=1, resources={f"n{i}": 1}, env_vars=env(i))
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    samples: dict[int, list[dict[str, Any]]] = {n: [] for n in NODES}
    try:
        for run in range(args.repeats):
            for n in NODES if run % 2 == 0 else tuple(reversed(NODES)):
                sample = asyncio.run(one_init(n, run))
                samples[n].append(sample)
                print(f"{n} node(s): {sample['total']:.2f}s", flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
        for p in proxies:
            p.stop()
        server.stop()
    rows = [{"nodes": n, **{k: median([s[k] for s in samples[n]]) for k in samples[n][0]}} for n in NODES]
    base = rows[0]["total"]
    table = markdown_table(
        ["nodes", "node init s", "vs 1 node", "download s", "slowest node s", "bus share"],
        [[r["nodes"], f"{r['total']:.2f}", f"{r['total'] / base:.2f}x", f"{r['download']:.2f}",
          f"{r['slowest_node']:.2f}", f"{100 * r['bus'] / r['total']:.3f}%"] for r in rows])
    table += f"\n\nModel: 4 files, {size / 1e6:.0f} MB; one {args.rate:g} MB/s link per node; {args.repeats} runs."
    print()
    print(table)
    write_outputs("scale_nodes", {"rate_mb_s": args.rate, "model_bytes": size, "rows": rows,
                                  "samples": {str(k): v for k, v in samples.items()}}, table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar([str(r["nodes"]) for r in rows], [r["total"] for r in rows], color="tab:blue")
    ax.set_xlabel("nodes")
    ax.set_ylabel("node init wall time (s)")
    ax.set_title(f"{size / 1e6:.0f} MB model, {args.rate:g} MB/s per node")
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
