"""Node init alone on 3 nodes sharing one origin link: our callback on stock Ray against Ray's ``initialize_node``.

Node init up to where Ray 2.60's ``VLLMEngine.start`` would build its engine config, on a 3-node
``ray.cluster_utils.Cluster`` whose nodes reach one S3-compatible server through one shared origin
link capped at ``--rate`` MB/s (``_origin_link``; origin bytes are what crossed it). Each run starts as
Ray would: a stock ``LLMConfig`` whose ``placement_group_config`` is 3 bundles, ``STRICT_SPREAD``, each
pinned to one node by its custom resource, and the group made by ``get_or_create_callback``; the clock
starts before that. Two ways:

- ``ray``: no callback; the group's readiness awaited (Serve places a replica in its group before the
  engine starts), then Ray's own ``initialize_node(llm_config)``: a Ray task per node of the group,
  each running ``download_model_files`` into that node's ``HF_HUB_CACHE``;
- ``callback``: ``node_init.ray_serve:EventBusCallback`` as ``callback_class`` with ``download.share:
  auto``; its ``on_before_node_init`` (our node init: a task per node, each range read once from the
  origin, the rest between nodes) and ``on_after_node_init``, as Ray runs them; Ray's download off.

No engine boots. Ray's downloader takes a non-blocking file lock (``~/MODEL_ID-full.lock``, in ``HOME``)
and a node finding it taken waits and skips its download: nodes sharing one disk would let Ray
download once. So each simulated node has its own ``HOME``, ``HF_HOME`` (Ray's copy goes to its
``HF_HUB_CACHE``) and ``NODE_INIT_CACHE_DIR`` (ours), every run starts with every
node's caches empty, and each run checks that every node holds the whole model afterwards. Those
per-node paths differ here, as they would not across real machines, so Ray's last step (an assertion
that every node returned the same path) fails after the downloads: the clock stops there, and the run
counts only when every node has the whole model. A synthetic model (JSON files and 4 weight files,
~273 MB by default); medians of ``--repeats`` runs, interleaved, each on an idle cluster, after one
warm-up run of each way on a 4 MB model (the first shared init also starts our exchange hub and agents).

Run: ``python benchmarks/node_init_3.py [--quick] [--rate 25] [--mb 65]``; writes ``results/node_init_3.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from _common import markdown_table, median, write_outputs
from _origin_link import QUIET_S, REPO, origin_link_cluster, quiet_cluster

NODES = 3
WAYS = ("ray", "callback")
MB = 1 << 20
#: Targets on 3 nodes sharing one link: ours at least this many times faster than Ray's, and the
#: origin's bytes for ours within this many times the model.
SPEEDUP, ORIGIN = 2.0, 1.05


def caches(root: Path, i: int) -> dict[str, Path]:
    """Node i's model caches: ours and Ray's (Hugging Face's)."""
    return {"ours": root / f"n{i}" / "ours", "hf": root / f"n{i}" / "hf"}


def node_env(root: Path, i: int) -> dict[str, str]:
    """Node i's own disk: its caches, and its ``HOME`` (where Ray's downloader takes its file lock)."""
    c = caches(root, i)
    return {"NODE_INIT_CACHE_DIR": str(c["ours"]), "HF_HOME": str(c["hf"]), "HF_HUB_CACHE": str(c["hf"] / "hub"),
            "HOME": str(root / f"n{i}" / "home")}


def llm_config(model_id: str, uri: str, *, callback: bool) -> Any:
    """A stock ``LLMConfig`` on a 3-node ``STRICT_SPREAD`` group (with our callback or none)."""
    from ray.serve.llm import LLMConfig

    extra: dict[str, Any] = {"accelerator_config": {"kind": "cpu"}}  # pydantic reads the dict
    if callback:
        extra["callback_config"] = {
            "callback_class": "node_init.ray_serve:EventBusCallback",
            "callback_kwargs": {"download": {"share": "auto", "timeout_s": 600,
                                             "s3": {"access_key_id": "testing", "secret_access_key": "testing"}}}}
    return LLMConfig(
        model_loading_config={"model_id": model_id, "model_source": uri},
        engine_kwargs={"dtype": "float32", "max_model_len": 256},
        placement_group_config={"bundles": [{f"n{i}": 1} for i in range(NODES)], "strategy": "STRICT_SPREAD"},
        **extra)


async def ray_way(model_id: str, uri: str) -> dict[str, Any]:
    """Ray 2.60's ``initialize_node`` on the group Ray makes from ``placement_group_config``."""
    import ray.util
    from ray.llm._internal.serve.utils.node_initialization_utils import initialize_node

    config = llm_config(model_id, uri, callback=False)
    t0 = time.monotonic()
    callback = config.get_or_create_callback()
    group = callback.ctx.placement_group
    await group.ready()
    placed = time.monotonic()
    same_path = True
    try:
        await initialize_node(config)
    except AssertionError as exc:  # every node's own HF_HOME: the paths differ (see the module's doc)
        if "not the same" not in str(exc):
            raise
        same_path = False
    total = time.monotonic() - t0
    ray.util.remove_placement_group(group)
    return {"total": total, "placement": placed - t0, "same_path": same_path}


async def callback_way(model_id: str, uri: str) -> dict[str, Any]:
    """Our ``EventBusCallback``'s two node-init hooks, as Ray's ``VLLMEngine.start`` runs them."""
    import ray.util

    from node_init.cluster import forget_holdings

    forget_holdings(uri)  # every run reads from the origin: no node may read from an earlier run's holders
    config = llm_config(model_id, uri, callback=True)
    t0 = time.monotonic()
    callback = config.get_or_create_callback()
    await callback.run_callback("on_before_node_init")
    before = time.monotonic() - t0
    assert not callback.ctx.run_init_node  # Ray's own download never runs
    await callback.run_callback("on_after_node_init")
    total = time.monotonic() - t0
    result = callback.result
    assert len(result.reports) == NODES, [r.node_id for r in result.reports]
    timings = {k: v for k, v in result.timings.items() if isinstance(v, float)}
    sample = {"total": total, "before_hook": before, "after_hook": total - before,
              "placement": timings.get("placement", 0.0), "download": timings.get("download", 0.0),
              "peer_bytes": sum(r.peer_bytes for r in result.reports)}
    await result.close()
    ray.util.remove_placement_group(callback.ctx.placement_group)
    return sample


def on_disk(path: Path) -> int:
    """Bytes of the regular files under ``path`` (each inode once; links not followed)."""
    seen: set[int] = set()
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if os.path.isfile(os.path.join(dirpath, name)) and not os.path.islink(os.path.join(dirpath, name)) \
                    and st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


def empty_caches(root: Path) -> None:
    for i in range(NODES):
        for path in caches(root, i).values():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)


