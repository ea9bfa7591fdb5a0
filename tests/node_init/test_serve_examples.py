"""Every Serve config in ``examples/`` run as its comments say, and queried as a user would.

The commands come from the file itself (``node-init build-model ...`` and ``serve run ...``), run
from the repository root against the session's Ray cluster (``--address``; ``--non-blocking`` so the
test, not the CLI, waits). Answers come through the OpenAI Python client: completions, chat, streaming.
"""

from __future__ import annotations

import contextlib
import copy
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from handlers.event_log import read_events
from node_init import AfterInit
from node_init.testing import FaultProxy, S3Server, build_tiny_llama
from tests import _procs as procs
from tests._procs import Tree, opened_ports, wait_port_free

pytestmark = [pytest.mark.engine, pytest.mark.ray]
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("serve_*.yaml"))
BOUND_S = 300
PORT = 8000  # Serve's default: the examples set no http_options


def commands(example: Path) -> tuple[list[str], list[str], list[str] | None]:
    """The ``node-init build-model``, ``serve run`` and (if any) ``node-init <store>-server`` commands the
    example's comments give (an environment assignment before ``serve run`` dropped: the test picks
    the cluster)."""
    lines = [line.lstrip("# ").strip() for line in example.read_text().splitlines() if line.startswith("#")]
    lines = [re.sub(r"^(\w+=\S+ )+(?=serve run )", "", line) for line in lines]
    (build,) = [shlex.split(line) for line in lines if line.startswith("node-init build-model ")]
    (run,) = [shlex.split(line) for line in lines if line.startswith("serve run ")]
    servers = [shlex.split(line) for line in lines if re.match(r"node-init \w+-server ", line)]
    return build, run, servers[0] if servers else None


@contextlib.contextmanager
def store_server_as_written(argv: list[str] | None) -> Iterator[None]:
    """The example's ``node-init <store>-server`` command, in the background, while the block runs; after
    it, the server and everything it started have ended and its port is free (the next example's server
    takes the same port)."""
    if argv is None:
        yield
        return
    server = Tree(tool(argv), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Read on a thread: the first line within a bound, and the rest drained so the server never blocks
    # on a full pipe.
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in server.proc.stdout or ()], daemon=True).start()
    port = None
    try:
        try:
            line = lines.get(timeout=120)  # "serving s3://... at http://127.0.0.1:9000 ..." once it is up
        except queue.Empty:
            line = "(nothing within 120 s)"
        assert line.startswith("serving "), line + "".join(list(lines.queue))[-2000:]
        port = int(re.search(r" at http://[\w.]+:(\d+)", line)[1])  # type: ignore[index]
        opened_ports.add(port)
        yield
    finally:
        server.stop(port=port)


def tool(argv: list[str]) -> list[str]:
    """``argv`` with its program taken from this interpreter's environment (what a user's PATH has)."""
    return [str(Path(sys.executable).parent / argv[0]), *argv[1:]]


