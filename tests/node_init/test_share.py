"""Fetch once per cluster (``download.share``): the share plan, and three real nodes sharing one fetch."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import signal
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from eventbus import EventBus
from node_init import (
    BeforeInit,
    Bounds,
    DownloadError,
    DownloadMode,
    DownloadProgress,
    NodeInitConfig,
    PhaseError,
    PlacementConfig,
    initialize_node,
)
from node_init.cluster import (
    AGENT_PREFIX,
    EXCHANGE_NAME,
    EXCHANGE_NAMESPACE,
    EXCHANGE_PREFIX,
    assign,
    provisional,
    sharing,
    start_exchange,
    units_of,
)
from node_init.download import RemoteFile
from node_init.testing import FaultProxy, S3Server, iter_files, write_model_files
from tests._configs import node_config
from tests._origin import s3_listing
from tests._prometheus import label, scrape
from tests.conftest import RayCluster

MIB = 1 << 20
SPREAD3 = {"bundles": [{"CPU": 1}] * 3, "strategy": "STRICT_SPREAD", "ready_timeout_s": 30}


def test_units_are_the_downloaders_ranges_minus_small_files() -> None:
    files = [RemoteFile("config.json", 900, "a"), RemoteFile("one.bin", MIB, "b"),
             RemoteFile("big.bin", 2 * MIB + 5, "c")]
    # config.json and big.bin's 5-byte tail are too small to share; a file of one part is one range.
    assert units_of(files, MIB) == [("one.bin", "b", 0, MIB), ("big.bin", "c", 0, MIB),
                                    ("big.bin", "c", MIB, 2 * MIB)]


@pytest.mark.parametrize("seed", range(20))
def test_every_range_two_nodes_need_gets_one_owner_among_them_and_loads_balance(seed: int) -> None:
    rng = random.Random(seed)
    units = [("f", "e", i * MIB, i * MIB + rng.choice([MIB, MIB // 2])) for i in range(rng.randint(1, 40))]
    needs = {f"n{k}": {u for u in units if rng.random() < 0.7} for k in range(rng.randint(1, 5))}
    owners = assign(needs)
    for unit in units:
        needers = [n for n, u in needs.items() if unit in u]
        if len(needers) > 1:
            assert owners[unit] in needers
        else:
            assert unit not in owners  # one node needs it: it simply fetches it
    if all(needs[n] == set(units) for n in needs) and len(needs) > 1:  # the same files everywhere
        load = {n: sum(u[3] - u[2] for u, o in owners.items() if o == n) for n in needs}
        assert max(load.values()) - min(load.values()) <= MIB


@pytest.mark.parametrize("seed", range(10))
def test_provisional_shares_are_the_assignment_when_every_node_needs_the_same_files(seed: int) -> None:
    rng = random.Random(seed)
    units = [("f", "e", i * MIB, i * MIB + rng.choice([MIB, MIB // 3])) for i in range(rng.randint(1, 30))]
    nodes = [f"n{k}" for k in range(rng.randint(2, 5))]
    guess = provisional(units, nodes)
    claims = {n: {u for u, o in guess.items() if o == n} for n in nodes}
    # Each node computes its guess alone; the exchange, given every node's claims, agrees with all of them.
    assert assign({n: set(units) for n in nodes}, claims) == guess == assign({n: set(units) for n in nodes})
    assert provisional(units, ["n0"]) == {}  # one node: nothing to share


def test_a_claimed_range_goes_to_a_claimant_that_needs_it_and_the_rest_balances() -> None:
    units = [("f", "e", i * MIB, (i + 1) * MIB) for i in range(6)]
    needs = {"a": set(units), "b": set(units), "c": set(units[:3])}
    # "a" claims two ranges, "c" claims one it does not need (it guessed wrong): that claim counts for nothing.
    owners = assign(needs, {"a": {units[0], units[4]}, "c": {units[5]}})
    assert owners[units[0]] == owners[units[4]] == "a"
    assert owners[units[5]] in {"a", "b"} and set(owners) == set(units)
    assert sum(1 for o in owners.values() if o == "b") >= 2  # the unclaimed ones went to the least loaded


@pytest.mark.parametrize(("share", "source", "nodes", "expected"), [
    ("auto", "s3://bucket/m", 2, True), ("auto", "s3://bucket/m", 1, False), ("auto", "/models/m", 3, False),
    ("on", "/models/m", 3, True), ("on", "s3://bucket/m", 1, False), ("off", "s3://bucket/m", 3, False),
])
def test_when_an_init_shares(share: str, source: str, nodes: int, expected: bool) -> None:
    cfg = node_config(source, download={"share": share})
    assert sharing(cfg, [f"n{i}" for i in range(nodes)]) is expected


def test_a_share_setting_outside_its_values_is_refused() -> None:
    from node_init import ConfigError

    with pytest.raises(ConfigError, match="auto, on, off"):
        node_config("s3://bucket/m", download={"share": "always"})
    with pytest.raises(ConfigError, match="share_memory_mb"):
        node_config("s3://bucket/m", download={"share_memory_mb": 0})
    for idle in (0, -5):
        with pytest.raises(ConfigError) as info:
            node_config("s3://bucket/m", download={"share_hub_idle_s": idle})
        assert info.value.field == "download.share_hub_idle_s" and "> 0" in str(info.value)
    from node_init import Bounds

    assert Bounds.of(node_config("s3://bucket/m", download={"share_hub_idle_s": 42})).hub_idle_s == 42


# --- three real nodes -------------------------------------------------------------------------------------


@pytest.fixture
def shared_model(tmp_path: Path, s3_server: S3Server) -> dict[str, Any]:
    """A model under a prefix of its own: no node holds it yet (holdings are kept per source)."""
    local = tmp_path / "model"
    write_model_files(local, {"model-00001-of-00002.safetensors": 4 * MIB, "model-00002-of-00002.safetensors": 2 * MIB})
    prefix = f"shared-{tmp_path.name}"
    s3_server.upload_dir(local, "models", prefix)
    sizes = {p.relative_to(local).as_posix(): p.stat().st_size for p in iter_files(local)}
    return {"local": local, "uri": f"s3://models/{prefix}", "sizes": sizes}


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in iter_files(root)}


def config(model: dict[str, Any], endpoint: str, handlers: tuple[str, ...] = (), **download: Any) -> NodeInitConfig:
    s3 = {"endpoint_url": endpoint, "access_key_id": "testing", "secret_access_key": "testing"}
    return node_config(model["uri"], prefix="share", placement=SPREAD3, handlers=list(handlers),
                       download={"part_size_mb": 1, "timeout_s": 60, "stall_timeout_s": 10, "s3": s3, **download})


class Recorder(EventBus):
    def __init__(self) -> None:
        super().__init__()
        self.progress: list[DownloadProgress] = []
        self.subscribe(DownloadProgress, lambda e, c: self.progress.append(e))


def pid_recorder(pid_dir: Path) -> Recorder:
    """A Recorder whose init has each node task write its pid to ``pid_dir/<NODE_NAME>``
    (with the ``tests.node_init.hooks:pid_file`` handler), so a test can kill one."""
    bus = Recorder()
    bus.subscribe(BeforeInit, lambda e, ctx: ctx.custom_data.update(pid_dir=str(pid_dir)))
    return bus


def kill_task_of(pid_dir: Path, node_name: str) -> int:
    """SIGKILL the node task of ``node_name`` (a node lost); its pid."""
    pid = int((pid_dir / node_name).read_text())
    os.kill(pid, signal.SIGKILL)
    return pid


async def init_during(fault: Any, cfg: NodeInitConfig, bus: EventBus) -> Any:
    """``initialize_node`` with ``fault`` running beside it; the init's own error, not a group of one."""
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(fault)
            return await initialize_node(cfg, bus=bus)
    except ExceptionGroup as group:
        raise group.exceptions[0] from None


