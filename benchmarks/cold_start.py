"""Cold start: time to an engine with real weights, Ray 2.60's flow and the streaming loader against ours.

One model on a loopback S3-compatible endpoint behind a bandwidth-capping proxy, five ways:

- (a) ``ray``: Ray 2.60's own flow: ``download_model_files`` with a ``CloudMirrorConfig`` pointed at the
  endpoint (``AWS_ENDPOINT_URL``), then a plain ``AsyncLLM`` boot on the downloaded files;
- (b) ``off``: ours, ``overlap: off`` (download, then boot);
- (c) ``on``: ours, ``overlap: on`` (boot on dummy weights while downloading, then hand the weights over);
- (d) ``auto``: ours, ``overlap: auto``;
- (e) ``runai``: ``load_format="runai_streamer"``: a plain ``AsyncLLM`` boot that streams the weights
  from the same endpoint while it loads them, no download (Ray maps it to download mode ``NONE``);
- (f) ``callback``: stock ``ray.serve.llm`` with ``EventBusCallback`` alone: Ray's ``VLLMEngine.start``
  order on a real ``LLMConfig`` (our node init in ``on_before_node_init``, Ray's download off, the hooks
  as Ray runs them), then the plain boot Ray's engine does on the engine config's ``hf_model_id``.

Two kinds of node: ``fresh`` (every cache empty: ``HOME``, ``XDG_CACHE_HOME``, ``VLLM_CACHE_ROOT``, ``HF_HOME``,
torch's and triton's cache dirs, ours) and ``warm`` (vLLM's caches as a boot of another model left them,
the model caches empty: a replica placed on a node that served another model before).

Each run is a fresh subprocess with its own empty dirs, so every download is cold (for ``auto``: no
measured rate either), on a local Ray started (and left to settle for 3 s) before the clock starts.
Runs are interleaved; medians of the repeats. Each run ends by generating greedy tokens, which must be
equal across ways (the weights are the real ones). vLLM logs with millisecond timestamps
(``VLLM_LOGGING_CONFIG_PATH``), and its own log lines split every boot into steps: import, config and
model inspection, EngineCore up, worker up, weights, KV cache and warm-up; the picture draws them.

With ``--hub``, the model is a Hugging Face Hub id on a local Hub (``node_init.testing.HubServer``,
capped at ``--rates``' first value, shared by every connection), two ways: ``hub-ray`` (Ray's flow for a
Hub id: nothing downloads it first; vLLM fetches it inside the engine's boot, through ``huggingface_hub``
at ``HF_ENDPOINT``) and ``hub-on`` (ours, the bare id, ``overlap: on``); writes ``results/cold_start_hub``.

Run: ``python benchmarks/cold_start.py [--quick] [--hub] [--models tiny smollm2] [--nodes fresh warm]
[--rates 50 100 0] [--name N] [--merge] [--compare NAME]`` (rate 0 = uncapped). Writes
``results/N.{json,md,png}`` (default ``cold_start``); ``--merge`` keeps the rows of ``results/N.json``
this run does not redo (each row has its date); ``--compare NAME`` prints each way's total against the
same row of ``results/NAME.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, markdown_table, median, write_outputs

REPO = Path(__file__).resolve().parent.parent
WAYS = ("ray", "off", "on", "auto", "runai", "callback")
LETTER = dict(zip(WAYS, "abcdef", strict=True))
ENGINE = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True}
PROMPT = "The capital of France is"
SETTLE_S = 3.0
#: Boot steps, each ending at the first vLLM log line (after the previous step's) that contains the text.
STEPS = (
    ("config + inspection", "Resolved architecture"),
    ("EngineCore up", "Initializing a V1 LLM engine"),
    ("worker up", "Starting to load model"),
    ("weights", "KV cache"),
    ("KV cache + warm-up", "init engine (profile, create kv cache, warmup model) took"),
)
COLORS = {"import": "tab:gray", "config + inspection": "tab:purple", "EngineCore up": "tab:orange",
          "worker up": "tab:brown", "weights": "tab:olive", "KV cache + warm-up": "tab:pink",
          "ready": "tab:cyan", "hand-off": "tab:green", "download": "tab:blue"}
LOGGING = {
    "version": 1, "disable_existing_loggers": False,
    "formatters": {"ms": {"format": "%(asctime)s.%(msecs)03d| %(levelname)s %(message)s",
                          "datefmt": "%Y-%m-%d %H:%M:%S"}},
    "handlers": {"err": {"class": "logging.StreamHandler", "formatter": "ms", "stream": "ext://sys.stderr"}},
    "loggers": {"vllm": {"handlers": ["err"], "level": "INFO", "propagate": False}},
}
_STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\| ")


def node_env(root: Path) -> dict[str, str]:
    """A node's cache dirs under ``root``: vLLM's, HF's, torch's, triton's, ours (the model caches apart)."""
    home = root / "home"
    cache = home / ".cache"
    return {"HOME": str(home), "XDG_CACHE_HOME": str(cache), "VLLM_CACHE_ROOT": str(cache / "vllm"),
            "HF_HOME": str(cache / "huggingface"), "TORCHINDUCTOR_CACHE_DIR": str(cache / "torchinductor"),
            "TRITON_CACHE_DIR": str(home / ".triton"), "HF_HUB_CACHE": str(root / "models" / "hf"),
            "NODE_INIT_CACHE_DIR": str(root / "models" / "ours")}


