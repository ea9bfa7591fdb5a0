"""The replica <-> node protocol: one Ray streaming task per node, progress then a NodeReport."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Protocol

import anyio
import anyio.to_thread
import msgspec
import structlog

from .._bounds import CANCEL_DRAIN_S, DECISION_POLL_S, PROGRESS_EVERY_S, STOP_S, THREAD_JOIN_S, Bounds
from .._config import NodeInitConfig
from .._ctx import CallbackCtx
from .._errors import DownloadError, NodeInitError, PhaseError, describe, first_error
from .._events import NodeReport
from .._logging import configure_logging, forward_logs
from .._phases import Phase
from .._wiring import node_bus
from ..download import Progress
from ._node import Decision, node_download
from ._share import sharing

_log = structlog.get_logger("node_init.remote")

#: Ray internal KV namespace of the stop requests the replica leaves for node tasks.
STOP_NAMESPACE = "node_init_stop"


class NodeLog(msgspec.Struct, frozen=True, kw_only=True):
    """One structlog line of a node task's process (its handlers' included), forwarded to the replica."""

    node_id: str
    line: dict[str, Any]


def _plain(line: dict[str, Any]) -> dict[str, Any]:
    """A log line as JSON-safe data (anything else by its ``str``)."""
    out: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(line, enc_hook=str))
    return out


class NodeStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What a node task is doing now, streamed when it changes (the replica's timeout names it)."""

    node_id: str
    doing: str


def _stop_requested(key: str) -> bool:
    from ray.experimental import internal_kv

    try:
        return bool(internal_kv._internal_kv_exists(key, namespace=STOP_NAMESPACE))
    except Exception as exc:  # the GCS is unreachable: the task ends on its own or with its worker
        _log.debug("cannot read the stop key", error=describe(exc))
        return False


def node_task(config: NodeInitConfig, snapshot: dict[str, Any], local_node_id: str,
              exchange: Any = None, nodes: list[str] | None = None, stop_key: str = "",
              deadline: float | None = None) -> Iterator[Any]:
    """Body of the per-node Ray task: yields its :class:`Decision`, :class:`NodeStatus` and
    ``(done, total)`` progress items, then a NodeReport.

    ``exchange``: the init's share exchange (``download.share``), or ``None``; ``nodes``: the
    init's nodes; ``stop_key``: the replica asks this task to stop by setting this key in Ray's
    internal KV (the task then stops its download and ends without a report); ``deadline``: the
    init's deadline (``time.time()``): past it the task stops by itself and raises a
    ``PhaseError`` naming what it was doing, so it ends even when its replica is gone.
    """
    import ray

    configure_logging()
    node_id = ray.get_runtime_context().get_node_id()
    structlog.contextvars.bind_contextvars(node_id=node_id, model_id=config.model_id, phase=Phase.DOWNLOAD)
    if stop_key and _stop_requested(stop_key):
        return  # the init ended before this task started
    lines: list[dict[str, Any]] = []
    forward_logs(lines.append)  # this task's lines go to the replica, which logs them in its format
    try:
        yield from _node_task(config, snapshot, local_node_id, exchange, nodes, stop_key, deadline, node_id, lines)
    finally:
        forward_logs(None)


def _logs(node_id: str, lines: list[dict[str, Any]]) -> Iterator[NodeLog]:
    while lines:
        yield NodeLog(node_id=node_id, line=_plain(lines.pop(0)))


