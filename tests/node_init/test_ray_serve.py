"""Both Serve paths on a real Ray cluster: stock ray.serve.llm with EventBusCallback, and OverlappedLLMServer."""

from __future__ import annotations

import json
import pickle
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node_init.testing import Fault, FaultProxy, S3Server, build_tiny_llama
from tests._origin import s3_listing

pytestmark = [pytest.mark.engine, pytest.mark.ray]
ENGINE_KWARGS = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> dict[str, str]:
    path = build_tiny_llama(tmp_path_factory.mktemp("serve") / "tiny", tie_word_embeddings=True)
    s3_server.upload_dir(path, "models", "serve-tiny")
    return {"local": str(path), "s3": "s3://models/serve-tiny"}


def llm_config(model_id: str, source: str, log: Path, kwargs: dict[str, Any], env: dict[str, str] | None = None,
               **extra: Any) -> Any:
    from ray.serve.llm import LLMConfig

    return LLMConfig(
        model_loading_config={"model_id": model_id, "model_source": source},
        engine_kwargs=ENGINE_KWARGS,
        accelerator_config={"kind": "cpu"},
        placement_group_config={"bundles": [{"CPU": 1}]},
        deployment_config={"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
        experimental_configs={"num_ingress_replicas": 1},
        runtime_env={"env_vars": {"NODE_INIT_TEST_LOG": str(log), "VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})}},
        callback_config={"callback_class": "node_init.ray_serve:EventBusCallback", "callback_kwargs": kwargs},
        **extra,
    )


def deploy(name: str, config: Any) -> None:
    from ray import serve
    from ray.serve.llm import build_openai_app

    serve.run(build_openai_app({"llm_configs": [config]}), name=name, route_prefix=f"/{name}",
              blocking=False)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = serve.status().applications[name].status
        if status == "RUNNING":
            return
        assert status not in ("DEPLOY_FAILED", "UNHEALTHY"), serve.status().applications[name]
        time.sleep(2)
    raise AssertionError(f"{name} not running after 300s")


def complete(port: int, name: str, model: str, prompt: str = "the quick brown fox") -> dict[str, Any]:
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/{name}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return dict(json.loads(resp.read()))


def records(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def stock_app(serve_port: int, s3_server: S3Server, tiny: dict[str, str],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Stock ray.serve.llm with EventBusCallback alone, on a 3-node placement group (Ray makes it from
    placement_group_config), from S3 through a proxy that counts the origin's bytes and flips one byte
    of the tokenizer once; node1 vetoes its download, a BeforeEngineInit handler shortens the context."""
    from ray import serve

    root = tmp_path_factory.mktemp("stock")
    log, events = root / "events.jsonl", root / "event-log.jsonl"
    proxy = FaultProxy(s3_server.endpoint).start()
    try:
        _, listing = s3_listing(proxy, tiny["s3"])
    except BaseException:
        proxy.stop()
        raise
    sent_before = proxy.bytes_sent
    proxy.add(Fault(kind="corrupt", match="serve-tiny/tokenizer.json", after_bytes=999, count=1))
    # A fresh node as far as vLLM's caches go: the replica's model-info cache starts empty.
    env = {"VLLM_CACHE_ROOT": str(tmp_path_factory.mktemp("stock-vllm-cache")), "NODE_INIT_EVENT_LOG": str(events)}
    kwargs = {
        "handlers": ["tests.node_init.hooks:serve_hooks", "tests.node_init.hooks:short_context_engine",
                     "tests.node_init.hooks:veto_node1", "handlers.event_log:handlers"],
        "download": {"share": "auto", "part_size_mb": 1,
                     "s3": {"endpoint_url": proxy.endpoint, "access_key_id": "testing",
                            "secret_access_key": "testing"}},
    }
    config = llm_config("tiny-stock", tiny["s3"], log, kwargs, env=env)
    # Bundle 0 holds the replica (2 CPUs: only the head has them), the others one CPU on node1 and node2.
    config.placement_group_config = {"bundles": [{"CPU": 1}] * 3, "strategy": "STRICT_SPREAD"}
    try:
        deploy("stock", config)
        yield {"log": log, "events": events, "proxy": proxy, "listing": listing, "sent_before": sent_before}
    finally:
        serve.delete("stock")
        proxy.stop()


@pytest.fixture(scope="module")
def overlapped_app(serve_port: int, s3_server: S3Server, tiny: dict[str, str],
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from ray import serve

    log = tmp_path_factory.mktemp("overlapped") / "events.jsonl"
    kwargs = {
        "handlers": ["tests.node_init.hooks:serve_hooks", "tests.node_init.hooks:short_context_engine"],
        "engine": {"overlap": "on"},
        "download": {"s3": {"endpoint_url": s3_server.endpoint, "access_key_id": "testing",
                            "secret_access_key": "testing"}},
    }
    deploy("overlapped", llm_config("tiny-overlapped", tiny["s3"], log, kwargs,
                                    server_cls="node_init.ray_serve:OverlappedLLMServer"))
    try:
        yield log
    finally:
        serve.delete("overlapped")


def test_stock_path_runs_our_node_init_on_three_nodes(serve_port: int, stock_app: dict[str, Any],
                                                      tiny: dict[str, str], ray_cluster: Any) -> None:
    """Our node init in Ray's callback hooks: per-node BeforeDownload (node1's veto honoured), the origin
    read once for the two fetching nodes, the flipped byte healed, every snapshot the source's bytes,
    one BeforeInit and one AfterInit, and the engine serving from our snapshot."""
    from handlers.event_log import read_events
    from node_init import AfterInit

    out = complete(serve_port, "stock", "tiny-stock")
    assert out["choices"][0]["text"] and out["model"] == "tiny-stock"
    seen = records(stock_app["log"])
    (init,) = [r for r in seen if r["event"] == "BeforeInit"]
    downloads = [r for r in seen if r["event"] == "BeforeDownload"]
    (after,) = [r for r in seen if r["event"] == "AfterInit"]
    assert len(downloads) == 3 and all(d["pid"] != init["pid"] for d in downloads)  # in each node's process
    assert all(d["from_replica"] == init["pid"] and d["files"] == 5 for d in downloads)  # the replica's ctx
    assert after["pid"] == init["pid"] and after["reports"] == 3 and "download" in after["timings"]
    (event,) = [e for e in read_events(stock_app["events"]) if isinstance(e, AfterInit)]
    by_id = {n.node_id: n for n in ray_cluster.nodes}
    names = {by_id[r.node_id].name: r for r in event.reports}
    assert set(names) == {"head", "node1", "node2"} and names["node1"].vetoed and not names["node1"].path
    want = {p.name: p.read_bytes() for p in Path(tiny["local"]).iterdir()}
    for name in ("head", "node2"):
        snapshot = Path(names[name].path)
        assert snapshot.is_relative_to(by_id[names[name].node_id].cache)
        assert {p.name: p.read_bytes() for p in snapshot.iterdir()} == want
    assert event.model_path == names["head"].path  # the replica's node: what the engine loaded
    assert sum(len(r.rereads) for r in event.reports) == 1  # the flipped byte, read again and healed
    sizes = {p.name: p.stat().st_size for p in Path(tiny["local"]).iterdir()}
    weights = sizes.pop("model.safetensors")
    # By the nodes' accounts: the weights from the origin once across both fetching nodes, the small files
    # by each, the healed file once more.
    origin = sum(r.bytes - r.peer_bytes for r in event.reports)
    assert origin == weights + 2 * sum(sizes.values()) + sizes["tokenizer.json"]
    # At the origin link: exactly that, and each node's listing (a HEAD has no body). A read abandoned and
    # made again (as when a flipped byte stopped every read of the node that saw it) would show here.
    assert stock_app["proxy"].bytes_sent - stock_app["sent_before"] == origin + 3 * stock_app["listing"]


def test_overlapped_server_serves_with_our_full_flow(serve_port: int, overlapped_app: Path) -> None:
    out = complete(serve_port, "overlapped", "tiny-overlapped")
    assert out["choices"][0]["text"] and out["model"] == "tiny-overlapped"
    seen = records(overlapped_app)
    # Each hook fired once, though Ray's LLMServer also drives the callback.
    assert [r["event"] for r in seen].count("BeforeInit") == 1
    assert [r["event"] for r in seen].count("AfterInit") == 1
    (init,) = [r for r in seen if r["event"] == "BeforeInit"]
    (download,) = [r for r in seen if r["event"] == "BeforeDownload"]
    (after,) = [r for r in seen if r["event"] == "AfterInit"]
    assert download["pid"] != init["pid"] and download["from_replica"] == init["pid"] and download["files"] == 5
    assert after["reports"] == 1 and {"weights_load", "overlap", "engine_boot"} <= set(after["timings"])


def test_overlapped_and_stock_answers_agree(serve_port: int, stock_app: dict[str, Any], overlapped_app: Path) -> None:
    prompt = "ray serve runs large"
    a = complete(serve_port, "stock", "tiny-stock", prompt)["choices"][0]["text"]
    b = complete(serve_port, "overlapped", "tiny-overlapped", prompt)["choices"][0]["text"]
    assert a == b  # same tied model: the overlapped weight hand-off loses nothing


def _prompt_of(tokens: int, tiny: dict[str, str]) -> str:
    """A prompt of about ``tokens`` tokens in the tiny model's own tokenizer."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tiny["local"]) / "tokenizer.json"))
    words = []
    while len(tok.encode(" ".join(words)).ids) < tokens:
        words.append("ray serve runs large models")
    return " ".join(words)


@pytest.mark.parametrize("app", ["stock", "overlapped"])
def test_an_engine_argument_a_handler_sets_reaches_the_engine(serve_port: int, app: str, tiny: dict[str, str],
                                                              request: pytest.FixtureRequest) -> None:
    """max_model_len 256 in the config, 128 from a BeforeEngineInit handler (on both paths): a prompt of
    ~180 tokens fits the first and not the second. /v1/models cannot show it
    (Serve builds its model cards from the static config), the engine's refusal can."""
    request.getfixturevalue(f"{app}_app")
    model = f"tiny-{app}"
    assert complete(serve_port, app, model)["choices"][0]["text"]  # a short prompt still serves
    with pytest.raises(urllib.error.HTTPError) as info:
        complete(serve_port, app, model, _prompt_of(180, tiny))
    assert info.value.code == 400
    assert "128" in info.value.read().decode()


def test_event_bus_callback_pickles_without_bus_or_locks(tiny: dict[str, str], tmp_path: Path) -> None:
    from node_init.ray_serve import EventBusCallback

    config = llm_config("tiny-pickle", tiny["local"], tmp_path / "x", {"handlers": ["tests.node_init.hooks:record"]})
    cb = config.get_or_create_callback()
    assert isinstance(cb, EventBusCallback)
    cb.ctx.custom_data["k"] = 1
    cb.bus  # noqa: B018 - build it: it must not travel
    clone = pickle.loads(pickle.dumps(config)).get_or_create_callback()
    assert clone is not cb and clone._bus is None and clone.ctx.custom_data == {"k": 1}
    assert clone.config.handlers == ["tests.node_init.hooks:record"]
    assert clone.ctx.worker_node_download_model == cb.ctx.worker_node_download_model


BAD_KWARGS = [
    ({"engin": {"kind": "vllm"}}, None, "unknown field `engin`"),
    ({"engine": {"overlap": "maybe"}}, "engine.overlap", "auto, on, off"),
    ({"handlers": ["no_such_module_xyz:handlers"]}, "handlers[0]", "no_such_module_xyz"),
    ({"callback": "no_such_module_xyz:Hooks"}, "callback", "no_such_module_xyz"),
    ({"callback": "tests.node_init.test_ray_serve:OnlyRaysHook"}, "callback", "implements none of"),
]


class OnlyRaysHook:
    """A class-style callback written against Ray's hook name: none of ours."""

    def on_before_node_init(self, ctx: object) -> None: ...


@pytest.mark.parametrize(("kwargs", "field", "words"), BAD_KWARGS)
@pytest.mark.parametrize("path", ["stock", "overlapped"])
def test_a_config_mistake_fails_when_the_app_is_built(kwargs: dict[str, Any], field: str | None, words: str,
                                                      path: str, tmp_path: Path) -> None:
    from ray.serve.exceptions import RayServeException
    from ray.serve.llm import LLMConfig

    from node_init.ray_serve import ServeConfigError, build_openai_app

    model = build_tiny_llama(tmp_path / "tiny")
    llm_config: dict[str, Any] = {
        "model_loading_config": {"model_id": "tiny", "model_source": str(model)},
        "accelerator_config": {"kind": "cpu"},
        "callback_config": {"callback_class": "node_init.ray_serve:EventBusCallback", "callback_kwargs": kwargs},
    }
    if path == "overlapped":  # Ray's own builder: our server class checks when Ray asks it for options
        llm_config["server_cls"] = "node_init.ray_serve:OverlappedLLMServer"
        from ray.serve.llm import build_openai_app as ray_build

        with pytest.raises(ServeConfigError) as info:
            ray_build({"llm_configs": [LLMConfig(**llm_config)]})
    else:
        with pytest.raises(ServeConfigError) as info:
            build_openai_app({"llm_configs": [llm_config]})
    assert info.value.field == field and words in str(info.value)
    assert isinstance(info.value, RayServeException)  # Serve fails the build at once, without retries


def test_a_node_side_handler_that_never_returns_fails_the_replica_at_init_timeout(
        serve_port: int, tiny: dict[str, str], tmp_path: Path) -> None:
    """Through OverlappedLLMServer: the replica's init fails at ``init_timeout_s`` plus the slack, naming
    the node's handler, each time Serve starts it; the app ends DEPLOY_FAILED, not hung."""
    from ray import serve

    from node_init import Bounds, parse_config

    kwargs = {"handlers": ["tests.reliability.hooks:stuck_sync_before_download"], "init_timeout_s": 5}
    bounds = Bounds.of(parse_config({"model_id": "x", **kwargs}))
    config = llm_config("tiny-stuck", tiny["local"], tmp_path / "events.jsonl", kwargs,
                        server_cls="node_init.ray_serve:OverlappedLLMServer")
    from ray.serve.llm import build_openai_app

    start = time.monotonic()
    # Serve starts a failing replica three times; each fails at the bound, none hangs. Not serve.run,
    # which waits without end for a replica that cannot be scheduled: the test's own bound instead.
    bound = 3 * (bounds.init_s + bounds.slack_s) + 120
    try:
        serve._run(build_openai_app({"llm_configs": [config]}), name="stuck", route_prefix="/stuck",
                   _blocking=False)
        status = serve.status().applications.get("stuck")
        while (status is None or status.status != "DEPLOY_FAILED") and time.monotonic() - start < bound:
            assert status is None or status.status != "RUNNING", status
            time.sleep(2)
            status = serve.status().applications.get("stuck")
        took = time.monotonic() - start
        assert status is not None and status.status == "DEPLOY_FAILED", f"after {took:.0f}s: {status}"
        message = " ".join(d.message for d in status.deployments.values()) + status.message
        assert "stuck_sync_before_download" in message and "init_timeout_s" in message, message
    finally:
        serve.delete("stuck")


def test_an_application_with_two_models_serves_both(serve_port: int, s3_server: S3Server, tiny: dict[str, str],
                                                    tmp_path: Path) -> None:
    """Two LLMConfigs in one application, one per path: each model has its own init and answers."""
    from ray import serve

    s3 = {"endpoint_url": s3_server.endpoint, "access_key_id": "testing", "secret_access_key": "testing"}
    stock = llm_config("two-stock", tiny["local"], tmp_path / "a.test", {"handlers": ["handlers.event_log:handlers"]},
                       env={"NODE_INIT_EVENT_LOG": str(tmp_path / "a.jsonl")})
    ours = llm_config("two-ours", tiny["s3"], tmp_path / "b.test",
                      {"handlers": ["handlers.event_log:handlers"], "download": {"s3": s3}},
                      env={"NODE_INIT_EVENT_LOG": str(tmp_path / "b.jsonl")},
                      server_cls="node_init.ray_serve:OverlappedLLMServer")
    from ray.serve.llm import build_openai_app

    # Each replica runs inside its placement bundle (1 CPU), its actor and the ingress take none: the
    # session's cluster also holds the module's two other applications.
    for config in (stock, ours):
        config.deployment_config["ray_actor_options"] = {"num_cpus": 0}
    serve.run(build_openai_app({"llm_configs": [stock, ours],
                                "ingress_deployment_config": {"ray_actor_options": {"num_cpus": 0}}}),
              name="two", route_prefix="/two", blocking=False)
    try:
        deadline = time.monotonic() + 300
        while serve.status().applications["two"].status != "RUNNING":
            assert time.monotonic() < deadline and serve.status().applications["two"].status not in (
                "DEPLOY_FAILED", "UNHEALTHY"), serve.status().applications["two"]
            time.sleep(2)
        for model in ("two-stock", "two-ours"):
            out = complete(serve_port, "two", model)
            assert out["model"] == model and out["choices"][0]["text"]
        from handlers.event_log import read_events
        from node_init import AfterInit

        for log, model in ((tmp_path / "a.jsonl", "two-stock"), (tmp_path / "b.jsonl", "two-ours")):
            (after,) = [e for e in read_events(log) if isinstance(e, AfterInit)]
            assert after.model_id == model
    finally:
        serve.delete("two")
