"""An embedding model in sentence-transformers layout, from the Hub, on a real vLLM engine (CPU).

vLLM reads the pooling, Dense and Normalize modules from their folders and, when one is missing, logs
and serves with another pooling or output size. The snapshot our Hub source fetches must embed exactly
as the whole repo does; the same snapshot without ``1_Pooling`` must not (which proves the comparison
sees the pooling folder).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from node_init import DownloadConfig, HFConfig
from node_init.download import Downloader, for_engine, open_source
from node_init.testing import HubServer, build_tiny_sentence_transformer
from tests._procs import run

pytestmark = [pytest.mark.engine]
EMBED = Path(__file__).with_name("embed_models.py")


def embed(*paths: Path) -> list[list[list[float]]]:
    """Each directory's embeddings, by vLLM in a process of its own (offline)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = run([sys.executable, str(EMBED), *map(str, paths)], timeout=300, env=env)
    line = next((x for x in done.stdout.splitlines() if x.startswith("EMBEDDINGS ")), None)
    assert line is not None, f"vLLM failed ({done.returncode}): {done.stderr[-3000:]}"
    out = json.loads(line.removeprefix("EMBEDDINGS "))
    return [out[str(p)] for p in paths]


def test_an_embedding_model_from_our_hub_snapshot_embeds_as_the_whole_repo(tmp_path: Path) -> None:
    local = build_tiny_sentence_transformer(tmp_path / "repo", pooling="mean", dense_out=48)
    junk = {"onnx/model.onnx": b"o" * 1000, "openvino/openvino_model.bin": b"v" * 1000, "tf_model.h5": b"h" * 1000}
    for key, data in junk.items():
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(data)
    hub = HubServer().start()
    try:
        hub.push_dir("org/tiny-st", local)
        cfg = DownloadConfig(hf=HFConfig(endpoint_url=hub.endpoint), timeout_s=60, stall_timeout_s=5, retries=0)
        kwargs = {"runner": "pooling", "convert": "embed", "dtype": "float32", "enforce_eager": True}
        source = for_engine(open_source("hf://org/tiny-st", cfg), kwargs)
        snapshot = Path(Downloader(source, tmp_path / "cache" / "tiny-st", cfg).run(source.list_files()).path)
    finally:
        hub.stop()
    fetched = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
    assert {"modules.json", "1_Pooling/config.json", "2_Dense/config.json", "2_Dense/model.safetensors"} <= fetched
    assert not fetched & set(junk)
    no_pooling = tmp_path / "no-pooling"
    shutil.copytree(snapshot, no_pooling)
    shutil.rmtree(no_pooling / "1_Pooling")
    full, ours, without = embed(local, snapshot, no_pooling)
    assert {len(v) for v in full} == {len(v) for v in ours} == {48}  # the Dense module's output size
    assert all(o == pytest.approx(f, abs=1e-6) for o, f in zip(ours, full, strict=True))
    # Without its pooling folder vLLM falls back to last-token pooling: other embeddings (the test sees it).
    assert not all(w == pytest.approx(f, abs=1e-3) for w, f in zip(without, full, strict=True))