@pytest.mark.ray
@pytest.mark.anyio
@pytest.mark.parametrize("share", ["auto", "off"])
async def test_three_nodes_take_the_model_once_from_the_source(ray_cluster: RayCluster, s3_server: S3Server,
                                                               shared_model: dict[str, Any], share: str) -> None:
    proxy = FaultProxy(s3_server.endpoint).start()  # counts what crosses the origin link
    bus = Recorder()
    try:
        _, listing = s3_listing(proxy, shared_model["uri"])
        sent_before = proxy.bytes_sent
        cfg = config(shared_model, proxy.endpoint, ("handlers.timing:handlers",), share=share)
        result = await initialize_node(cfg, bus=bus)
        await result.close()
    finally:
        proxy.stop()
    if share == "auto":  # the exchange's metrics reach Ray's Prometheus endpoint
        nodes = {r.node_id for r in result.reports}
        peer = scrape("ray_node_init_peer_bytes", having=cfg.model_id, nodes=nodes)
        assert {label(line, "node") for line in peer} == nodes
        calls = scrape("ray_node_init_exchange_call_seconds_count")
        named = {label(line, "call") for line in calls}
        assert {"join", "adopt", "take", "finished"} <= named and {"offer", "offer_all"} & named, named
        held = scrape("ray_node_init_exchange_held_bytes")
        assert held and {label(line, "node") for line in held} <= nodes
        assert all(r.takeovers == 0 for r in result.reports)  # healthy peers: nothing taken over
    sizes = shared_model["sizes"]
    total = sum(sizes.values())
    small = sum(s for s in sizes.values() if s < 256 * 1024)  # fetched by every node: not worth sharing
    origin = sum(r.bytes - r.peer_bytes for r in result.reports)
    assert all(r.bytes == total for r in result.reports)  # every node fetched the whole model...
    if share == "auto":
        assert origin == total + 2 * small  # ...and the weights crossed the origin link once
        assert all(r.peer_bytes > 0 for r in result.reports)  # each node took ranges from the others
    else:
        assert origin == 3 * total and all(r.peer_bytes == 0 for r in result.reports)
    assert proxy.bytes_sent - sent_before == origin + 3 * listing  # the proxy saw it too, and each node's listing
    want = digest(shared_model["local"])
    for node in ray_cluster.nodes:  # the same verified cache as a plain download
        assert digest(node.cache / cfg.model_id) == want
    for report in result.reports:  # each node's progress ended at its whole download, peers' bytes included
        last = [p for p in bus.progress if p.node_id == report.node_id][-1]
        assert last.bytes_done == last.bytes_total == report.bytes