def _node_task(config: NodeInitConfig, snapshot: dict[str, Any], local_node_id: str, exchange: Any,
               nodes: list[str] | None, stop_key: str, deadline: float | None, node_id: str,
               lines: list[dict[str, Any]]) -> Iterator[Any]:
    bus = node_bus(config, node_id)  # CallbackLoadError names this node
    ctx = CallbackCtx.from_snapshot(config, snapshot)
    progress, cancel = Progress(), threading.Event()
    box: dict[str, Any] = {}
    decisions: list[Any] = []
    doing = ["listing"]

    def work() -> None:
        try:
            box["report"] = node_download(config, ctx, bus, node_id=node_id, is_local=node_id == local_node_id,
                                          progress=progress, cancel=cancel, on_decision=decisions.append,
                                          exchange=exchange, nodes=nodes, on_status=lambda s: doing.__setitem__(0, s))
        except BaseException as exc:
            box["error"] = exc

    def stop() -> None:
        """Stop the download (a thread stuck in a handler's C call cannot be interrupted: it is left to
        end by itself or with this worker process)."""
        cancel.set()  # the download removes its temp files and returns at its next chunk
        worker.join(THREAD_JOIN_S)
        if worker.is_alive():
            _log.warning("the download thread did not stop; leaving it", node_id=node_id, doing=doing[0])

    worker = threading.Thread(target=work, name="node-init-download", daemon=True)
    worker.start()
    try:
        last, told, expired = (-1, -1), "", ""
        sent_decision = False
        check_at = time.monotonic() + PROGRESS_EVERY_S
        while worker.is_alive():
            # Poll fast until the decision is out: the replica may boot the engine on it.
            worker.join(PROGRESS_EVERY_S if sent_decision else DECISION_POLL_S)
            yield from _logs(node_id, lines)
            if not sent_decision and decisions:
                sent_decision = True
                yield decisions[0]
            if doing[0] != told:
                told = doing[0]
                yield NodeStatus(node_id=node_id, doing=told)
            now = (progress.done, progress.total)
            if now != last and progress.total:
                last = now
                yield now
            if deadline is not None and time.time() >= deadline and worker.is_alive():
                expired = doing[0]
                break
            if stop_key and time.monotonic() >= check_at:
                check_at = time.monotonic() + PROGRESS_EVERY_S
                if _stop_requested(stop_key):
                    stop()
                    return
    except BaseException:
        # ray.cancel() lands here (KeyboardInterrupt): stop the download, let it remove its temp files.
        stop()
        raise
    yield from _logs(node_id, lines)
    if expired:
        stop()
        raise PhaseError(f"the init's deadline passed on node {node_id} while {expired}",
                         phase=Phase.BEFORE_DOWNLOAD if expired.startswith("in BeforeDownload") else Phase.DOWNLOAD,
                         node_id=node_id, cause=f"InitTimeout: {expired}")
    if "error" in box:
        raise box["error"]
    if not sent_decision and decisions:
        yield decisions[0]
    if progress.total and last != (progress.done, progress.total):
        yield (progress.done, progress.total)
    yield box["report"]


class NodeObserver(Protocol):
    """What the replica does with each item a node streams."""

    async def on_decision(self, decision: Decision) -> None: ...

    async def on_progress(self, node_id: str, done: int, total: int) -> None: ...

    async def on_report(self, report: NodeReport) -> None: ...

    async def on_status(self, status: NodeStatus) -> None: ...

    async def on_log(self, log: NodeLog) -> None: ...