def worker(way: str, uri: str, endpoint: str) -> None:
    """One cold start in this (fresh) process; prints JSON with wall-clock marks and greedy tokens."""
    import asyncio

    import ray

    # Every way runs where a Serve replica does, on a live Ray node: started, then given a few
    # seconds to settle so its start-up CPU burst does not land on whichever way runs.
    ray.init(include_dashboard=False, log_to_driver=False, num_cpus=2)
    time.sleep(SETTLE_S)
    if way == "ray":
        out = asyncio.run(_ray_way(uri))
    elif way == "hub-ray":  # vLLM resolves the id and downloads it while it boots (HF_ENDPOINT points it)
        out = asyncio.run(_plain_boot(uri, dict(ENGINE), time.time()))
    elif way == "runai":
        out = asyncio.run(_plain_boot(uri, {**ENGINE, "load_format": "runai_streamer"}, time.time()))
    elif way == "callback":
        out = asyncio.run(_callback_way(uri, endpoint))
    else:
        out = asyncio.run(_our_way(way, uri, endpoint))
    print("RESULT " + json.dumps(out), flush=True)


async def _plain_boot(model: str, kwargs: dict[str, Any], t0: float) -> dict[str, Any]:
    """A plain ``AsyncLLM`` boot, as Ray's engine does it (vLLM imported at boot, nothing warmed)."""
    import asyncio

    from node_init.engine import VLLMEngine

    boot_start = time.time()

    def build() -> Any:
        import vllm  # noqa: F401
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        marks["import_end"] = time.time()
        return AsyncLLM.from_engine_args(AsyncEngineArgs(model=model, **kwargs))

    marks: dict[str, float] = {}
    engine = VLLMEngine(await asyncio.to_thread(build), model, on_dummy_weights=False, load_format="auto")
    boot_end = time.time()
    tokens = await engine.generate_ids(PROMPT, max_tokens=8)
    await engine.shutdown()
    return {"t0": t0, "total": boot_end - t0, "boot_start": boot_start, "import_end": marks["import_end"],
            "boot_end": boot_end, "tokens": tokens}


async def _ray_way(uri: str) -> dict[str, Any]:
    import asyncio

    from ray.llm._internal.common.utils.cloud_utils import CloudMirrorConfig
    from ray.llm._internal.common.utils.download_utils import NodeModelDownloadable, download_model_files

    t0 = time.time()
    path = await asyncio.to_thread(
        download_model_files, model_id="bench/model", mirror_config=CloudMirrorConfig(bucket_uri=uri),
        download_model=NodeModelDownloadable.MODEL_AND_TOKENIZER, download_extra_files=False)
    out = await _plain_boot(str(path), dict(ENGINE), t0)
    return {**out, "download_start": t0, "download_end": out["boot_start"]}