def serve_run(argv: list[str], address: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``serve run`` as written, against the test cluster, returning once the config is submitted."""
    args = tool(argv)
    args[2:2] = ["--non-blocking", "--address", address]
    if config is not None:
        args[-1] = str(config)
    return procs.run(args, cwd=REPO, timeout=120, env={**os.environ, "RAY_ADDRESS": address})


def app_of(example: Path) -> dict[str, Any]:
    (app,) = yaml.safe_load(example.read_text())["applications"]
    return dict(app)


def replica_env(app: dict[str, Any]) -> dict[str, str]:
    """The variables an example writes for its replica: Ray Serve LLM gives the replica its
    ``LLMConfig``'s ``runtime_env`` over the application's (the ``env_vars`` replaced, not merged)."""
    (llm,) = app["args"]["llm_configs"]
    own = (llm.get("runtime_env") or {}).get("env_vars")
    return dict(own if own is not None else app.get("runtime_env", {}).get("env_vars", {}))


def assert_kv_cache_reached_the_engine(app: dict[str, Any], logs: str) -> None:
    """The KV cache size the example sets is what vLLM used (the test cluster's nodes carry another)."""
    gib = replica_env(app).get("VLLM_CPU_KVCACHE_SPACE")
    assert gib, "a CPU example sets VLLM_CPU_KVCACHE_SPACE where its replica reads it"
    used = {float(g) for g in re.findall(r"Explicitly set \((\d+(?:\.\d+)?)/", logs)}  # vLLM's CPU worker
    assert used == {float(gib)}, used


def wait_for(name: str, *wanted: str) -> Any:
    from ray import serve

    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        app = serve.status().applications.get(name)
        if app is not None and app.status in wanted:
            return app
        if app is not None and not set(wanted) & {"DEPLOY_FAILED", "UNHEALTHY"}:
            assert app.status not in ("DEPLOY_FAILED", "UNHEALTHY"), app.message
        time.sleep(2)
    raise AssertionError(f"application {name} not {wanted} after {BOUND_S}s")


def delete(name: str) -> None:
    from ray import serve

    serve.delete(name)  # blocks until the application is gone


def log_sizes() -> dict[Path, int]:
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    return {p: p.stat().st_size for p in logs.rglob("*") if p.is_file()}


def new_log_text(before: dict[Path, int]) -> str:
    """What every Ray log file (replicas, node tasks, controller) gained since ``before``."""
    out = []
    for path in log_sizes():
        with open(path, "rb") as f:
            f.seek(before.get(path, 0))
            out.append(f.read().decode(errors="replace"))
    return "".join(out)


def ask(port: int, model: str) -> None:
    """Completions, chat and a streamed completion through the OpenAI client; greedy streams agree."""
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=120, max_retries=0)
    prompt = "the quick brown fox"
    done = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
    assert done.model == model and done.choices[0].finish_reason in ("length", "stop")
    assert done.usage is not None and done.usage.completion_tokens >= 1
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                          max_tokens=8, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.usage is not None
    assert chat.usage.prompt_tokens > done.usage.prompt_tokens  # the chat template wrapped the message
    streamed = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0, stream=True)
    chunks = [c.choices[0].text for c in streamed if c.choices]
    assert len(chunks) > 1 and "".join(chunks) == done.choices[0].text


@pytest.fixture(scope="module")
def cluster_address(ray_cluster: Any) -> Iterator[str]:
    """The session's cluster with Serve not running: the first ``serve run`` starts it, as for a user.

    Serve's controller builds applications in the runtime_env of the driver that started it, so the
    ``--working-dir`` of a ``serve run`` reaches the build only when that command started Serve
    (the README says so); the examples' HTTP port is Serve's default.
    """
    from ray import serve

    serve.shutdown()
    wait_port_free(PORT)  # the overlapped example's own Ray may have held it until just now
    try:
        yield str(ray_cluster.address)
    finally:
        serve.shutdown()