async def run_on_nodes(
    config: NodeInitConfig,
    ctx: CallbackCtx,
    nodes: list[str],
    local_node_id: str,
    observer: NodeObserver,
    *,
    exchange: Any = None,
    deadline: float | None = None,
) -> list[NodeReport]:
    """Run :func:`node_task` pinned to each node, concurrently; cancel all if one fails.

    With ``download.share`` in force the nodes share one fetch through an :class:`Exchange`; a
    node that *dies* then does not stop the others: they take its share from the source and
    finish (their caches whole for the retry), and its error is raised after them.

    Args:
        config: The init's config.
        ctx: The replica's context (each node task gets a snapshot).
        nodes: The placement group's distinct nodes, the replica's own included.
        local_node_id: The replica's node.
        observer: Receives each node's decision, status, progress and report.
        exchange: This init's exchange (:func:`open_exchange`, opened while placement ran): used
            if this init shares. The caller owns it (opens and closes it).
        deadline: The init's deadline (``time.time()``), told to each node task, which stops by
            itself past it.

    Raises:
        NodeInitError: the first node's typed error (``DownloadError``,
            ``CallbackLoadError``, ``PhaseError``), or a ``DownloadError`` for a
            node that died or did not finish within its bound.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(node_task)
    snapshot = ctx.snapshot()
    stops = f"{uuid.uuid4().hex}/"  # this init's stop requests, one key per node
    reports: dict[str, NodeReport] = {}
    bounds = Bounds.of(config)
    bound = bounds.node_s
    if not sharing(config, nodes):
        exchange = None
    if exchange is not None:
        exchange.expect(nodes)
    deaths: list[NodeInitError] = []
    lingering: set[str] = set()  # tasks that had not ended when their stop's bound did: they keep the key

    async def one(node_id: str) -> None:
        options: dict[str, Any] = {
            "num_cpus": 0, "num_returns": "streaming", "max_retries": 0,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        }
        if ctx.runtime_env:
            options["runtime_env"] = ctx.runtime_env
        gen: Any = remote.options(**options).remote(config, snapshot, local_node_id, exchange, nodes,
                                                    stops + node_id, deadline)
        finished = False
        try:
            with anyio.fail_after(bound):
                async for ref in gen:
                    item = await ref
                    if isinstance(item, NodeReport):
                        reports[node_id] = item
                        await observer.on_report(item)
                    elif isinstance(item, Decision):
                        await observer.on_decision(item)
                    elif isinstance(item, NodeStatus):
                        await observer.on_status(item)
                    elif isinstance(item, NodeLog):
                        await observer.on_log(item)
                    else:
                        await observer.on_progress(node_id, item[0], item[1])
            finished = True
        except TimeoutError:
            raise DownloadError(f"node task did not finish within {bound}s", node_id=node_id,
                                source=config.model_source or "") from None
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc, node_id, config) from None
        except ray.exceptions.RayError as exc:  # node died, worker crashed, task cancelled
            error = DownloadError(f"node task failed: {describe(exc)}", node_id=node_id,
                                  source=config.model_source or "", cause=describe(exc))
            if exchange is None:
                raise error from None
            deaths.append(error)  # the others refetch its share and finish first
            try:
                with anyio.move_on_after(bounds.actor_call_s):  # a hub that hangs: its nodes' own waits end theirs
                    await exchange.gone(node_id)
            except ray.exceptions.RayError as gone:  # no exchange: the others already read from the source
                _log.info("exchange unreachable", node_id=node_id, error=describe(gone))
        finally:
            if not finished and not await _cancel(gen, stops + node_id):
                lingering.add(node_id)

    try:
        async with anyio.create_task_group() as tg:
            for node_id in nodes:
                tg.start_soon(one, node_id)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    finally:
        try:
            from ray.experimental import internal_kv

            for node_id in set(nodes) - lingering:
                internal_kv._internal_kv_del(stops + node_id, namespace=STOP_NAMESPACE)
        except Exception as exc:  # the GCS is unreachable: the stop keys go with the cluster
            _log.debug("stop keys not removed", error=describe(exc))
    if deaths:
        raise deaths[0]
    return [reports[n] for n in nodes]


def _unwrap(exc: Any, node_id: str, config: NodeInitConfig) -> NodeInitError:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, NodeInitError):
        return cause
    if cause is not None:
        return PhaseError(f"node task raised {describe(cause)}", phase=Phase.DOWNLOAD, node_id=node_id,
                          cause=describe(cause))
    return DownloadError(f"node task failed: {exc}", node_id=node_id, source=config.model_source or "")


async def _cancel(gen: Any, stop_key: str) -> bool:
    """Stop a node's task and wait (bounded) until it has, so none is left behind.

    The task is asked first (``stop_key`` in Ray's internal KV; it checks between progress
    items) and ends within :data:`~node_init._bounds.STOP_S`: ``ray.cancel`` on a streaming task
    that is just being pushed to its worker can crash the caller's core worker (Ray 2.60: "Tried
    to complete task that was not pending"). Only a task that has not ended by then is cancelled,
    and its end awaited for :data:`~node_init._bounds.CANCEL_DRAIN_S`; a task that has not even
    started sees the key (or its deadline) when it does. Whether the task has ended.
    """
    import ray
    from ray.experimental import internal_kv

    async def drain(bound: float) -> bool:
        with anyio.move_on_after(bound) as scope:
            try:
                async for ref in gen:  # its items, then its end (or its error)
                    await ref
            except Exception as exc:  # its error ends it too: the caller already has (or reports) it
                _log.debug("stopped node task ended with an error", error=describe(exc))
        return not scope.cancelled_caught

    with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_S + CANCEL_DRAIN_S):
        try:
            await anyio.to_thread.run_sync(
                lambda: internal_kv._internal_kv_put(stop_key, b"1", overwrite=True, namespace=STOP_NAMESPACE))
        except Exception as exc:
            _log.debug("cannot ask the node task to stop", error=describe(exc))
        else:
            if await drain(STOP_S):
                return True
        try:
            ray.cancel(gen)
        except Exception as exc:  # already finished, or the node is gone
            _log.debug("cancel failed", error=describe(exc))
            return True
        return await drain(CANCEL_DRAIN_S)
    return False
