"""Handlers and callbacks the Ray tests name by import path (imported on every node)."""

from __future__ import annotations

import os
import time
from typing import Any

from eventbus import HandlerSet
from node_init import AfterInit, BeforeDownload, BeforeEngineInit, BeforeInit, CallbackCtx

# Records where BeforeDownload ran: pid, node id, the event's fields.
record = HandlerSet()


@record.on(BeforeDownload)
def where(event: BeforeDownload, ctx: CallbackCtx) -> None:
    ctx.custom_data["seen"] = {
        "pid": os.getpid(), "node_id": event.node_id, "node_name": os.environ.get("NODE_NAME"),
        "mode": event.mode.value, "files": list(event.files), "expected_bytes": event.expected_bytes,
        "destination": event.destination, "from_replica": ctx.custom_data.get("from_replica"),
    }


# The original note's CustomDownload: worker nodes fetch only the tokenizer.
custom_download = HandlerSet()


@custom_download.on(BeforeDownload)
def tokenizer_only_on_workers(event: BeforeDownload, ctx: CallbackCtx) -> None:
    ctx.worker_node_download_model = "TOKENIZER_ONLY"  # a string converts


# Vetoes the download on the node named node1.
veto_node1 = HandlerSet()


@veto_node1.on(BeforeDownload)
def skip_node1(event: BeforeDownload, ctx: CallbackCtx) -> bool:
    return os.environ.get("NODE_NAME") != "node1"


# Fails on node2.
fail_node2 = HandlerSet()


@fail_node2.on(BeforeDownload)
def boom_on_node2(event: BeforeDownload, ctx: CallbackCtx) -> None:
    if os.environ.get("NODE_NAME") == "node2":
        raise RuntimeError("disk on fire")


class Metrics:
    """The original note's Metrics example, plus a count of constructions."""

    instances = 0

    def __init__(self, label: str = "x") -> None:
        Metrics.instances += 1
        self.label = label
        self.start: float | None = None
        self.took: float | None = None

    def on_before_init(self, ctx: CallbackCtx) -> None:
        self.start = time.time()

    def on_before_download(self, ctx: CallbackCtx) -> None:
        ctx.custom_data["metrics_label"] = self.label

    def on_after_init(self, ctx: CallbackCtx) -> None:
        assert self.start is not None
        self.took = time.time() - self.start
        ctx.custom_data["took"] = self.took


class SkipInit:
    """Vetoes BeforeInit: no placement group, no downloads."""

    def on_before_init(self, ctx: CallbackCtx) -> bool:
        return False


def not_a_class() -> None: ...


class NeedsKwargs:
    def __init__(self, threshold: int) -> None:
        self.threshold = threshold




# For the Serve tests: BeforeInit (replica) sets data the nodes' BeforeDownload must see; both
# append a JSON line (pid, node, what they saw) to $NODE_INIT_TEST_LOG.
serve_hooks = HandlerSet()


def _append(record: dict[str, object]) -> None:
    import json

    path = os.environ.get("NODE_INIT_TEST_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


@serve_hooks.on(BeforeInit)
def mark_replica(event: BeforeInit, ctx: CallbackCtx) -> None:
    ctx.custom_data["from_replica"] = os.getpid()
    _append({"event": "BeforeInit", "pid": os.getpid()})


@serve_hooks.on(BeforeDownload)
def seen_on_node(event: BeforeDownload, ctx: CallbackCtx) -> None:
    _append({"event": "BeforeDownload", "pid": os.getpid(), "node_id": event.node_id,
             "from_replica": ctx.custom_data.get("from_replica"), "files": len(event.files)})


@serve_hooks.on(AfterInit)
def mark_done(event: AfterInit, ctx: CallbackCtx) -> None:
    # What vLLM's model-info cache holds when node init ends (before the engine boots).
    root = os.environ.get("VLLM_CACHE_ROOT")
    infos = os.path.join(root, "modelinfos") if root else None
    _append({"event": "AfterInit", "pid": os.getpid(), "model_path": event.model_path,
             "reports": len(event.reports), "timings": sorted(event.timings),
             "modelinfos": sorted(os.listdir(infos)) if infos and os.path.isdir(infos) else None})


# Writes this node task's pid to ``<ctx.custom_data["pid_dir"]>/<NODE_NAME>`` (a test kills it).
pid_file = HandlerSet()


@pid_file.on(BeforeDownload)
def write_pid(event: BeforeDownload, ctx: CallbackCtx) -> None:
    pid_dir = ctx.custom_data.get("pid_dir")
    if pid_dir:
        with open(os.path.join(str(pid_dir), os.environ.get("NODE_NAME", "unknown")), "w") as f:
            f.write(str(os.getpid()))


#: Engine arguments from handlers: BeforeEngineInit on our paths, BeforeInit on stock ray.serve.llm
#: (it has no BeforeEngineInit; Ray reads its engine config after BeforeInit and AfterInit).
short_context_engine = HandlerSet()
short_context_init = HandlerSet()


@short_context_engine.on(BeforeEngineInit)
def shorter_context(event: BeforeEngineInit, ctx: CallbackCtx) -> None:
    ctx.extra_init_kwargs["max_model_len"] = 128


@short_context_init.on(BeforeInit)
def shorter_context_before_init(event: BeforeInit, ctx: CallbackCtx) -> None:
    ctx.extra_init_kwargs["max_model_len"] = 128


#: Logs on every node, and vetoes node1's download: for the CLI's forwarded lines and timeline.
loud_nodes = HandlerSet()


@loud_nodes.on(BeforeDownload)
def say_hello_from_the_node(event: BeforeDownload, ctx: CallbackCtx) -> bool:
    import structlog

    structlog.get_logger("tests.hooks").info("hello from the node", pid=os.getpid(),
                                             node_name=os.environ.get("NODE_NAME"))
    return os.environ.get("NODE_NAME") != "node1"


#: node2 alters what it offers its peers, for shared downloads of a source whose URI names the way
#: (``.../corrupt-flip-...``: bytes flipped after their checksum, as a bad memory or object store would;
#: ``.../corrupt-lie-...``: the checksum taken over the flipped bytes, as a node that lies would). No
#: real fault makes a node do this on demand, so the node's own offer is patched, in its task's process,
#: by this handler; the patch acts only on those sources, so a later test reusing the process is untouched.
corrupt_offers_on_node2 = HandlerSet()


def _flipped(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0xFF
    return bytes(out)


@corrupt_offers_on_node2.on(BeforeDownload)
def corrupt_what_node2_offers(event: BeforeDownload, ctx: CallbackCtx) -> None:
    from node_init.cluster import SharedSource, piece_sum

    if os.environ.get("NODE_NAME") != "node2" or getattr(SharedSource, "_corrupting", False):
        return
    box, offer = SharedSource._box, SharedSource._offer

    def bad_box(self: SharedSource, data: bytes, checksum: int) -> list[object]:
        return box(self, _flipped(data) if "corrupt-flip-" in self.uri else data, checksum)

    def bad_offer(self: SharedSource, unit: Any, index: int, data: bytes, checksum: int) -> bool:
        if "corrupt-lie-" in self.uri:
            data = _flipped(data)
            checksum = piece_sum(data)
        return offer(self, unit, index, data, checksum)

    SharedSource._box = bad_box  # type: ignore[method-assign]
    SharedSource._offer = bad_offer  # type: ignore[method-assign]
    SharedSource._corrupting = True  # type: ignore[attr-defined]