async def _callback_way(uri: str, endpoint: str) -> dict[str, Any]:
    """Ray's ``VLLMEngine.start`` up to the engine, with our callback; then Ray's boot on its engine config."""
    t0 = time.time()  # before the import: ray.serve.llm imports vLLM, which the other ways import at boot
    from ray.serve.llm import LLMConfig

    config = LLMConfig(
        model_loading_config={"model_id": "bench", "model_source": uri}, engine_kwargs=dict(ENGINE),
        accelerator_config={"kind": "cpu"}, placement_group_config={"bundles": [{"CPU": 1}]},
        callback_config={"callback_class": "node_init.ray_serve:EventBusCallback",
                         "callback_kwargs": {"download": {"s3": {"endpoint_url": endpoint}, "timeout_s": 600}}})
    callback: Any = config.get_or_create_callback()
    await callback.run_callback("on_before_node_init")
    assert not callback.ctx.run_init_node  # Ray's own download never runs
    await callback.run_callback("on_after_node_init")
    engine_config: Any = config.get_engine_config()
    kwargs = dict(config.engine_kwargs)
    out = await _plain_boot(str(engine_config.actual_hf_model_id), kwargs, t0)
    timings = callback.result.timings
    download_start = t0 + timings.get("before_init", 0.0) + timings.get("placement", 0.0)
    await callback.result.close()
    return {**out, "download_start": download_start, "download_end": download_start + timings.get("download", 0.0)}


async def _our_way(way: str, uri: str, endpoint: str) -> dict[str, Any]:
    from node_init import initialize_node, parse_config
    from node_init.engine import build_async_llm, start_import

    store = {"hf": {"endpoint_url": endpoint}} if way == "hub-on" else {"s3": {"endpoint_url": endpoint}}
    config = parse_config({
        "model_id": "bench", "model_source": uri, "placement": None,
        "download": {**store, "timeout_s": 600},
        "engine": {"kind": "vllm", "overlap": way.removeprefix("hub-"), "kwargs": ENGINE},
    })
    marks: dict[str, float] = {}

    def timed_build(args: dict[str, Any]) -> Any:
        try:
            return build_async_llm(args)
        finally:
            marks["boot_end"] = time.time()

    t0 = time.time()
    result = await initialize_node(config, engine_builder=timed_build)
    end = time.time()
    tokens = await result.engine.generate_ids(PROMPT, max_tokens=8)
    timings = dict(result.timings)
    await result.close()
    t = {k: v for k, v in timings.items() if isinstance(v, float)}
    # The boot (after the download, or on dummy weights) started ``engine_boot`` seconds before it ended.
    marks["boot_start"] = marks["boot_end"] - t["engine_boot"]
    # Downloads start once placement is done (BeforeDownload is published on the nodes' own buses).
    download_start = t0 + t.get("before_init", 0.0) + t.get("placement", 0.0)
    out = {"t0": t0, "total": end - t0, **marks, "import_end": t0 + start_import().result(),
           "download_start": download_start,
           "download_end": download_start + t.get("download", 0.0), "tokens": tokens}
    if t.get("weights_load"):
        out["handoff_end"] = end - t.get("after_init", 0.0)
        out["handoff_start"] = out["handoff_end"] - t["weights_load"]
    return out


def steps(run: dict[str, Any], log: str) -> dict[str, tuple[float, float]]:
    """The run's phases as (start, end) seconds from its t0: download, boot steps, hand-off."""
    t0 = run["t0"]
    out: dict[str, tuple[float, float]] = {}
    if "download_start" in run:
        out["download"] = (run["download_start"] - t0, run["download_end"] - t0)
    stamped = []
    for line in log.splitlines():
        m = _STAMP.search(line)
        if m:
            when = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            stamped.append((when, line[m.end():]))
    boot = run["boot_start"]
    # The import runs from the init's start (ours) or the boot's (plain boots) to its end.
    start = t0 if run.get("way") in ("off", "on", "auto", "hub-on") else boot
    out["import"] = (start - t0, run["import_end"] - t0)
    prev = max(boot, run["import_end"])
    for name, text in STEPS:
        when = next((w for w, msg in stamped if w >= prev - 0.001 and text in msg), None)
        if when is None:
            continue
        out[name] = (prev - t0, when - t0)
        prev = when
    out["ready"] = (prev - t0, run["boot_end"] - t0)
    if "handoff_start" in run:
        out["hand-off"] = (run["handoff_start"] - t0, run["handoff_end"] - t0)
    return out


