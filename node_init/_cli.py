"""``node-init``: run node initialization from a config file and print what happened."""

from __future__ import annotations

import argparse
import asyncio
import enum
import logging
import os
import signal
import sys
import textwrap
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

import structlog

from eventbus import EventBus

from ._config import NodeInitConfig, load_config, parse_config
from ._errors import NodeInitError
from ._init import initialize_node
from ._logging import configure_logging, output_to
from ._timeline import Story, Timeline, render_reports

_log = structlog.get_logger("node_init.cli")


class ExitCode(enum.IntEnum):
    """What ``node-init`` exits with (``node-init --help`` lists them)."""

    OK = 0
    INIT_FAILED = 1
    REFUSED = 2


#: What each exit code means, as ``node-init --help`` says it.
EXIT_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "done (a store server: stopped by Ctrl-C or SIGTERM)",
    ExitCode.INIT_FAILED: "node init ran and failed (the timeline and the typed error are printed), or the "
                          "command failed unexpectedly (a traceback is printed)",
    ExitCode.REFUSED: "nothing was started: a wrong command line (argparse's usage error) or config (the "
                      "error names the field), or what a store server needs is missing (the [test] extra, "
                      "Azurite, a model in DIR)",
}


async def _run(config: NodeInitConfig, prompt: str | None, out: TextIO, bus: EventBus, timeline: Timeline,
               story: Story | None = None) -> int:
    """Node init, its timeline and reports on ``out``, then ``prompt`` completed if an engine is up."""
    try:
        result = await initialize_node(config, bus=bus)
    except NodeInitError as exc:
        print(timeline.render(), file=out)
        print(f"\nnode init failed: {type(exc).__name__}: {exc}", file=out)
        return ExitCode.INIT_FAILED
    try:
        text = None
        if result.engine is not None and prompt:
            if story is not None:
                story.say("complete", f"{prompt!r}, 16 tokens at most")
            text = await result.engine.complete(prompt, max_tokens=16)
        print(timeline.render(), file=out)
        print(render_reports(result), file=out)
        if text is not None:
            print(f"completion for {prompt!r}: {text!r}", file=out)
    finally:
        await result.close()
    return ExitCode.OK


def _start_ray(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=False)


