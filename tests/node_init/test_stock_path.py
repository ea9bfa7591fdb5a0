"""Stock ``ray.serve.llm`` with ``EventBusCallback`` alone: our node init runs in Ray's callback hooks.

The Ray-tier tests drive the callback's hooks on a real ``LLMConfig`` in Ray 2.60's order (as
``VLLMEngine.start`` does) without booting an engine; then assert what Ray's engine would be handed.
The one engine boot of this path lives in ``test_ray_serve.py`` (the stock application there).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import pickle
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from eventbus import HandlerSet
from node_init import AfterInit, BeforeEngineInit, BeforeInit, CallbackCtx, DownloadProgress, NodeReport
from node_init.cluster import units_of
from node_init.testing import AZURITE_KEY, Fault, FaultProxy, write_model_files
from tests._origin import s3_listing

MB = 1 << 20
SPREAD3 = {"bundles": [{"CPU": 1}] * 3, "strategy": "STRICT_SPREAD"}
_ids = itertools.count()

# Replica-side events of the driver (which plays the replica here).
seen: list[Any] = []
record = HandlerSet()


@record.on(BeforeInit)
@record.on(DownloadProgress)
@record.on(BeforeEngineInit)
@record.on(AfterInit)
def keep(event: Any, ctx: CallbackCtx) -> None:
    seen.append(event)


veto_engine = HandlerSet()


@veto_engine.on(BeforeEngineInit)
def no_engine_please(event: BeforeEngineInit, ctx: CallbackCtx) -> bool:
    return False


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def llm_config(source: Any, kwargs: dict[str, Any], *, model_id: str | None = None, placement: Any = None,
               engine_kwargs: dict[str, Any] | None = None, raise_error: bool = True) -> Any:
    from ray.serve.llm import LLMConfig

    return LLMConfig(
        model_loading_config={"model_id": model_id or f"stock{next(_ids)}-{os.getpid()}", "model_source": source},
        engine_kwargs={"dtype": "float32", "max_model_len": 256, **(engine_kwargs or {})},
        accelerator_config={"kind": "cpu"},
        placement_group_config=placement or {"bundles": [{"CPU": 1}]},
        callback_config={"callback_class": "node_init.ray_serve:EventBusCallback", "callback_kwargs": kwargs,
                         "raise_error_on_callback": raise_error},
    )


async def start_hooks(config: Any) -> Any:
    """Ray 2.60's ``VLLMEngine.start`` up to the engine config: the callback, as Ray drives it."""
    from ray.llm._internal.serve.utils.node_initialization_utils import initialize_node as ray_initialize_node

    callback = config.get_or_create_callback()
    await callback.run_callback("on_before_node_init")
    if callback.ctx.run_init_node:
        await ray_initialize_node(config)
    await callback.run_callback("on_after_node_init")
    return callback


@pytest.fixture
async def started() -> AsyncIterator[list[Any]]:
    """Callbacks a test starts; their snapshot holds and Ray's placement groups are freed after it."""
    import ray.util

    callbacks: list[Any] = []
    seen.clear()
    yield callbacks
    for callback in callbacks:
        if callback.result is not None:
            await callback.result.close()
        if callback.ctx.placement_group is not None:
            ray.util.remove_placement_group(callback.ctx.placement_group)


@pytest.fixture(scope="module")
def local_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    local = tmp_path_factory.mktemp("stock") / "m"
    write_model_files(local, {"model-00001-of-00002.safetensors": 3 * MB + 7, "model-00002-of-00002.safetensors": MB})
    return local


def s3(endpoint: str) -> dict[str, Any]:
    return {"endpoint_url": endpoint, "access_key_id": "testing", "secret_access_key": "testing"}


