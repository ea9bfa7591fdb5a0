"""Cold start: time to an engine with real weights, Ray 2.60's flow against ours, same run.

One model on a loopback S3-compatible endpoint behind a bandwidth-capping proxy, four ways:

- (a) ``ray``: Ray 2.60's own flow: ``download_model_files`` with a ``CloudMirrorConfig`` pointed at the
  endpoint (``AWS_ENDPOINT_URL``), then a normal ``AsyncLLM`` boot on the downloaded files;
- (b) ``off``: ours, ``overlap: off`` (download, then boot);
- (c) ``on``: ours, ``overlap: on`` (boot on dummy weights while downloading, then hand the weights over);
- (d) ``auto``: ours, ``overlap: auto``.

Each run is a fresh subprocess with an empty cache, so every download is cold (for ``auto``: no
measured rate either), on a local Ray started (and left to settle for 3 s) before the clock starts.
Runs are interleaved; medians of the repeats. Each run ends by generating greedy tokens, which must be
equal across ways (the weights are the real ones).

Run: ``python benchmarks/cold_start.py [--quick] [--models tiny smollm2] [--rates 50 100 0] [--name N]``
(rate 0 = uncapped). Writes ``results/N.{json,md,png}`` (default ``cold_start``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, markdown_table, median, write_outputs

REPO = Path(__file__).resolve().parent.parent
WAYS = ("ray", "off", "on", "auto")
ENGINE = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True}
PROMPT = "The capital of France is"
SETTLE_S = 3.0


def worker(way: str, uri: str, endpoint: str, cache: str) -> None:
    """One cold start in this (fresh) process; prints JSON with phases and greedy tokens."""
    import asyncio

    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "HF_HUB_CACHE": cache, "HOME": cache, "NODE_INIT_CACHE_DIR": cache,
                       "VLLM_CPU_KVCACHE_SPACE": "1"})
    import ray

    # Every way runs where a Serve replica does, on a live Ray node: started, then given a few
    # seconds to settle so its start-up CPU burst does not land on whichever way runs.
    ray.init(include_dashboard=False, log_to_driver=False, num_cpus=2)
    time.sleep(SETTLE_S)
    out = asyncio.run(_ray_way(uri) if way == "ray" else _our_way(way, uri, endpoint))
    print("RESULT " + json.dumps(out))


async def _ray_way(uri: str) -> dict[str, Any]:
    from ray.llm._internal.common.utils.cloud_utils import CloudMirrorConfig
    from ray.llm._internal.common.utils.download_utils import NodeModelDownloadable, download_model_files

    from node_init import NodeInitConfig
    from node_init.engine import boot_engine

    t0 = time.monotonic()
    path = download_model_files(model_id="bench/model", mirror_config=CloudMirrorConfig(bucket_uri=uri),
                                download_model=NodeModelDownloadable.MODEL_AND_TOKENIZER,
                                download_extra_files=False)
    t1 = time.monotonic()
    engine = await boot_engine(NodeInitConfig(model_id="bench"), str(path), dict(ENGINE))
    t2 = time.monotonic()
    tokens = await engine.generate_ids(PROMPT, max_tokens=8)
    await engine.shutdown()
    return {"total": t2 - t0, "download": t1 - t0, "engine_boot": t2 - t1, "download_start": 0.0,
            "download_end": t1 - t0, "boot_start": t1 - t0, "boot_end": t2 - t0, "tokens": tokens}


async def _our_way(way: str, uri: str, endpoint: str) -> dict[str, Any]:
    from node_init import initialize_node, parse_config

    config = parse_config({
        "model_id": "bench", "model_source": uri, "placement": None,
        "download": {"s3": {"endpoint_url": endpoint}, "timeout_s": 600},
        "engine": {"kind": "vllm", "overlap": way, "kwargs": ENGINE},
    })
    t0 = time.monotonic()
    result = await initialize_node(config)
    total = time.monotonic() - t0
    tokens = await result.engine.generate_ids(PROMPT, max_tokens=8)
    timings = dict(result.timings)
    await result.close()
    bus_s = timings.get("before_init", 0) + timings.get("before_engine_init", 0) + timings.get("after_init", 0)
    return {"total": total, **timings, "bus_seconds": bus_s, "tokens": tokens}


def one_run(way: str, uri: str, endpoint: str) -> dict[str, Any]:
    cache = tempfile.mkdtemp(prefix=f"cold-{way}-")
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", way, uri, endpoint, cache],
                              capture_output=True, text=True, timeout=900,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"{way} failed ({proc.returncode}): {proc.stderr[-3000:]}")
        return dict(json.loads(lines[-1][len("RESULT "):]))
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    import _models

    from node_init.testing import FaultProxy, S3Server

    server = S3Server().start()
    rows: list[dict[str, Any]] = []
    try:
        for model_name in args.models:
            path = getattr(_models, model_name)()
            size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
            server.upload_dir(path, "bench", model_name)
            uri = f"s3://bench/{model_name}"
            for rate in args.rates:
                proxy = FaultProxy(server.endpoint, rate_mb_s=rate or None).start()
                try:
                    samples: dict[str, list[dict[str, Any]]] = {w: [] for w in WAYS}
                    for i in range(args.repeats):
                        order = WAYS if i % 2 == 0 else tuple(reversed(WAYS))
                        for way in order:
                            run = one_run(way, uri, proxy.endpoint)
                            samples[way].append(run)
                            print(f"{model_name} {rate or 'uncapped'} MB/s {way}: {run['total']:.2f}s", flush=True)
                finally:
                    proxy.stop()
                tokens = {w: samples[w][0]["tokens"] for w in WAYS}
                assert len({json.dumps(t) for t in tokens.values()}) == 1, f"greedy tokens differ: {tokens}"
                row: dict[str, Any] = {"model": model_name, "mb": size / 1e6, "rate": rate or None}
                for way in WAYS:
                    keys = [k for k in samples[way][0] if isinstance(samples[way][0][k], float)]
                    row[way] = {k: median([s[k] for s in samples[way] if k in s]) for k in keys}
                ideal = max(row["off"].get("download", 0), row["on"].get("engine_boot", 0)) + \
                    row["on"].get("weights_load", 0)
                row["ideal_overlap"] = ideal
                rows.append(row)
    finally:
        server.stop()
    header = ["model", "link MB/s", "(a) Ray s", "(b) off s", "(c) on s", "(d) auto s", "(a)/(c)",
              "(c)/ideal", "(d)/best(b,c)", "bus share"]
    table = markdown_table(header, [[
        r["model"], r["rate"] or "uncapped", f"{r['ray']['total']:.2f}", f"{r['off']['total']:.2f}",
        f"{r['on']['total']:.2f}", f"{r['auto']['total']:.2f}", f"{r['ray']['total'] / r['on']['total']:.2f}x",
        f"{r['on']['total'] / r['ideal_overlap']:.2f}x" if r["ideal_overlap"] else "-",
        f"{r['auto']['total'] / min(r['off']['total'], r['on']['total']):.2f}x",
        f"{100 * r['on'].get('bus_seconds', 0) / r['on']['total']:.3f}%",
    ] for r in rows])
    print()
    print(table)
    write_outputs(args.name, {"repeats": args.repeats, "rows": rows}, table)
    plot(rows, args.name)


def plot(rows: list[dict[str, Any]], name: str) -> None:
    """A timeline per row: download and boot bars for each way."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 1.9 * len(rows) + 0.5), squeeze=False)
    for ax, row in zip(axes[:, 0], rows, strict=True):
        for y, way in enumerate(WAYS):
            r = row[way]
            dl = (r.get("download_start", r.get("placement", 0.0)), r.get("download", 0.0))
            boot_end = r["total"] - r.get("after_init", 0.0) - r.get("weights_load", 0.0)
            boot = (boot_end - r.get("engine_boot", 0.0), r.get("engine_boot", 0.0))
            ax.broken_barh([dl], (y - 0.35, 0.3), color="tab:blue")
            ax.broken_barh([boot], (y + 0.05, 0.3), color="tab:orange")
            if r.get("weights_load"):
                ax.broken_barh([(boot_end, r["weights_load"])], (y + 0.05, 0.3), color="tab:green")
            ax.text(r["total"] + 0.1, y, f"{r['total']:.1f}s", va="center", fontsize=8)
        ax.set_yticks(range(len(WAYS)), [f"({c}) {w}" for c, w in zip("abcd", WAYS, strict=True)])
        ax.set_title(f"{row['model']} at {row['rate'] or 'uncapped'} MB/s: download (blue), boot (orange), "
                     "weights hand-off (green)", fontsize=9)
        ax.invert_yaxis()
    axes[-1, 0].set_xlabel("seconds from the start of node init")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:6])
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    ap.add_argument("--rates", nargs="+", type=float, default=[50.0, 100.0, 0.0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one repeat")
    ap.add_argument("--name", default="cold_start", help="results/NAME.{json,md,png}")
    a = ap.parse_args()
    if a.quick:
        a.repeats = 1
    main(a)
