from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic multi-file model (config, tokenizer, two weight shards)."""
    from node_init.testing import write_model_files

    root = tmp_path_factory.mktemp("models") / "synthetic"
    write_model_files(root, {"model-00001-of-00002.safetensors": 3 << 20,
                             "model-00002-of-00002.safetensors": 2 << 20})
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def serve_port(ray_cluster: Any) -> Iterator[int]:
    """Serve on the session's cluster, HTTP on a free port; shut down after the module."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield port
    finally:
        serve.shutdown()