def _store_server(kind: str, model: Path, port: int, rate_mb_s: float | None) -> int:
    """A local S3, GCS or Azure server with ``model`` uploaded, for the examples (loopback only, no
    credentials of yours): moto, fake-gcs-server or Azurite, behind a proxy on ``port`` where the
    server picks its own port or a cap is asked for."""
    try:
        from .testing import AZURITE_KEY, AzuriteServer, FaultProxy, GCSServer, HubServer, S3Server
    except ImportError as exc:
        print(f"node-init {kind}-server needs the [test] extra: {exc}", file=sys.stderr)
        return ExitCode.REFUSED
    if not (model / "config.json").is_file():
        print(f"node-init {kind}-server: {model} holds no model (node-init build-model {model})", file=sys.stderr)
        return ExitCode.REFUSED
    # Ctrl-C, or a kill, stops it (a shell's background job starts with SIGINT ignored: take it back).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server: Any
    try:
        if kind == "s3":
            server = S3Server(port=0 if rate_mb_s else port).start()
            upstream, suffix = server.endpoint, ""
            where = f"s3://models/{model.name} (access key id 'testing', secret 'testing')"
        elif kind == "gcs":
            server = GCSServer().start()
            upstream, suffix = server.endpoint, ""
            where = f"gs://models/{model.name} (anonymous reads)"
        elif kind == "hub":
            server = HubServer().start()
            upstream, suffix = server.endpoint, ""
            where = f"the Hugging Face Hub repo node-init/{model.name} (set HF_ENDPOINT to the address)"
        else:
            server = AzuriteServer().start()
            upstream, suffix = server.root, "/devstoreaccount1"
            where = (f"azure://models@devstoreaccount1.blob.core.windows.net/{model.name} (Azurite's well-known "
                     f"account key {AZURITE_KEY[:8]}...)")
    except FileNotFoundError as exc:  # Azurite not installed
        print(f"node-init {kind}-server: {exc}", file=sys.stderr)
        return ExitCode.REFUSED
    if kind == "hub":
        server.push_dir(f"node-init/{model.name}", model)
    else:
        server.upload_dir(model, "models", model.name)
    proxied = rate_mb_s is not None or kind != "s3"
    proxy = FaultProxy(upstream, rate_mb_s=rate_mb_s, port=port).start() if proxied else None
    endpoint = (proxy.endpoint if proxy else server.endpoint) + suffix
    print(f"serving {where} at {endpoint}" + (f", capped at {rate_mb_s:g} MB/s" if rate_mb_s else "")
          + "; Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return ExitCode.OK
    finally:
        if proxy:
            proxy.stop()
        server.stop()


def _demo_config(source: Path, workdir: Path, engine: bool) -> dict[str, Any]:
    return {
        "model_id": "tiny-llama",
        "model_source": str(source),
        "handlers": ["handlers.timing:handlers", "handlers.event_log:handlers"],
        "download": {"cache_dir": str(workdir / "cache"), "timeout_s": 120},
        "placement": {"bundles": [{"CPU": 1}], "ready_timeout_s": 60},
        "engine": {
            "kind": "vllm" if engine else "none", "overlap": "on",
            "kwargs": {"dtype": "float32", "max_model_len": 256, "enforce_eager": True},
        },
    }


def _demo(workdir: Path, *, engine: bool, json_logs: bool) -> int:
    """``node-init demo``: a line per phase on the terminal (or our JSON logs), everything else in a file."""
    log_file = workdir / "demo.log"
    # From here on, whatever vLLM, Ray, torch or a warning write (in this process or a child) goes to the
    # file; our own lines go to the terminal through these.
    out, err = output_to(log_file)
    start = time.monotonic()
    configure_logging(json=True, out=err if json_logs else None)  # else: JSON lines in the log file
    story = None if json_logs else Story(err, start)

    def say(phase: str, text: str, **fields: Any) -> None:
        if story is not None:
            story.say(phase, text)
        else:
            _log.info(text, phase=phase, **fields)

    if story is not None:
        print("node-init demo: node init of a tiny Llama on a local Ray"
              + (", then one completion" if engine else " (no engine)"), file=err, flush=True)
    try:
        say("logs", f"vLLM's, Ray's and torch's output, and our JSON logs: {log_file}", path=str(log_file))
        events = os.environ.setdefault("NODE_INIT_EVENT_LOG", str(workdir / "events.jsonl"))
        say("events", f"handlers.event_log writes {events}", path=events)
        source = workdir / "source" / "tiny-llama"
        if not (source / "model.safetensors").exists():
            from .testing import build_tiny_llama

            say("model", f"building a tiny Llama in {source}", path=str(source))
            build_tiny_llama(source, tie_word_embeddings=True)
        config = parse_config(_demo_config(source, workdir, engine))
        # Workers inherit PYTHONPATH from the Ray we start, so our handlers import on every node.
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")] if p
        )
        say("ray", "starting a local Ray")
        _start_ray("local")  # the model is a local folder: a Ray of its own, whatever RAY_ADDRESS says
        bus = EventBus()
        timeline = Timeline(err, bars=False)
        timeline.attach(bus)
        if story is not None:
            story.attach(bus, config)
        return asyncio.run(_run(config, "the quick brown fox" if engine else None, out, bus, timeline, story))
    except Exception:  # ours, since every other program's output goes to the log file
        traceback.print_exc(file=err)
        print(f"node-init demo failed; the other programs' output is in {log_file}", file=err)
        return ExitCode.INIT_FAILED