@pytest.mark.ray
@pytest.mark.anyio
@pytest.mark.parametrize("handler", ["veto_node1", "custom_download"])
async def test_nodes_that_need_less_than_their_peers_guessed_still_give_one_verified_copy(
        ray_cluster: RayCluster, s3_server: S3Server, shared_model: dict[str, Any], handler: str) -> None:
    """Each node starts on its provisional share (as if every node needed every file) before the
    others join. Here one node vetoes its download (``veto_node1``), or the worker nodes want the
    tokenizer only (``custom_download``): the ranges they were guessed to own are read by a node
    that needs them, once, and nobody waits out a bound for them."""
    proxy = FaultProxy(s3_server.endpoint).start()
    try:
        _, listing = s3_listing(proxy, shared_model["uri"])
        sent_before = proxy.bytes_sent
        cfg = config(shared_model, proxy.endpoint, (f"tests.node_init.hooks:{handler}",), share="auto")
        with anyio.fail_after(60):
            result = await initialize_node(cfg)
        await result.close()
    finally:
        proxy.stop()
    sizes = shared_model["sizes"]
    total = sum(sizes.values())
    small = sum(s for s in sizes.values() if s < 256 * 1024)
    full = [r for r in result.reports if r.bytes == total]
    want = digest(shared_model["local"])
    by_id = {n.node_id: n for n in ray_cluster.nodes}
    for report in full:
        assert digest(by_id[report.node_id].cache / cfg.model_id) == want
    origin = sum(r.bytes - r.peer_bytes for r in full)
    if handler == "veto_node1":
        assert len(full) == 2 and all(r.peer_bytes > 0 for r in full)  # the two left share between them
        assert origin == total + small  # the weights once; each fetched the small files itself
        assert next(r for r in result.reports if by_id[r.node_id].name == "node1").vetoed
    else:  # only the replica's node needs the weights: nothing to share, all of it from the origin
        assert len(full) == 1 and full[0].peer_bytes == 0
    # Nothing crossed the origin link twice (a wrong guess costs no bytes): what the nodes counted, and
    # each node's listing.
    assert proxy.bytes_sent - sent_before == sum(r.bytes - r.peer_bytes for r in result.reports) + 3 * listing