def test_the_overlapped_example_runs_exactly_as_its_comment_says(ray_cluster: Any, tmp_path: Path) -> None:
    """Every command of its comment, as written (``RAY_ADDRESS=local serve run``: a Ray of its own, not
    the test session's), then the OpenAI client; Ctrl-C ends it."""
    from ray import serve

    serve.shutdown()  # the session's Serve would hold port 8000
    wait_port_free(PORT)
    example = REPO / "examples" / "serve_overlapped.yaml"
    lines = [line.lstrip("# ").strip() for line in example.read_text().splitlines() if line.startswith("#")]
    (written,) = [line for line in lines if re.match(r"^(\w+=\S+ )*serve run ", line)]
    env_part, _, command = written.partition("serve run ")
    # A user's environment: not the test session's per-node cache root (its Ray would fill the session's
    # head cache), and the example's own cache empty, as on a fresh machine (it is the example's scratch).
    env = {k: v for k, v in os.environ.items()
           if k not in ("NODE_INIT_CACHE_DIR", "NODE_NAME", "VLLM_CPU_KVCACHE_SPACE")}
    env.update(pair.split("=", 1) for pair in env_part.split())
    assert env.get("RAY_ADDRESS") == "local"
    cache = yaml.safe_load(example.read_text())["applications"][0]["args"]["llm_configs"][0][
        "callback_config"]["callback_kwargs"]["download"]["cache_dir"]
    shutil.rmtree(cache, ignore_errors=True)
    build, _, server = commands(example)
    subprocess.run(tool(build), cwd=REPO, check=True, timeout=120, capture_output=True)
    model = app_of(example)["args"]["llm_configs"][0]["model_loading_config"]["model_id"]
    with store_server_as_written(server):
        # Its own session, as from a terminal: Ctrl-C reaches its process group, and every process of the
        # Ray it starts is waited for (and the port for) before the next test takes port 8000.
        with (tmp_path / "serve.log").open("w") as out:
            run = Tree(tool(["serve", "run", *shlex.split(command)]), cwd=REPO, env=env, stdout=out,
                       stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + BOUND_S
            while time.monotonic() < deadline and run.proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/v1/models", timeout=5) as resp:
                        if model in resp.read().decode():
                            break
                except OSError:
                    pass
                time.sleep(2)
            assert run.proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            ask(PORT, model)
        finally:
            run.stop(port=PORT)
    log = (tmp_path / "serve.log").read_text()
    assert "overlap=True" in log or '"overlap": true' in log, log[-3000:]
    assert_kv_cache_reached_the_engine(app_of(example), log)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_an_example_runs_as_written_and_restarts_warm(example: Path, cluster_address: str) -> None:
    build, run, server = commands(example)
    subprocess.run(tool(build), cwd=REPO, check=True, timeout=120, capture_output=True)
    with store_server_as_written(server):
        _run_and_restart_warm(example, run, cluster_address)


def _run_and_restart_warm(example: Path, run: list[str], cluster_address: str) -> None:
    app = app_of(example)
    (llm,) = app["args"]["llm_configs"]
    model = llm["model_loading_config"]["model_id"]
    event_log = replica_env(app).get("NODE_INIT_EVENT_LOG")
    overlapped = str(llm.get("server_cls", "")).endswith("OverlappedLLMServer")
    seen_before = len(list(read_events(event_log))) if event_log and Path(event_log).exists() else 0
    before = log_sizes()
    # Our flow (an event log to read) is started twice: the second start finds the node's cache warm.
    starts = ("first", "warm") if event_log else ("first",)
    try:
        for start in starts:
            out = serve_run(run, cluster_address)
            assert out.returncode == 0, out.stderr[-2000:]
            wait_for(app["name"], "RUNNING")
            ask(PORT, model)
            if start != starts[-1]:
                delete(app["name"])
    finally:
        delete(app["name"])
    logs = new_log_text(before)
    # Our bus's line for a failed handler (handlers.timing on a warm cache, among others), as Ray workers
    # render it (JSON) or a console would; vLLM's own "output_handler failed" at shutdown is not ours.
    assert not re.search(r'"event": "handler failed"|\] handler failed\s', logs)
    assert_kv_cache_reached_the_engine(app, logs)
    if event_log:
        inits = [e for e in list(read_events(event_log))[seen_before:] if isinstance(e, AfterInit)]
        assert len(inits) == 2
        assert all(r.bytes == 0 and r.cached_bytes > 0 for r in inits[1].reports)
        # What the overlapped example's comment says the user sees: a boot on dummy weights during the
        # download, then the weights in place; the warm restart boots plainly on the cache. On the stock
        # path Ray boots the engine after our node init: no overlap.
        assert inits[0].overlap == overlapped and ({"overlap", "weights_load"} <= set(inits[0].timings)) == overlapped
        assert not inits[1].overlap


def _bad_enum(llm: dict[str, Any]) -> None:
    llm["callback_config"]["callback_kwargs"]["engine"] = {"overlap": "maybe"}


def _bad_bucket(llm: dict[str, Any]) -> None:
    llm["model_loading_config"]["model_source"] = "s3://Bad_Bucket/tiny-llama"


def _missing_handler_module(llm: dict[str, Any]) -> None:
    llm["callback_config"]["callback_kwargs"]["handlers"][0] = "hookz:handlers"  # a typo of hooks


MISTAKES = [(_bad_enum, ["engine.overlap", "auto, on, off"]),
            (_bad_bucket, ["model_loading_config", "model_source", "not a valid S3 bucket name"]),
            (_missing_handler_module, ["handlers[0]", "hookz"])]


# Each mistake on one example, the import-path typo on both (each path checks it in its own place).
CASES = [(REPO / "examples" / example, mistake, words)
         for (mistake, words), examples in zip(MISTAKES, [["serve_overlapped.yaml"], ["serve_stock.yaml"],
                                                          ["serve_stock.yaml", "serve_overlapped.yaml"]], strict=True)
         for example in examples]


@pytest.mark.parametrize(("example", "mistake", "words"), CASES,
                         ids=[f"{e.stem}-{m.__name__.strip('_')}" for e, m, _ in CASES])
def test_a_config_mistake_in_an_example_fails_the_deploy_naming_the_field(
        example: Path, mistake: Any, words: list[str], cluster_address: str, tmp_path: Path) -> None:
    _, run, _ = commands(example)
    config = yaml.safe_load(example.read_text())
    wrong = copy.deepcopy(config)
    (llm,) = wrong["applications"][0]["args"]["llm_configs"]
    mistake(llm)
    path = tmp_path / example.name
    path.write_text(yaml.safe_dump(wrong))
    name = config["applications"][0]["name"]
    out = serve_run(run, cluster_address, path)
    assert out.returncode == 0, out.stderr[-2000:]  # submitted: the controller builds the app
    try:
        app = wait_for(name, "DEPLOY_FAILED")
        assert all(w in app.message for w in words), app.message
        assert "Traceback" not in app.message and len(app.message.splitlines()) <= 2  # our one line, as is
        assert not app.deployments  # failed at the build: no replica was started
    finally:
        delete(name)


def test_a_second_replica_on_one_node_overlaps_under_auto(cluster_address: str, s3_server: S3Server,
                                                          tmp_path: Path) -> None:
    """Two replicas on node1 (half a CPU each) start together on a cold cache behind a slow link.

    One downloads; the other waits on its download lock, sees no byte of its own, and under
    ``overlap: auto`` boots on dummy weights meanwhile instead of after the download.
    """
    from ray import serve

    from node_init.ray_serve import build_openai_app

    model = build_tiny_llama(tmp_path / "tiny")
    s3_server.upload_dir(model, "models", "two-replicas")
    size_mb = sum(p.stat().st_size for p in model.iterdir()) / 1e6
    log = tmp_path / "events.jsonl"
    proxy = FaultProxy(s3_server.endpoint, rate_mb_s=size_mb / 12).start()  # a ~12 s download
    try:
        llm = {
            "model_loading_config": {"model_id": "tiny-two", "model_source": "s3://models/two-replicas"},
            "accelerator_config": {"kind": "cpu"},
            "placement_group_config": {"bundles": [{"CPU": 0.5, "node1": 0.5}]},
            "engine_kwargs": {"dtype": "float32", "max_model_len": 256, "enforce_eager": True},
            "deployment_config": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0}},
            "runtime_env": {"env_vars": {"NODE_INIT_EVENT_LOG": str(log), "VLLM_CPU_KVCACHE_SPACE": "1"}},
            "server_cls": "node_init.ray_serve:OverlappedLLMServer",
            "callback_config": {"callback_class": "node_init.ray_serve:EventBusCallback", "callback_kwargs": {
                "handlers": ["handlers.event_log:handlers", "handlers.timing:handlers"],
                "engine": {"overlap": "auto"},
                "download": {"s3": {"endpoint_url": proxy.endpoint, "access_key_id": "testing",
                                    "secret_access_key": "testing"}},
            }},
        }
        app = build_openai_app({"llm_configs": [llm],
                                "ingress_deployment_config": {"ray_actor_options": {"num_cpus": 0.5}}})
        serve.run(app, name="two", route_prefix="/two", blocking=False)
        try:
            wait_for("two", "RUNNING")
        finally:
            delete("two")
    finally:
        proxy.stop()
    inits = [e for e in read_events(log) if isinstance(e, AfterInit)]
    assert len(inits) == 2
    (fetched,) = [e for e in inits if e.reports[0].bytes > 0]  # one replica's node task downloaded
    (waited,) = [e for e in inits if e.reports[0].bytes == 0]  # the other's found it done after the lock
    assert waited.reports[0].cached_bytes == fetched.reports[0].bytes
    # Both booted on dummy weights during the download and took the weights in place afterwards.
    for init in (fetched, waited):
        assert "weights_load" in init.timings and init.timings["overlap"] > 0
