"""Example handlers for the Serve configs in this folder (shipped to every node by runtime_env)."""

from __future__ import annotations

import os
import time

import structlog

from eventbus import HandlerSet
from node_init import AfterInit, BeforeDownload, BeforeEngineInit, BeforeInit, CallbackCtx

handlers = HandlerSet()
log = structlog.get_logger("examples.hooks")


@handlers.on(BeforeInit)
def started(event: BeforeInit, ctx: CallbackCtx) -> None:
    ctx.custom_data["started_at"] = time.time()


@handlers.on(BeforeDownload)
def on_node(event: BeforeDownload, ctx: CallbackCtx) -> None:
    # Runs on each node of the placement group, in that node's process.
    log.info("before download", node_id=event.node_id, mode=event.mode, files=len(event.files),
             expected_mb=round(event.expected_bytes / 1e6, 1), pid=os.getpid())


@handlers.on(BeforeEngineInit)
def engine_arguments(event: BeforeEngineInit, ctx: CallbackCtx) -> None:
    # The engine's arguments are decided here, in the replica, once the nodes have decided: whatever a
    # handler puts in ctx.extra_init_kwargs is merged over engine_kwargs and reaches vLLM (on both Serve
    # paths: stock ray.serve.llm publishes this before Ray builds its engine config). Here: a context length
    # from the environment, e.g. a shorter one on a small node.
    limit = os.environ.get("EXAMPLE_MAX_MODEL_LEN")
    if limit:
        ctx.extra_init_kwargs["max_model_len"] = int(limit)
    log.info("engine arguments", max_model_len=ctx.extra_init_kwargs.get("max_model_len",
                                                                           event.engine_kwargs.get("max_model_len")))


@handlers.on(AfterInit)
def finished(event: AfterInit, ctx: CallbackCtx) -> None:
    log.info("node init done", model_path=event.model_path,
             seconds=round(time.time() - ctx.custom_data.get("started_at", time.time()), 2),
             timings={k: round(v, 3) for k, v in event.timings.items()})


class CustomDownload:
    """The original design note's class-style example: worker nodes fetch only the tokenizer.

    It runs on each node before that node's download, on both Serve paths (with
    ``callback_kwargs: {node_init: ray}`` Ray has bound the mode by then: use
    :class:`WorkersFetchTokenizerOnly` there).
    """

    def on_before_download(self, ctx: CallbackCtx) -> None:
        ctx.worker_node_download_model = "TOKENIZER_ONLY"


class WorkersFetchTokenizerOnly:
    """The same choice made in ``on_before_init``, which ``node_init: ray`` (Ray's own download) honours too."""

    def on_before_init(self, ctx: CallbackCtx) -> None:
        ctx.worker_node_download_model = "TOKENIZER_ONLY"
