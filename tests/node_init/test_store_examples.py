"""The node-init examples for gs://, azure:// and Ray's mapping form, as their comments say to run them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from node_init import load_config
from node_init.download import source_kind

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXAMPLES = {"node_init_gcs.yaml": "gcs", "node_init_azure.yaml": "azure", "node_init_mirror.yaml": "azure"}


@pytest.mark.parametrize(("name", "kind"), list(EXAMPLES.items()))
def test_each_store_example_parses_and_names_its_store(name: str, kind: str) -> None:
    config = load_config(REPO / "examples" / name)
    assert config.model_source is not None and source_kind(config.model_source).name == kind
    assert config.engine.overlap == "on"


@pytest.mark.engine
@pytest.mark.ray
def test_the_mapping_example_runs_as_written() -> None:
    """``node-init build-model``, ``node-init azure-server`` (its own process), ``node-init run
    examples/node_init_mirror.yaml``: an abfss:// bucket in Ray's mapping form with extra_files, the engine
    booted overlapped, every file checked against its Content-MD5."""
    model = Path("/tmp/node-init-example/tiny-llama")
    subprocess.run([str(BIN / "node-init"), "build-model", str(model)], check=True, capture_output=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_INIT_CACHE_DIR", "RAY_ADDRESS")}
    server = subprocess.Popen([str(BIN / "node-init"), "azure-server", str(model)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # the server says where it serves once it does
        assert "serving azure://models@devstoreaccount1" in line, line
        extra = Path("/tmp/node-init-example/extra")
        for left in (extra, Path("/tmp/node-init-example/cache/tiny-llama-mirror")):  # an earlier run's
            if left.is_symlink() or left.is_file():
                left.unlink()
            elif left.exists():
                shutil.rmtree(left)
        out = subprocess.run([str(BIN / "node-init"), "run", "examples/node_init_mirror.yaml"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "checked=md5:5" in out.stdout and "overlap=True" in out.stdout
        assert (extra / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