def one_run(way: str, model_id: str, uri: str, size: int, link: Any, root: Path) -> dict[str, Any]:
    """One measured node init from empty caches; then checks every node holds the model, and empties them."""
    empty_caches(root)
    quiet_cluster(NODES)
    before = link.shared.bytes_sent
    sample = asyncio.run((ray_way if way == "ray" else callback_way)(model_id, uri))
    sample["origin_bytes"] = link.shared.bytes_sent - before
    cache = "hf" if way == "ray" else "ours"
    held = [on_disk(caches(root, i)[cache]) for i in range(NODES)]
    sample["nodes_with_model"] = sum(1 for b in held if b >= size)
    if sample["nodes_with_model"] != NODES:
        raise RuntimeError(f"{way}: not every node holds the whole model ({held} bytes, model {size})")
    empty_caches(root)
    return sample


def main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    from node_init.testing import write_model_files

    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"})  # Ray's downloader reads the environment's
    work = Path(tempfile.mkdtemp(prefix="node-init-3-"))
    root = work / "nodes"
    samples: dict[str, list[dict[str, Any]]] = {w: [] for w in WAYS}
    try:
        model, small = work / "model", work / "warm-up"
        for i in range(NODES):
            (root / f"n{i}" / "home").mkdir(parents=True)
        write_model_files(model, {f"model-0000{i}-of-00004.safetensors": args.mb * MB for i in range(1, 5)})
        write_model_files(small, {"model.safetensors": 4 * MB})
        size = sum(p.stat().st_size for p in model.iterdir())
        with origin_link_cluster(NODES, lambda i: node_env(root, i)) as link:
            link.server.upload_dir(model, "bench", "model")
            link.server.upload_dir(small, "bench", "warm-up")
            link.shared.rate = args.rate * 1e6
            small_size = sum(p.stat().st_size for p in small.iterdir())
            # Warm-up, discarded: Ray's workers on every node, our exchange hub and agents started.
            warm = {w: one_run(w, f"warm-up-{w}", "s3://bench/warm-up", small_size, link, root) for w in WAYS}
            print("warm-up: " + ", ".join(f"{w} {s['total']:.2f}s" for w, s in warm.items()), flush=True)
            for run in range(args.repeats):
                for way in WAYS if run % 2 == 0 else tuple(reversed(WAYS)):  # interleaved
                    sample = one_run(way, f"bench-{way}-{run}", "s3://bench/model", size, link, root)
                    samples[way].append(sample)
                    print(f"{way}: {sample['total']:.2f}s, origin {sample['origin_bytes'] / size:.2f}x the model, "
                          f"{sample['nodes_with_model']} nodes hold it", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # 3 node caches of the model: about a GB
    rows = {w: {k: median([s[k] for s in samples[w]]) for k in samples[w][0] if k != "same_path"} for w in WAYS}
    ours, ray = rows["callback"], rows["ray"]
    speedup = ray["total"] / ours["total"]
    origin = ours["origin_bytes"] / size

    def spread(way: str) -> str:
        runs = [s["total"] for s in samples[way]]
        return f"{min(runs):.2f}-{max(runs):.2f}"

    names = {"ray": "Ray 2.60 `initialize_node`", "callback": "ours: `EventBusCallback`, `share: auto`"}
    table = markdown_table(
        ["way", "node init s (median)", "runs s", "Ray's / this", "origin bytes / model", "nodes holding the model"],
        [[names[w], f"{rows[w]['total']:.2f}", spread(w), f"{ray['total'] / rows[w]['total']:.2f}x",
          f"{rows[w]['origin_bytes'] / size:.2f}x", f"{rows[w]['nodes_with_model']:.0f} of {NODES}"] for w in WAYS])
    met = {True: "met", False: "missed"}
    table += (f"\n\nTargets: node init at least {SPEEDUP:g}x faster than Ray's: **{met[speedup >= SPEEDUP]}** "
              f"({speedup:.2f}x); origin bytes within {ORIGIN:g}x the model: **{met[origin <= ORIGIN]}** "
              f"({origin:.3f}x).")
    table += (f"\n\nOurs, medians: placement {ours['placement']:.2f} s, download {ours['download']:.2f} s, "
              f"`on_before_node_init` {ours['before_hook']:.2f} s, `on_after_node_init` {ours['after_hook']:.2f} s, "
              f"{ours['peer_bytes'] / 1e6:.0f} MB between nodes. Ray's group ready after {ray['placement']:.2f} s.")
    table += (f"\n\nModel: synthetic, 4 weight files, {size / 1e6:.0f} MB; 3 nodes, one {args.rate:g} MB/s origin "
              f"link; medians of {args.repeats} runs, interleaved, each from empty caches on an idle cluster "
              f"(the last run's group returned, then {QUIET_S:g} s), after a warm-up of each way; "
              f"{date.today().isoformat()}, this machine (2 cores: proxies, S3 server and the Ray nodes share them).")
    print()
    print(table)
    write_outputs("node_init_3", {"rate_mb_s": args.rate, "model_bytes": size, "date": date.today().isoformat(),
                                  "repeats": args.repeats, "rows": rows, "speedup": speedup,
                                  "origin_over_model": origin, "warm_up": warm, "samples": samples}, table)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=25.0, help="the shared origin link, MB/s")
    ap.add_argument("--mb", type=int, default=65, help="MiB per weight file (4 files)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one run of each way")
    a = ap.parse_args()
    if a.quick:
        a.repeats = 1
    main(a)