@pytest.mark.ray
@pytest.mark.anyio
async def test_a_peer_killed_mid_exchange_costs_only_its_share(ray_cluster: RayCluster, s3_server: S3Server,
                                                               shared_model: dict[str, Any], tmp_path: Path) -> None:
    """node2's task process is SIGKILLed (a node lost) once it has fetched part of its share.

    The others take what it owned from the source and finish, byte-identical to it; the init then
    fails, typed, naming node2 (a placement group with a dead node cannot serve).
    """
    proxy = FaultProxy(s3_server.endpoint, rate_mb_s=3.0).start()  # slow enough to kill node2 mid-share
    bus = pid_recorder(tmp_path)
    node2 = next(n for n in ray_cluster.nodes if n.name == "node2")
    killed: list[int] = []

    async def kill_node2_when_it_has_bytes() -> None:
        while not any(p.node_id == node2.node_id and p.bytes_done >= MIB for p in bus.progress):
            await anyio.sleep(0.05)
        killed.append(kill_task_of(tmp_path, "node2"))

    try:
        cfg = config(shared_model, proxy.endpoint, ("tests.node_init.hooks:pid_file",), share="auto")
        with pytest.raises(DownloadError) as info:
            await init_during(kill_node2_when_it_has_bytes, cfg, bus)
    finally:
        proxy.stop()
    assert killed and info.value.node_id == node2.node_id
    sizes = shared_model["sizes"]
    total, small = sum(sizes.values()), sum(s for s in sizes.values() if s < 256 * 1024)
    node2_share = (total - small) // 3  # six 1 MiB ranges, two each
    # Killed mid-exchange: part of node2's share crossed the link twice (node2 read some of it before it
    # died, and a survivor read it all again), beyond what every node fetches anyway (the small files).
    assert proxy.bytes_sent >= total + 2 * small + 64 * 1024
    # ...but only node2's share did, once more (one survivor takes each of its ranges over), plus
    # what node2 itself had fetched, the small files every node fetches, and the listings.
    assert proxy.bytes_sent <= total + 3 * small + 2 * node2_share + 256 * 1024
    want = digest(shared_model["local"])
    for node in ray_cluster.nodes:
        if node is not node2:  # the survivors refetched node2's share and hold the whole model
            assert digest(node.cache / cfg.model_id) == want


@pytest.mark.ray
@pytest.mark.anyio
async def test_a_node_lost_with_its_agent_has_each_range_replaced_once_through_the_hub(
        ray_cluster: RayCluster, s3_server: S3Server, shared_model: dict[str, Any], tmp_path: Path) -> None:
    """A whole node is removed once it has offered part of its share (its task frozen first, so it
    cannot finish meanwhile): its task, its objects and its exchange agent go with it. The first
    survivor to find the agent gone is told by the hub to read each of its ranges and hand them out
    from its own agent; the other survivor takes them there, so the lost share crosses the origin
    link once more, not once per survivor. The init fails typed, naming the lost node; the
    survivors' caches are whole."""
    doomed = ray_cluster.cluster.add_node(num_cpus=1, resources={"doomed": 1}, env_vars={
        "NODE_INIT_CACHE_DIR": str(tmp_path / "doomed"), "NODE_NAME": "doomed"})
    ray_cluster.cluster.wait_for_nodes()
    proxy = FaultProxy(s3_server.endpoint, rate_mb_s=3.0).start()  # slow enough to lose it mid-share
    (pids := tmp_path / "pids").mkdir()
    bus = pid_recorder(pids)

    removed: list[float] = []

    async def remove_once_it_offered() -> None:
        while not any(p.node_id == doomed.node_id and p.bytes_done >= MIB for p in bus.progress):
            await anyio.sleep(0.01)
        # Frozen at once, then removed: removing a node takes a while on a loaded machine, and a node
        # left running meanwhile could finish its share (and the init) before it is gone.
        os.kill(pid := int((pids / "doomed").read_text()), signal.SIGSTOP)
        ray_cluster.cluster.remove_node(doomed, allow_graceful=False)
        removed.append(anyio.current_time())
        with contextlib.suppress(ProcessLookupError):  # a frozen process cannot notice its raylet go
            os.kill(pid, signal.SIGKILL)

    survivors = [n for n in ray_cluster.nodes if n.name in ("node1", "node2")]
    try:
        # The default stall bound (60 s): the wait this test rules out (for the lost node to take what
        # the survivors offered) is that long, far from the few seconds the init takes to fail without it.
        cfg = msgspec.structs.replace(config(shared_model, proxy.endpoint, ("tests.node_init.hooks:pid_file",),
                                             share="auto", stall_timeout_s=60), placement=PlacementConfig(
            bundles=[{"node1": 1.0}, {"node2": 1.0}, {"doomed": 1.0}], strategy="STRICT_SPREAD", ready_timeout_s=30))
        with anyio.fail_after(120), pytest.raises(DownloadError) as info:
            await init_during(remove_once_it_offered, cfg, bus)
    finally:
        proxy.stop()
    after_s = anyio.current_time() - removed[0]
    assert info.value.node_id == doomed.node_id
    # The survivors did not wait, at the end, for the lost node to take what they offered (the hub told
    # their agents it is gone): that wait is stall_timeout_s (60 s), on top of about 5 s here (12 s seen
    # on a loaded machine).
    assert after_s < 40, after_s
    sizes = shared_model["sizes"]
    total, small = sum(sizes.values()), sum(s for s in sizes.values() if s < 256 * 1024)
    share = (total - small) // 3  # six 1 MiB ranges, two each
    # What the lost node read (at least 1 MiB), its share once more, the small files on every node:
    # were each survivor to read the lost share itself, the origin would send a whole share more.
    assert proxy.bytes_sent <= total + 3 * small + 2 * share + 256 * 1024, proxy.bytes_sent - total
    want = digest(shared_model["local"])
    for node in survivors:
        assert digest(node.cache / cfg.model_id) == want
    assert any(p.node_id in {n.node_id for n in survivors} for p in bus.progress)


