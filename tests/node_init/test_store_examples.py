"""The node-init examples for gs://, azure:// and Ray's mapping form parse and name their store (each one's
store and engine boot are run by ``test_engine.py::test_every_remote_store_boots_the_engine_overlapped...``)."""

from __future__ import annotations

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
