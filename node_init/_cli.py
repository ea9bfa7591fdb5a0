"""``node-init``: run node initialization from a config file and print what happened."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from eventbus import Event, EventBus

from ._config import NodeInitConfig, load_config, parse_config
from ._errors import NodeInitError
from ._events import DownloadProgress
from ._init import InitResult, initialize_node
from ._logging import configure_logging


class Timeline:
    """Records every event with its time; prints per-node progress bars (at most twice a second)."""

    def __init__(self, out: Any = sys.stderr) -> None:
        self.start = time.monotonic()
        self.events: list[tuple[float, Event]] = []
        self.out = out
        self._bars: dict[str, tuple[int, int]] = {}
        self._last_print = 0.0

    def attach(self, bus: EventBus) -> None:
        # Highest priority: record before any handler can fail the publish.
        bus.subscribe(Event, self.record, priority=1_000_000)

    def record(self, event: Event, ctx: object) -> None:
        now = time.monotonic() - self.start
        if isinstance(event, DownloadProgress):
            self._bars[event.node_id] = (event.bytes_done, event.bytes_total)
            if now - self._last_print > 0.5 or event.bytes_done == event.bytes_total:
                self._last_print = now
                self._draw()
            if self.events and isinstance(self.events[-1][1], DownloadProgress) and \
                    self.events[-1][1].node_id == event.node_id:
                self.events[-1] = (now, event)  # keep one progress line per node run
                return
        self.events.append((now, event))

    def _draw(self) -> None:
        for node_id, (done, total) in self._bars.items():
            frac = done / total if total else 1.0
            bar = "#" * int(frac * 30)
            print(f"  download {node_id[:12]} [{bar:<30}] {done / 1e6:8.1f}/{total / 1e6:.1f} MB",
                  file=self.out, flush=True)

    def render(self) -> str:
        lines = ["timeline (s since start):"]
        for t, event in self.events:
            fields = {k: v for k, v in msgspec.structs.asdict(event).items()
                      if k not in ("reports", "files", "engine_kwargs")}
            text = ", ".join(f"{k}={_short(v)}" for k, v in fields.items())
            lines.append(f"  {t:7.3f}  {type(event).__name__:<17} {text}")
        return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) > 40:
        return "..." + value[-37:]
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {round(v, 3) if isinstance(v, float) else _short(v)}"
                               for k, v in value.items()) + "}"
    return repr(value) if isinstance(value, str) else str(value)


def render_reports(result: InitResult) -> str:
    lines = [f"model path: {result.model_path}", "nodes:"]
    for r in result.reports:
        checked: dict[str, int] = {}
        for how in r.verified.values():
            checked[how] = checked.get(how, 0) + 1
        lines.append(
            f"  {r.node_id[:16]}  mode={r.mode.value:<19} fetched={len(r.files)} files "
            f"{r.bytes / 1e6:.1f} MB  cached={r.cached_bytes / 1e6:.1f} MB  {r.seconds:.2f}s"
            f"{'  VETOED' if r.vetoed else ''}  custom_data={r.custom_data}"
            + (f"  checked={','.join(f'{k}:{n}' for k, n in sorted(checked.items()))}" if checked else "")
            + (f"  rereads={len(r.rereads)}" if r.rereads else "")
            + (f"  bad_nodes={ {n[:12]: c for n, c in r.bad_nodes.items()} }" if r.bad_nodes else "")
        )
    lines.append("timings: " + ", ".join(f"{k}={v:.3f}s" for k, v in result.timings.items()))
    return "\n".join(lines)


async def _run(config: NodeInitConfig, prompt: str | None) -> int:
    bus = EventBus()
    timeline = Timeline()
    timeline.attach(bus)
    try:
        result = await initialize_node(config, bus=bus)
    except NodeInitError as exc:
        print(timeline.render(), file=sys.stdout)
        print(f"\nnode init failed: {type(exc).__name__}: {exc}", file=sys.stdout)
        return 1
    try:
        print(timeline.render())
        print(render_reports(result))
        if result.engine is not None and prompt:
            text = await result.engine.complete(prompt, max_tokens=16)
            print(f"completion for {prompt!r}: {text!r}")
    finally:
        await result.close()
    return 0


def _start_ray(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=False)


def _vllm_logs_to_file(path: Path) -> None:
    """The demo shows our timeline and reports: vLLM's own lines go to ``path`` (named on stderr).

    ``VLLM_LOGGING_CONFIG_PATH`` is read by vLLM in every process it starts (EngineCore, workers),
    so they all append to the same file.
    """
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    config = {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(path), "mode": "a",
                              "formatter": "plain"}},
        "loggers": {"vllm": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    }
    config_path = path.with_suffix(".logging.json")
    config_path.write_text(json.dumps(config))
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(config_path)
    print(f"vLLM's own log: {path}", file=sys.stderr)


def _store_server(kind: str, model: Path, port: int, rate_mb_s: float | None) -> int:
    """A local S3, GCS or Azure server with ``model`` uploaded, for the examples (loopback only, no
    credentials of yours): moto, fake-gcs-server or Azurite, behind a proxy on ``port`` where the
    server picks its own port or a cap is asked for."""
    try:
        from .testing import AZURITE_KEY, AzuriteServer, FaultProxy, GCSServer, HubServer, S3Server
    except ImportError as exc:
        print(f"node-init {kind}-server needs the [test] extra: {exc}", file=sys.stderr)
        return 2
    if not (model / "config.json").is_file():
        print(f"node-init {kind}-server: {model} holds no model (node-init build-model {model})", file=sys.stderr)
        return 2
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
        return 2
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
        return 0
    finally:
        if proxy:
            proxy.stop()
        server.stop()


def _demo(workdir: Path, engine: bool) -> dict[str, Any]:
    from .testing import build_tiny_llama

    source = workdir / "source" / "tiny-llama"
    if not (source / "model.safetensors").exists():
        print(f"building a tiny Llama in {source}", file=sys.stderr)
        build_tiny_llama(source, tie_word_embeddings=True)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``node-init`` command."""
    parser = argparse.ArgumentParser(prog="node-init", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run node init from a YAML, JSON or TOML config")
    run.add_argument("config")
    run.add_argument("--address", help="Ray address to join (default: start a local Ray)")
    run.add_argument("--prompt", help="complete this prompt once the engine is up")
    demo = sub.add_parser("demo", help="node init on a tiny model built locally, on a local Ray")
    demo.add_argument("--workdir", default=".demo", type=Path)
    demo.add_argument("--no-engine", action="store_true", help="stop after the downloads")
    for p in (run, demo):
        p.add_argument("--json-logs", action="store_true", help="JSON log lines (default on a non-TTY)")
    for kind, what, port in (("s3", "s3://models/<DIR's name> from a local S3 server (moto)", 9000),
                             ("gcs", "gs://models/<DIR's name> from a local GCS server (fake-gcs-server)", 9100),
                             ("azure", "azure://models@devstoreaccount1.blob.core.windows.net/<DIR's name> from "
                                       "Azurite (installed by make setup)", 10100),
                             ("hub", "the Hugging Face Hub repo node-init/<DIR's name> from a local Hub", 9200)):
        server = sub.add_parser(f"{kind}-server", help=f"serve DIR as {what} on 127.0.0.1 (the [test] extra), "
                                                       "until interrupted")
        server.add_argument("dir", type=Path)
        server.add_argument("--port", type=int, default=port)
        server.add_argument("--rate-mb-s", type=float, help="cap the link (MB/s) with a proxy in front of it")
    build = sub.add_parser("build-model", help="write a tiny random Llama (with a tokenizer) to DIR")
    build.add_argument("dir", type=Path)
    build.add_argument("--tied", action="store_true", help="tie the input and output embeddings")
    args = parser.parse_args(argv)
    if args.command == "build-model":
        from .testing import build_tiny_llama

        print(build_tiny_llama(args.dir, tie_word_embeddings=args.tied))
        return 0
    if args.command.endswith("-server"):
        return _store_server(args.command.removesuffix("-server"), args.dir, args.port, args.rate_mb_s)
    configure_logging(json=True if args.json_logs else None)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if args.command == "run":
        config_path, data, prompt, address = args.config, None, args.prompt, args.address
    else:
        config_path, prompt, address = None, "the quick brown fox", None
        data = _demo(args.workdir.resolve(), engine=not args.no_engine)
        _vllm_logs_to_file(args.workdir.resolve() / "vllm.log")
        events = os.environ.setdefault("NODE_INIT_EVENT_LOG", str(args.workdir.resolve() / "events.jsonl"))
        print(f"event log (handlers.event_log): {events}", file=sys.stderr)
        # Workers inherit PYTHONPATH from the Ray we start, so our handlers import on every node.
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")] if p
        )
    try:
        # Every mistake the config can show is found before Ray starts.
        config = load_config(config_path) if config_path else parse_config(data)
        _start_ray(address)
        return asyncio.run(_run(config, prompt))
    except NodeInitError as exc:
        print(f"node-init: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