@pytest.mark.ray
@pytest.mark.anyio
@pytest.mark.parametrize("stop_at", [1, MIB + 1], ids=["first_bytes", "after_offers"])
async def test_a_hung_peer_s_share_is_taken_over_once_and_it_finishes_when_it_resumes(
        ray_cluster: RayCluster, s3_server: S3Server, shared_model: dict[str, Any], tmp_path: Path,
        stop_at: int) -> None:
    """node2's task process is SIGSTOPped (hung, or dead before Ray says so): after its first bytes,
    or once it has offered pieces its peers took but may not be able to read (the objects' owner
    does not answer); SIGCONTed once the others hold the model. One of them took each of node2's
    ranges over, after a wait on it or a piece it could not read, and offered it to the other, so
    node2's share crossed the link once more (node2 reads it too, for itself), not once per
    waiting node. Every snapshot is whole."""
    proxy = FaultProxy(s3_server.endpoint, rate_mb_s=3.0).start()
    bus = pid_recorder(tmp_path)
    node2 = next(n for n in ray_cluster.nodes if n.name == "node2")
    others = [n.node_id for n in ray_cluster.nodes if n is not node2]
    sizes = shared_model["sizes"]
    total, small = sum(sizes.values()), sum(s for s in sizes.values() if s < 256 * 1024)
    stopped: list[int] = []

    async def hang_node2_until_the_others_hold_the_model() -> None:
        while not any(p.node_id == node2.node_id and p.bytes_done >= stop_at for p in bus.progress):
            await anyio.sleep(0.01)
        pid = int((tmp_path / "node2").read_text())
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)
        try:
            while not all(any(p.node_id == n and p.bytes_done >= total for p in bus.progress) for n in others):
                await anyio.sleep(0.05)
        finally:
            os.kill(pid, signal.SIGCONT)

    try:
        # A stall bound of 15 s: a wait on a peer is 5 s, 10 s in all, so Ray's own latency on this
        # loaded machine (a piece's object can take seconds to arrive) does not pass for a hung owner.
        cfg = config(shared_model, proxy.endpoint, ("tests.node_init.hooks:pid_file",), share="auto",
                     stall_timeout_s=15)
        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hang_node2_until_the_others_hold_the_model)
                result = await initialize_node(cfg, bus=bus)
            await result.close()
    finally:
        proxy.stop()
    assert stopped
    node2_share = (total - small) // 3  # six 1 MiB ranges, two each
    assert proxy.bytes_sent <= total + 2 * small + node2_share + 512 * 1024, proxy.bytes_sent - total
    # Every node takes the two thirds it does not own from peers, but the taker-over reads node2's share.
    assert sum(r.peer_bytes for r in result.reports) >= 2 * (total - small) - node2_share - 256 * 1024
    taken = {r.node_id: r.takeovers for r in result.reports if r.takeovers}
    assert taken and all(n <= 2 for n in taken.values()), taken  # node2's ranges (two), each taken over once
    want = digest(shared_model["local"])
    for node in ray_cluster.nodes:
        assert digest(node.cache / cfg.model_id) == want


@pytest.mark.ray
@pytest.mark.anyio
@pytest.mark.parametrize("and_a_node", [False, True])
async def test_an_exchange_that_dies_mid_download_costs_only_origin_bytes(
        ray_cluster: RayCluster, s3_server: S3Server, shared_model: dict[str, Any], tmp_path: Path,
        and_a_node: bool) -> None:
    """The exchange hub is killed once the nodes are under way: every node reads what it still
    lacks from the source, and the init succeeds with every node's snapshot whole and verified.
    If a node dies too, the init fails typed, naming that node, and the others are still whole.
    The next init starts a new hub."""
    import ray

    proxy = FaultProxy(s3_server.endpoint, rate_mb_s=3.0).start()  # slow enough to kill it mid-download
    bus = pid_recorder(tmp_path)
    node2 = next(n for n in ray_cluster.nodes if n.name == "node2")
    killed: list[str] = []

    async def kill_once_under_way() -> None:
        while not any(p.bytes_done >= MIB for p in bus.progress):
            await anyio.sleep(0.05)
        ray.kill(ray.get_actor(EXCHANGE_NAME, namespace=EXCHANGE_NAMESPACE))
        killed.append(EXCHANGE_NAME)
        if and_a_node:
            kill_task_of(tmp_path, "node2")

    cfg = config(shared_model, proxy.endpoint, ("tests.node_init.hooks:pid_file",), share="auto")
    error: DownloadError | None = None
    try:
        with anyio.fail_after(90):
            result = await init_during(kill_once_under_way, cfg, bus)
            await result.close()
    except DownloadError as exc:
        error = exc
    finally:
        proxy.stop()
    assert killed
    if and_a_node:
        assert error is not None and error.node_id == node2.node_id
    else:
        assert error is None
        assert all(r.bytes == sum(shared_model["sizes"].values()) for r in result.reports)
    want = digest(shared_model["local"])
    for node in ray_cluster.nodes:
        if not (and_a_node and node is node2):
            assert digest(node.cache / cfg.model_id) == want
    assert await open_exchanges() == []


