"""Extra files on every node, before the model download (e.g. a torch.compile cache).

What Ray's ``CloudDownloader`` callback does, with our downloader (atomic, locked, retried, bounded)::

    handlers: [handlers.extra_files:handlers]
    handler_options:
      extra_files:
        files:
          - {source: "s3://bucket/compile-cache/llama", destination: "~/.cache/vllm/torch_compile_cache"}

``destination`` expands ``~`` and ``$VARS`` on each node; it becomes a link to a verified snapshot of
the source (kept beside it, under ``.node-init/``), swapped atomically when a new version arrives, so
readers never see a mix. It must not be an existing directory of your own. Each node records what it
fetched under ``ctx.custom_data["extra_files"]`` (so it reaches the replica in
``custom_data["nodes"][node_id]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from eventbus import HandlerSet
from node_init import BeforeDownload
from node_init.download import Downloader, list_source

handlers = HandlerSet()


@handlers.on(BeforeDownload, priority=500)
def fetch_extra_files(event: BeforeDownload, ctx: Any) -> None:
    """Fetch each configured (source, destination) directory on this node."""
    config = ctx.llm_config
    entries = config.handler_options.get("extra_files", {}).get("files", [])
    fetched = []
    for entry in entries:
        source_uri = str(entry["source"])
        destination = Path(os.path.expandvars(str(entry["destination"]))).expanduser()
        source, files = list_source(source_uri, config.download, node_id=event.node_id)
        result = Downloader(source, destination, config.download, node_id=event.node_id).run(
            files, relist=source.list_files)
        fetched.append({"source": source_uri, "destination": str(destination),
                        "files": len(files), "bytes": result.bytes})
    if fetched:
        ctx.custom_data["extra_files"] = fetched


__all__ = ["fetch_extra_files", "handlers"]