def build_warm_home(path: Path, model: Path) -> None:
    """A node that served a model before: boot vLLM (its own way) once on ``model`` with dummy weights."""
    env = {**os.environ, **node_env(path), "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": "1"}
    code = ("import sys\nfrom vllm.engine.arg_utils import AsyncEngineArgs\n"
            "from vllm.v1.engine.async_llm import AsyncLLM\n"
            "if __name__ == '__main__':\n"
            f"    AsyncLLM.from_engine_args(AsyncEngineArgs(model={str(model)!r}, load_format='dummy', "
            f"**{ENGINE!r})).shutdown()\n")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=600)
    shutil.rmtree(path / "models", ignore_errors=True)


def one_run(way: str, uri: str, endpoint: str, warm_home: Path | None, logging_path: Path) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"cold-{way}-"))
    try:
        if warm_home is not None:
            shutil.copytree(warm_home / "home", root / "home", symlinks=True)
        env = {**os.environ, **node_env(root), "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": "1",
               "AWS_ENDPOINT_URL": endpoint, "RUNAI_STREAMER_S3_ENDPOINT": endpoint,
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "VLLM_LOGGING_CONFIG_PATH": str(logging_path),
               "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1"}
        proc = subprocess.run([sys.executable, __file__, "--worker", way, uri, endpoint],
                              capture_output=True, text=True, timeout=900, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"{way} failed ({proc.returncode}): {proc.stderr[-3000:]}")
        run = {"way": way, **json.loads(lines[-1][len("RESULT "):])}
        run["steps"] = steps(run, proc.stderr + proc.stdout)
        return run
    finally:
        shutil.rmtree(root, ignore_errors=True)


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians: the total, and each phase's start and end."""
    names = {n for s in samples for n in s["steps"]}
    phases = {n: [median([s["steps"][n][i] for s in samples if n in s["steps"]]) for i in (0, 1)] for n in names}
    return {"total": median([s["total"] for s in samples]), "runs": [s["total"] for s in samples],
            "steps": phases, "tokens": samples[0]["tokens"]}


def workspace(args: argparse.Namespace, prefix: str) -> tuple[Path, Path, Path | None]:
    """A work directory, vLLM's logging config in it, and the warm node's home if a warm row is asked for."""
    import _models

    work = Path(tempfile.mkdtemp(prefix=prefix))
    logging_path = work / "vllm-logging.json"
    logging_path.write_text(json.dumps(LOGGING))
    warm_home = None
    if "warm" in args.nodes:
        warm_home = work / "warm"
        print("building the warm node's caches (vLLM boots the tiny model once)", flush=True)
        build_warm_home(warm_home, _models.tiny())
    return work, logging_path, warm_home


def main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    import _models

    from node_init.testing import FaultProxy, S3Server

    work, logging_path, warm_home = workspace(args, "cold-start-")
    server = S3Server().start()
    rows: list[dict[str, Any]] = []
    try:
        for model_name in args.models:
            path = getattr(_models, model_name)()
            size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
            server.upload_dir(path, "bench", model_name)
            uri = f"s3://bench/{model_name}"
            for node in args.nodes:
                for rate in args.rates:
                    proxy = FaultProxy(server.endpoint, rate_mb_s=rate or None).start()
                    try:
                        samples: dict[str, list[dict[str, Any]]] = {w: [] for w in args.ways}
                        for i in range(args.repeats):
                            order = args.ways if i % 2 == 0 else tuple(reversed(args.ways))
                            for way in order:
                                run = one_run(way, uri, proxy.endpoint, warm_home if node == "warm" else None,
                                              logging_path)
                                samples[way].append(run)
                                print(f"{model_name} {node} {rate or 'uncapped'} MB/s {way}: {run['total']:.2f}s",
                                      flush=True)
                    finally:
                        proxy.stop()
                    tokens = {w: samples[w][0]["tokens"] for w in args.ways}
                    assert len({json.dumps(t) for t in tokens.values()}) == 1, f"greedy tokens differ: {tokens}"
                    rows.append({"model": model_name, "mb": size / 1e6, "node": node, "rate": rate or None,
                                 "repeats": args.repeats, "date": datetime.date.today().isoformat(),
                                 **{w: summarize(samples[w]) for w in args.ways}})
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.compare:
        compare(rows, args.compare)
    kept: dict[str, Any] = {}  # what else the record holds (a quick rerun's figures)
    if args.merge and (RESULTS / f"{args.name}.json").exists():
        key = lambda r: (r["model"], r["node"], r["rate"])  # noqa: E731
        redone = {key(r) for r in rows}
        record = json.loads((RESULTS / f"{args.name}.json").read_text())
        kept = {k: v for k, v in record.items() if k not in ("machine", "rows")}
        rows = [r for r in record["rows"] if key(r) not in redone] + rows
    order = {m: i for i, m in enumerate(("tiny", "smollm2"))}
    rows.sort(key=lambda r: (order.get(r["model"], 9), r["node"], r["rate"] or 1e9))
    table = tables(rows)
    print()
    print(table)
    write_outputs(args.name, {**kept, "rows": rows}, table)
    plot(rows, args.name)