async def open_exchanges() -> list[str]:
    """Inits whose exchange the cluster's hub or a node's agent still holds (none without a hub), once
    closes landed (bounded)."""
    import ray
    from ray.util import list_named_actors

    held: list[str] = []
    for _ in range(100):
        agents = [a["name"] for a in list_named_actors(True)
                  if a["namespace"] == EXCHANGE_NAMESPACE and a["name"].startswith(AGENT_PREFIX)]
        try:
            held = await ray.get_actor(EXCHANGE_NAME, namespace=EXCHANGE_NAMESPACE).inits.remote()
        except (ValueError, ray.exceptions.RayActorError):  # no hub (killed): nothing held
            held = []
        for name in agents:
            with contextlib.suppress(ValueError, ray.exceptions.RayActorError):  # gone with its node
                held += [f"{name}:{init}" for init in await ray.get_actor(name, namespace=EXCHANGE_NAMESPACE
                                                                          ).inits.remote()]
        if not held:
            break
        await anyio.sleep(0.1)
    return held


@pytest.mark.ray
@pytest.mark.anyio
async def test_no_exchange_outlives_its_init(ray_cluster: RayCluster, s3_server: S3Server,
                                             shared_model: dict[str, Any]) -> None:
    """An init's exchange opens while placement runs: the hub drops it after a shared init, after
    one that turned out to be on a single node, and after one whose placement failed. Later inits
    share through the same hub, not a new actor each."""
    import ray

    cfg = config(shared_model, s3_server.endpoint, share="auto")
    result = await initialize_node(cfg)
    await result.close()
    assert {r.peer_bytes > 0 for r in result.reports} == {True}  # it did share
    assert await open_exchanges() == []
    hub = ray.get_actor(EXCHANGE_NAME, namespace=EXCHANGE_NAMESPACE)
    again = msgspec.structs.replace(cfg, model_id=cfg.model_id + "-again")
    result = await initialize_node(again)
    await result.close()
    assert {r.peer_bytes > 0 for r in result.reports} == {True}
    assert ray.get_actor(EXCHANGE_NAME, namespace=EXCHANGE_NAMESPACE)._actor_id == hub._actor_id
    assert await open_exchanges() == []
    one_node = msgspec.structs.replace(cfg, model_id=cfg.model_id + "-packed", placement=PlacementConfig(
        bundles=[{"head": 0.01}, {"head": 0.01}], strategy="PACK"))  # both on the replica's node
    result = await initialize_node(one_node)
    await result.close()
    assert len(result.reports) == 1 and await open_exchanges() == []
    unplaceable = msgspec.structs.replace(cfg, model_id=cfg.model_id + "-big", placement=PlacementConfig(
        bundles=[{"CPU": 64}, {"CPU": 64}], strategy="SPREAD", ready_timeout_s=1))
    with pytest.raises(PhaseError, match="placement group not ready"):
        await initialize_node(unplaceable)
    assert await open_exchanges() == []


