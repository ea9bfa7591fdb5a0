from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> "Path":
    """A synthetic multi-file model (config, tokenizer, two weight shards)."""
    from node_init.testing import write_model_files

    root = tmp_path_factory.mktemp("models") / "synthetic"
    write_model_files(root, {"model-00001-of-00002.safetensors": 3 << 20,
                             "model-00002-of-00002.safetensors": 2 << 20})
    return root