def hub_main(args: argparse.Namespace) -> None:
    """A Hub id: Ray's flow (vLLM downloads it inside the boot) against ours with overlap."""
    sys.path.insert(0, str(REPO))
    import _models

    from node_init.testing import HubServer

    work, logging_path, warm_home = workspace(args, "cold-start-hub-")
    rate = args.rates[0] or None
    rows: list[dict[str, Any]] = []
    ways = ("hub-ray", "hub-on")
    try:
        for model_name in args.models:
            path = getattr(_models, model_name)()
            size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
            for node in args.nodes:
                samples: dict[str, list[dict[str, Any]]] = {w: [] for w in ways}
                for i in range(args.repeats):
                    for way in ways if i % 2 == 0 else tuple(reversed(ways)):
                        hub = HubServer(rate_mb_s=rate).start()  # a fresh Hub: nothing of a run is left for the next
                        try:
                            hub.push_dir(f"bench/{model_name}", path)
                            run = one_run(way, f"bench/{model_name}", hub.endpoint,
                                          warm_home if node == "warm" else None, logging_path)
                        finally:
                            hub.stop()
                        samples[way].append(run)
                        print(f"{model_name} {node} {rate or 'uncapped'} MB/s {way}: {run['total']:.2f}s", flush=True)
                tokens = {w: samples[w][0]["tokens"] for w in ways}
                assert len({json.dumps(t) for t in tokens.values()}) == 1, f"greedy tokens differ: {tokens}"
                rows.append({"model": model_name, "mb": size / 1e6, "node": node, "rate": rate,
                             "repeats": args.repeats, "date": datetime.date.today().isoformat(),
                             **{w: summarize(samples[w]) for w in ways}})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = markdown_table(
        ["model", "node", "link MB/s", "Ray's flow s (vLLM downloads the id)", "ours s (overlap: on)",
         "Ray's / ours", "repeats"],
        [[r["model"], r["node"], f"{r['rate']:g}" if r["rate"] else "uncapped", f"{r['hub-ray']['total']:.2f}",
          f"{r['hub-on']['total']:.2f}", f"{r['hub-ray']['total'] / r['hub-on']['total']:.2f}x", str(r["repeats"])]
         for r in rows])
    print()
    print(table)
    write_outputs("cold_start_hub", {"rows": rows}, table)


def _ratio(row: dict[str, Any], a: str, b: str) -> str:
    return f"{row[a]['total'] / row[b]['total']:.2f}x" if a in row and b in row else "-"