@pytest.mark.ray
@pytest.mark.anyio
async def test_a_node_that_joins_later_reads_from_a_node_that_holds_the_model(
        ray_cluster: RayCluster, s3_server: S3Server, tmp_path: Path) -> None:
    """A replica on node1, then one on node2 (a fresh node), then one on the head once both holders'
    copies were changed on disk: the second reads from node1, the third from the origin."""
    local = tmp_path / "model"
    write_model_files(local, {"model.safetensors": 3 * MIB}, seed=7)
    s3_server.upload_dir(local, "models", "later")
    sizes = {p.relative_to(local).as_posix(): p.stat().st_size for p in iter_files(local)}
    weights = sum(s for s in sizes.values() if s >= 256 * 1024)
    model = {"uri": "s3://models/later"}
    proxy = FaultProxy(s3_server.endpoint).start()
    try:
        first = config(model, proxy.endpoint)
        model_id = first.model_id
        reports = []
        for node in ("node1", "node2", "head"):
            if node == "head":  # the holders' copies changed since they were written: not to be served
                for holder in ray_cluster.nodes[1:]:
                    for blob in (holder.cache / ".node-init" / model_id / "blobs").iterdir():
                        blob.write_bytes(bytes(blob.stat().st_size))
            # The same model each time, on one node (the replica, here on the head, fetches nothing).
            target = next(n for n in ray_cluster.nodes if n.name == node)
            download = msgspec.structs.replace(first.download, local_node=None if node == "head" else DownloadMode.NONE)
            cfg = msgspec.structs.replace(first, placement=PlacementConfig(bundles=[{node: 1.0}]), download=download)
            before = proxy.bytes_sent
            result = await initialize_node(cfg)
            await result.close()
            (report,) = [r for r in result.reports if r.node_id == target.node_id]
            assert all(r.bytes == 0 for r in result.reports if r is not report)
            reports.append((report, proxy.bytes_sent - before, digest(target.cache / model_id)))
    finally:
        proxy.stop()
    (r1, origin1, d1), (r2, origin2, d2), (r3, origin3, d3) = reports
    assert r1.peer_bytes == 0 and origin1 >= sum(sizes.values())
    assert r2.peer_bytes == weights and origin2 < sum(sizes.values()) - weights + 64 * 1024  # from node1
    assert r3.peer_bytes == 0 and origin3 >= sum(sizes.values())  # the changed copies were refused
    assert d1 == d2 == d3 == digest(local)  # each node's snapshot, right after its init