@pytest.mark.ray
@pytest.mark.anyio
async def test_our_node_init_runs_in_rays_hooks_on_three_nodes_and_hands_ray_the_snapshot(
        ray_cluster: Any, s3_server: Any, local_model: Path, started: list[Any]) -> None:
    """S3 on a 3-node group as Ray makes it from placement_group_config, share auto, node1 vetoing
    its download, a BeforeEngineInit handler's engine argument: Ray's download never runs, the
    engine config names our snapshot, the origin is read once, and it all survives pickling."""
    from ray.util.placement_group import PlacementGroup

    prefix = f"stock-{next(_ids)}"
    s3_server.upload_dir(local_model, "models", prefix)
    proxy = FaultProxy(s3_server.endpoint).start()  # counts what crosses the origin link
    try:
        files, listing = s3_listing(proxy, f"s3://models/{prefix}")
        sent_before = proxy.bytes_sent
        # One byte of config.json flipped once, while the weights' ranges are being read: that node
        # reads config.json again, and nothing else.
        proxy.add(Fault(kind="corrupt", match=f"{prefix}/config.json", after_bytes=10, count=1))
        kwargs = {"handlers": ["tests.node_init.test_stock_path:record", "tests.node_init.hooks:veto_node1",
                               "tests.node_init.hooks:short_context_engine"],
                  "download": {"s3": s3(proxy.endpoint), "share": "auto", "part_size_mb": 1}}
        config = llm_config(f"s3://models/{prefix}", kwargs, placement=SPREAD3)
        callback = await start_hooks(config)
        started.append(callback)
    finally:
        proxy.stop()
    assert not callback.ctx.run_init_node  # Ray's own download never ran
    assert isinstance(callback.ctx.placement_group, PlacementGroup)
    assert callback.ctx.placement_group == callback.result.placement_group  # the group we used is Ray's
    engine_config = config.get_engine_config()
    reports: tuple[NodeReport, ...] = callback.result.reports
    by_id = {n.node_id: n for n in ray_cluster.nodes}
    assert {by_id[r.node_id].name for r in reports} == {"head", "node1", "node2"}
    (vetoed,) = [r for r in reports if r.vetoed]
    assert by_id[vetoed.node_id].name == "node1" and not (by_id[vetoed.node_id].cache / config.model_id).exists()
    want = digest(local_model)
    for report in reports:
        if not report.vetoed:  # every fetching node's snapshot is the source's bytes
            assert digest(Path(report.path)) == want
    assert engine_config.hf_model_id == callback.result.model_path
    assert Path(engine_config.hf_model_id).is_relative_to(ray_cluster.head.cache)  # the replica's node
    sizes = {f.key: f.size for f in files}
    shared = sum(hi - lo for _, _, lo, hi in units_of(files, MB))
    # By the nodes' accounts: the shared ranges from the origin once across both fetching nodes, the
    # rest (small files, a short last range) by each, the flipped file once more.
    origin = sum(r.bytes - r.peer_bytes for r in reports)
    assert sum(len(r.rereads) for r in reports) == 1 and proxy.injected
    assert origin == shared + 2 * (sum(sizes.values()) - shared) + sizes["config.json"]
    sent = proxy.bytes_sent - sent_before
    assert sent == origin + 3 * listing  # what crossed the origin link: that, and each node's listing
    # The handler's engine argument reached Ray's engine config, which Ray reads next.
    assert config.engine_kwargs["max_model_len"] == 128 and engine_config.engine_kwargs["max_model_len"] == 128
    names = [type(e).__name__ for e in seen]
    assert names.count("BeforeInit") == names.count("BeforeEngineInit") == names.count("AfterInit") == 1
    assert any(isinstance(e, DownloadProgress) for e in seen)
    (after,) = [e for e in seen if isinstance(e, AfterInit)]
    assert len(after.reports) == 3 and after.model_path == engine_config.hf_model_id
    # Ray pickles the LLMConfig into tasks and the engine's workers: the path and the ctx travel, no bus.
    clone = pickle.loads(pickle.dumps(config))
    assert clone.get_engine_config().hf_model_id == engine_config.hf_model_id
    copy = clone.get_or_create_callback()
    assert copy is not callback and copy._bus is None and copy.result is None and not copy.ctx.run_init_node
    assert clone.engine_kwargs["max_model_len"] == 128