def _parser() -> argparse.ArgumentParser:
    exit_codes = "\n".join(textwrap.fill(meaning, 79, initial_indent=f"  {int(code)}  ", subsequent_indent="     ")
                           for code, meaning in EXIT_MEANINGS.items())
    parser = argparse.ArgumentParser(prog="node-init", description="Run node initialization from a config file "
                                     "and print what happened; a demo; local store servers for the examples.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"exit codes:\n{exit_codes}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run node init from a YAML, JSON or TOML config, on Ray, and print its "
                                     "timeline and per-node reports")
    run.add_argument("config", help="the config file (.yaml, .yml, .json or .toml)")
    run.add_argument("--address", help="Ray address to join (default: RAY_ADDRESS if set, else the Ray that "
                                       "`ray start` started on this machine, else a new local Ray; "
                                       "'local' always starts a new one)")
    run.add_argument("--prompt", help="once the engine is up, complete this prompt (16 tokens at most) and print "
                                      "it (without it, run only initializes and exits)")
    run.add_argument("--json-logs", action="store_true",
                     help="our log lines as JSON on stderr (default: JSON when stderr is not a terminal)")
    demo = sub.add_parser("demo", help="node init of a tiny model built locally, on a Ray of its own, then one "
                                       "completion: a line per phase, then the timeline and the completion")
    demo.add_argument("--workdir", default=".demo", type=Path,
                      help="where the model, its cache, demo.log and the event log (unless NODE_INIT_EVENT_LOG "
                           "names one) go (default: .demo)")
    demo.add_argument("--no-engine", action="store_true", help="stop after the downloads (no engine, no completion)")
    demo.add_argument("--json-logs", action="store_true",
                      help="our structured logs as JSON lines on stderr instead of the phase lines (default: "
                           "they go to WORKDIR/demo.log, with every other program's output)")
    for kind, what, port in (("s3", "s3://models/<DIR's name> from a local S3 server (moto)", 9000),
                             ("gcs", "gs://models/<DIR's name> from a local GCS server (fake-gcs-server)", 9100),
                             ("azure", "azure://models@devstoreaccount1.blob.core.windows.net/<DIR's name> from "
                                       "Azurite (installed by make setup)", 10100),
                             ("hub", "the Hugging Face Hub repo node-init/<DIR's name> from a local Hub", 9200)):
        server = sub.add_parser(f"{kind}-server", help=f"serve DIR as {what} on 127.0.0.1 (the [test] extra), "
                                                       "until Ctrl-C or SIGTERM")
        server.add_argument("dir", type=Path, help="a model directory (node-init build-model DIR writes one)")
        server.add_argument("--port", type=int, default=port,
                            help=f"the port of the endpoint it prints (default: {port})")
        server.add_argument("--rate-mb-s", type=float, help="cap the link (MB/s) with a proxy in front of it")
    build = sub.add_parser("build-model", help="write a tiny random Llama (with a tokenizer) to DIR and print DIR")
    build.add_argument("dir", type=Path)
    build.add_argument("--tied", action="store_true", help="tie the input and output embeddings")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``node-init`` command."""
    args = _parser().parse_args(argv)
    if args.command == "build-model":
        from .testing import build_tiny_llama

        print(build_tiny_llama(args.dir, tie_word_embeddings=args.tied))
        return ExitCode.OK
    if args.command.endswith("-server"):
        return _store_server(args.command.removesuffix("-server"), args.dir, args.port, args.rate_mb_s)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if args.command == "demo":
        return _demo(args.workdir.resolve(), engine=not args.no_engine, json_logs=args.json_logs)
    configure_logging(json=True if args.json_logs else None)
    try:
        # Every mistake the config can show is found before Ray starts.
        config = load_config(args.config)
        _start_ray(args.address)
        bus = EventBus()
        timeline = Timeline()
        timeline.attach(bus)
        return asyncio.run(_run(config, args.prompt, sys.stdout, bus, timeline))
    except NodeInitError as exc:
        print(f"node-init: {type(exc).__name__}: {exc}", file=sys.stderr)
        return ExitCode.REFUSED


if __name__ == "__main__":
    sys.exit(main())