@pytest.mark.ray
@pytest.mark.anyio
async def test_a_holders_silently_corrupted_copy_is_caught_and_read_from_the_origin(
        ray_cluster: RayCluster, s3_server: S3Server, tmp_path: Path) -> None:
    """node1 holds the model; one byte of its copy flips on disk with size and mtime unchanged (nothing
    but a checksum notices). node2, a fresh node, reads from node1 first: node1 checks each range it
    serves against the checksum journaled when it was written and refuses the rotten one, which node2
    reads from the origin; node1 is named, and the init succeeds with the origin's bytes."""
    local = tmp_path / "model"
    write_model_files(local, {"model.safetensors": 3 * MIB}, seed=11)
    s3_server.upload_dir(local, "models", "rotten")
    model = {"uri": "s3://models/rotten"}
    first = config(model, s3_server.endpoint)
    for node in ("node1", "node2"):
        if node == "node2":
            holder = next(n for n in ray_cluster.nodes if n.name == "node1")
            blobs = holder.cache / ".node-init" / first.model_id / "blobs"
            blob = max(blobs.iterdir(), key=lambda p: p.stat().st_size)
            st = blob.stat()
            data = bytearray(blob.read_bytes())
            data[len(data) // 2] ^= 0xFF
            blob.write_bytes(bytes(data))
            os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
        target = next(n for n in ray_cluster.nodes if n.name == node)
        download = msgspec.structs.replace(first.download, local_node=DownloadMode.NONE)
        cfg = msgspec.structs.replace(first, placement=PlacementConfig(bundles=[{node: 1.0}]), download=download)
        result = await initialize_node(cfg)
        await result.close()
        (report,) = [r for r in result.reports if r.node_id == target.node_id]
    node1 = next(n for n in ray_cluster.nodes if n.name == "node1").node_id
    assert report.peer_bytes == 2 * MIB  # node2 took the two sound ranges from its holder...
    assert report.bad_nodes == {node1: 1}  # ...not the rotten one, and says whose it was
    assert report.rereads == () and report.verified["model.safetensors"] == "md5"
    assert digest(target.cache / first.model_id) == digest(local)


@pytest.mark.ray
@pytest.mark.anyio
@pytest.mark.parametrize("how", ["flip", "lie"])
async def test_a_peer_that_offers_wrong_bytes_is_named_and_every_node_serves_the_origins(
        ray_cluster: RayCluster, s3_server: S3Server, tmp_path: Path, how: str) -> None:
    """node2 alters the pieces it offers: ``flip`` after their checksum was taken (a bad memory or
    object store: each consumer's check of the piece catches it), ``lie`` with the checksum taken
    over the altered bytes (the file's origin checksum catches it; the file is read again from the
    origin, which shows whose bytes differed). Either way the init succeeds, every snapshot is the
    origin's, byte for byte, and node2, only node2, is named in the reports."""
    local = tmp_path / "model"
    write_model_files(local, {"model-00002-of-00002.safetensors": 2 * MIB, "config.json": 900}, seed=5)
    big = os.urandom(11 * MIB + 99)
    (local / "model-00001-of-00002.safetensors").write_bytes(big)
    prefix = f"corrupt-{how}-{tmp_path.name}"
    s3_server.upload_dir(local, "models", prefix)
    client = s3_server.client()  # the 11 MiB shard as a multipart upload (parts of 5, 5, 1 MiB)
    key = f"{prefix}/model-00001-of-00002.safetensors"
    upload = client.create_multipart_upload(Bucket="models", Key=key)
    parts = []
    for n, lo in enumerate(range(0, len(big), 5 * MIB), start=1):
        part = client.upload_part(Bucket="models", Key=key, PartNumber=n, UploadId=upload["UploadId"],
                                  Body=big[lo:lo + 5 * MIB])
        parts.append({"PartNumber": n, "ETag": part["ETag"]})
    client.complete_multipart_upload(Bucket="models", Key=key, UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": parts})
    cfg = config({"uri": f"s3://models/{prefix}"}, s3_server.endpoint,
                 ("tests.node_init.hooks:corrupt_offers_on_node2",), share="on")
    with anyio.fail_after(90):
        result = await initialize_node(cfg)
    await result.close()
    node2 = next(n for n in ray_cluster.nodes if n.name == "node2").node_id
    want = digest(local)
    for node in ray_cluster.nodes:
        assert digest(node.cache / cfg.model_id) == want
    blamed = {n for r in result.reports for n in r.bad_nodes}
    assert blamed == {node2}
    assert sum(r.peer_bytes for r in result.reports) > 0  # the healthy peers' pieces were still taken
    for report in result.reports:
        assert "size" not in report.verified.values()
        if how == "lie" and report.bad_nodes:
            assert report.rereads  # caught by the file's checksum, then read again from the origin
        if how == "flip":
            assert not report.rereads  # caught piece by piece: no file had to be read again


@pytest.mark.ray
@pytest.mark.anyio
async def test_the_hub_ends_when_idle_and_a_new_hub_removes_idle_older_ones(ray_cluster: RayCluster) -> None:
    """Two hubs of an older release: an idle one, removed by the new hub when it starts, and one with
    an init open, left running (a rolling upgrade's older replicas still use it). The new hub exits
    once idle for ``download.share_hub_idle_s``; the next shared init starts another."""
    import ray

    @ray.remote(num_cpus=0)
    class OldHub:  # what a hub before version 5 answers: its inits; it cannot end itself
        def __init__(self, inits: list[str]) -> None:
            self._inits = inits

        async def inits(self) -> list[str]:
            return self._inits

    def alive(name: str) -> bool:
        try:
            ray.get_actor(name, namespace=EXCHANGE_NAMESPACE)
        except ValueError:
            return False
        return True

    async def until(check: Any, within: float) -> float:
        began = anyio.current_time()
        with anyio.fail_after(within):
            while not check():
                await anyio.sleep(0.1)
        return anyio.current_time() - began

    if alive(EXCHANGE_NAME):  # this test needs a hub that starts now
        ray.kill(ray.get_actor(EXCHANGE_NAME, namespace=EXCHANGE_NAMESPACE), no_restart=True)
        await until(lambda: not alive(EXCHANGE_NAME), 30)
    idle, busy = f"{EXCHANGE_PREFIX}3", f"{EXCHANGE_PREFIX}4"
    old = [OldHub.options(name=name, namespace=EXCHANGE_NAMESPACE, lifetime="detached").remote(inits)
           for name, inits in ((idle, []), (busy, ["an-init"]))]
    try:
        await asyncio.gather(*(h.inits.remote() for h in old))
        exchange = start_exchange(1, 60.0, idle_s=2.0, call_s=Bounds().actor_call_s)
        hub = exchange.hub
        await until(lambda: not alive(idle), 30)
        assert alive(busy) and await hub.removed_hubs.remote() == [idle]
        await anyio.sleep(3)  # longer than idle_s: the open init keeps the hub
        assert await hub.inits.remote() == [exchange.init]
        exchange.close()
        assert 1.5 <= await until(lambda: not alive(EXCHANGE_NAME), 30) <= 15
        again = start_exchange(1, 60.0, Bounds().hub_idle_s, Bounds().actor_call_s)  # the next init: a new hub
        await until(lambda: ray.get(again.hub.inits.remote(), timeout=30) == [again.init], 30)
        again.close()
    finally:
        for name in (idle, busy):
            if alive(name):
                ray.kill(ray.get_actor(name, namespace=EXCHANGE_NAMESPACE), no_restart=True)