def store(kind: str, servers: dict[str, Any], local: Path) -> tuple[str, dict[str, Any]]:
    """Ray's URI for ``local`` uploaded to the store ``kind``, and our download settings for it."""
    prefix = f"stock-{next(_ids)}"
    if kind == "gs":
        servers["gcs"].upload_dir(local, "models", prefix)
        return f"gs://models/{prefix}", {"gcs": {"endpoint_url": servers["gcs"].endpoint, "anonymous": True}}
    servers["azure"].upload_dir(local, "models", prefix)
    host = f"devstoreaccount1.{'dfs' if kind == 'abfss' else 'blob'}.core.windows.net"
    uri = f"{kind}://models@{host}/{prefix}"
    return uri, {"azure": {"endpoint_url": servers["azure"].endpoint, "account_key": AZURITE_KEY}}


@pytest.mark.ray
@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["gs", "azure", "abfss", "mirror"])
async def test_each_of_rays_source_forms_is_downloaded_by_us(ray_cluster: Any, gcs_server: Any, azure_server: Any,
                                                             local_model: Path, started: list[Any], kind: str) -> None:
    servers = {"gcs": gcs_server, "azure": azure_server}
    uri, download = store("gs" if kind == "mirror" else kind, servers, local_model)
    source: Any = {"bucket_uri": uri} if kind == "mirror" else uri  # Ray's CloudMirrorConfig form
    config = llm_config(source, {"download": {**download, "part_size_mb": 1}}, placement=SPREAD3)
    callback = await start_hooks(config)
    started.append(callback)
    assert not callback.ctx.run_init_node and len(callback.result.reports) == 3
    path = Path(config.get_engine_config().hf_model_id)
    assert path.is_relative_to(ray_cluster.head.cache) and digest(path) == digest(local_model)
    for report in callback.result.reports:
        assert digest(Path(report.path)) == digest(local_model)


@pytest.mark.ray
@pytest.mark.anyio
async def test_a_streaming_format_downloads_no_model_but_fetches_the_mirrors_extra_files(
        ray_cluster: Any, s3_server: Any, local_model: Path, tmp_path: Path, started: list[Any]) -> None:
    """``runai_streamer``: Ray's mode NONE, vLLM reads the bucket itself (Ray's
    ``_resolve_hf_model_id_from_mirror`` hands it the URI), the extra files are ours to fetch."""
    prefix = f"stock-{next(_ids)}"
    s3_server.upload_dir(local_model, "models", prefix)
    extra = tmp_path / "extra"
    write_model_files(extra, {"cache.bin": 1000})
    s3_server.upload_dir(extra, "models", f"{prefix}-extra")
    dest = tmp_path / "compile-cache"
    mirror = {"bucket_uri": f"s3://models/{prefix}",
              "extra_files": [{"bucket_uri": f"s3://models/{prefix}-extra", "destination_path": str(dest)}]}
    config = llm_config(mirror, {"download": {"s3": s3(s3_server.endpoint)}},
                        engine_kwargs={"load_format": "runai_streamer"})
    engine_config = config.get_engine_config()
    before = (engine_config.hf_model_id, engine_config.mirror_config)
    callback = await start_hooks(config)
    started.append(callback)
    assert not callback.ctx.run_init_node and callback.ctx.worker_node_download_model.name == "NONE"
    assert (engine_config.hf_model_id, engine_config.mirror_config) == before  # left to Ray, as Ray leaves it
    assert digest(dest) == digest(extra)
    (report,) = callback.result.reports
    assert report.bytes == 0 and not (ray_cluster.head.cache / config.model_id / "config.json").exists()