def tables(rows: list[dict[str, Any]]) -> str:
    header = ["model", "node", "link MB/s", *[f"({LETTER[w]}) {w} s" for w in WAYS], "(a)/(d)", "(e)/(d)",
              "(d)/best(a,e)", "(a)/(f)", "repeats", "date"]
    body = []
    for r in rows:
        best = min(r[w]["total"] for w in ("ray", "runai") if w in r)
        body.append([r["model"], r["node"], r["rate"] or "uncapped",
                     *[f"{r[w]['total']:.2f}" if w in r else "-" for w in WAYS],
                     _ratio(r, "ray", "auto"), _ratio(r, "runai", "auto"),
                     f"{r['auto']['total'] / best:.2f}x" if "auto" in r else "-", _ratio(r, "ray", "callback"),
                     r["repeats"], r["date"]])
    names = ["import", *[n for n, _ in STEPS], "ready", "hand-off"]
    steps_rows = []
    for r in rows:
        for w in ("ray", "auto", "runai", "callback"):
            if w not in r:
                continue
            st = r[w]["steps"]
            steps_rows.append([r["model"], r["node"], r["rate"] or "uncapped", f"({LETTER[w]}) {w}",
                               *[f"{st[n][1] - st[n][0]:.1f}" if n in st else "-" for n in names],
                               f"{r[w]['total']:.1f}"])
    return (markdown_table(header, body) + "\n\nBoot steps, seconds (medians):\n\n"
            + markdown_table(["model", "node", "link MB/s", "way", *names, "total"], steps_rows))


def compare(rows: list[dict[str, Any]], name: str) -> None:
    """Each way's total in this run against the same row of ``results/NAME.json``."""
    old = {(r["model"], r["node"], r["rate"]): r for r in json.loads((RESULTS / f"{name}.json").read_text())["rows"]}
    print(f"\nagainst results/{name}.json:")
    for r in rows:
        o = old.get((r["model"], r["node"], r["rate"]))
        if o is None:
            print(f"  {r['model']} {r['node']} {r['rate']}: no recorded row")
            continue
        for w in WAYS:
            if w in r and w in o:
                ratio = r[w]["total"] / o[w]["total"]
                print(f"  {r['model']} {r['node']} {r['rate'] or 'uncapped'} ({LETTER[w]}) {w}: "
                      f"{r[w]['total']:.2f}s vs {o[w]['total']:.2f}s recorded: {ratio:.2f}x"
                      f"{'' if abs(ratio - 1) <= 0.10 else '  (outside 10%)'}")


def plot(rows: list[dict[str, Any]], name: str) -> None:
    """A timeline per row: each way's download and boot steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 2.1 * len(rows) + 0.8), squeeze=False)
    for ax, row in zip(axes[:, 0], rows, strict=True):
        ways = [w for w in WAYS if w in row]
        for y, way in enumerate(ways):
            st = row[way]["steps"]
            if "download" in st:
                lo, hi = st["download"]
                ax.broken_barh([(lo, hi - lo)], (y - 0.38, 0.3), color=COLORS["download"])
            for step, (lo, hi) in st.items():
                if step != "download":
                    ax.broken_barh([(lo, max(hi - lo, 0.0))], (y - 0.02, 0.36), color=COLORS[step])
            ax.text(row[way]["total"] + 0.2, y, f"{row[way]['total']:.1f}s", va="center", fontsize=8)
        ax.set_yticks(range(len(ways)), [f"({LETTER[w]}) {w}" for w in ways])
        ax.set_title(f"{row['model']}, {row['node']} node, {row['rate'] or 'uncapped'} MB/s", fontsize=9)
        ax.invert_yaxis()
    axes[-1, 0].set_xlabel("seconds from the start of node init (download above each boot)")
    fig.legend(handles=[Patch(color=c, label=n) for n, c in COLORS.items()], loc="lower center", ncol=5,
               fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(RESULTS / f"{name}.png", dpi=100)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:5])
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    ap.add_argument("--nodes", nargs="+", default=["fresh", "warm"], choices=["fresh", "warm"])
    ap.add_argument("--rates", nargs="+", type=float, default=[50.0, 100.0, 0.0])
    ap.add_argument("--ways", nargs="+", default=list(WAYS), choices=WAYS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one repeat")
    ap.add_argument("--name", default="cold_start", help="results/NAME.{json,md,png}")
    ap.add_argument("--merge", action="store_true", help="keep the rows of results/NAME.json not redone")
    ap.add_argument("--compare", metavar="NAME", help="print each way against results/NAME.json")
    ap.add_argument("--hub", action="store_true", help="a Hub id: Ray's flow against ours (results/cold_start_hub)")
    a = ap.parse_args()
    a.ways = tuple(a.ways)
    if a.quick:
        a.repeats = 1
    if a.hub:
        hub_main(a)
    else:
        main(a)