@pytest.mark.ray
@pytest.mark.anyio
async def test_a_hub_id_is_pinned_verified_and_handed_to_the_engine_as_local_snapshots(
        ray_cluster: Any, tmp_path: Path, started: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare Hub id as Ray's model_source, and a tokenizer from another repo: both local for the engine."""
    from node_init.testing import HubServer

    server = HubServer().start()
    try:
        local = tmp_path / "m"
        write_model_files(local, {"model.safetensors": 2 * MB})
        commit = server.push_dir("org/stock-tiny", local)
        server.push("org/stock-tok", {"tokenizer.json": b'{"v": 1}', "tokenizer_config.json": b"{}"})
        monkeypatch.chdir(tmp_path)  # "org/..." is no path here
        kwargs = {"download": {"hf": {"endpoint_url": server.endpoint}, "part_size_mb": 1}}
        config = llm_config("org/stock-tiny", kwargs, engine_kwargs={"tokenizer": "org/stock-tok"},
                            placement=SPREAD3)
        callback = await start_hooks(config)
        started.append(callback)
    finally:
        server.stop()
    engine_config = config.get_engine_config()
    path = Path(engine_config.hf_model_id)
    assert path.is_dir() and digest(path) == digest(local)
    assert all(r.path and digest(Path(r.path)) == digest(local) for r in callback.result.reports)
    assert len(callback.result.reports) == 3
    reads = [p for _, p in server.requests if "/org/stock-tiny/resolve/" in p]
    assert reads and all(f"/resolve/{commit}/" in p for p in reads)  # pinned: every node read one commit
    tokenizer = Path(config.engine_kwargs["tokenizer"])
    assert tokenizer.is_dir() and (tokenizer / "tokenizer.json").read_bytes() == b'{"v": 1}'


@pytest.mark.ray
@pytest.mark.anyio
async def test_a_node_side_hang_is_bounded_by_init_timeout_s(ray_cluster: Any, local_model: Path,
                                                             started: list[Any]) -> None:
    from node_init import PhaseError

    kwargs = {"handlers": ["tests.reliability.hooks:stuck_sync_before_download"], "init_timeout_s": 5}
    config = llm_config(str(local_model), kwargs)
    with pytest.raises(Exception) as info:
        await start_hooks(config)
    started.append(config.get_or_create_callback())
    cause = info.value.__cause__
    assert isinstance(cause, PhaseError), info.value
    assert "stuck_sync_before_download" in str(cause) and "init_timeout_s" in str(cause)


@pytest.mark.ray
@pytest.mark.anyio
@pytest.mark.parametrize("raise_error", [True, False])
async def test_a_failed_node_init_fails_the_replica_never_falls_back_to_rays_download(
        ray_cluster: Any, local_model: Path, started: list[Any], raise_error: bool) -> None:
    """A vetoed BeforeEngineInit (Ray boots regardless): a typed error naming the handler, also with
    ``raise_error_on_callback=False`` (Ray would otherwise log it and run its own download)."""
    from node_init import PhaseError

    config = llm_config(str(local_model), {"handlers": ["tests.node_init.test_stock_path:veto_engine"]},
                        raise_error=raise_error)
    with pytest.raises(Exception) as info:
        await start_hooks(config)
    callback = config.get_or_create_callback()
    started.append(callback)
    error = info.value if isinstance(info.value, PhaseError) else info.value.__cause__
    assert isinstance(error, PhaseError) and error.phase == "before_engine_init"
    assert "no_engine_please" in str(error)
    assert not callback.ctx.run_init_node  # Ray's download stays off


@pytest.mark.ray
@pytest.mark.anyio
async def test_node_init_ray_keeps_rays_download_and_our_hooks_observe(ray_cluster: Any, local_model: Path,
                                                                      started: list[Any]) -> None:
    config = llm_config(str(local_model), {"node_init": "ray", "handlers": ["tests.node_init.test_stock_path:record"]})
    callback = await start_hooks(config)
    started.append(callback)
    assert callback.result is None and callback.ctx.run_init_node  # Ray's initialize_node ran
    assert [type(e).__name__ for e in seen] == ["BeforeInit", "AfterInit"]


@pytest.mark.parametrize(("kwargs", "field"), [({"node_init": "both"}, "node_init")])
def test_a_wrong_node_init_setting_fails_the_build(kwargs: dict[str, Any], field: str, local_model: Path) -> None:
    from node_init.ray_serve import ServeConfigError, build_openai_app

    llm: dict[str, Any] = {
        "model_loading_config": {"model_id": "tiny", "model_source": str(local_model)},
        "accelerator_config": {"kind": "cpu"},
        "callback_config": {"callback_class": "node_init.ray_serve:EventBusCallback", "callback_kwargs": kwargs},
    }
    with pytest.raises(ServeConfigError) as info:
        build_openai_app({"llm_configs": [llm]})
    assert info.value.field == field and "'ours' or 'ray'" in str(info.value)
