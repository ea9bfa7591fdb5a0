"""Models from the Hub on a real vLLM engine (CPU): our snapshot against the whole repo.

An embedding model in sentence-transformers layout:

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
from typing import Any

import pytest

from node_init import DownloadConfig, HFConfig
from node_init.download import Downloader, for_engine, open_source
from node_init.testing import HubServer, build_tiny_llama, build_tiny_sentence_transformer
from tests._procs import run

pytestmark = [pytest.mark.engine]
SCRIPT = Path(__file__).with_name("vllm_outputs.py")


def outputs(mode: str, *paths: Path) -> list[Any]:
    """Each directory's embeddings (``embed``) or greedy tokens (``generate``), by vLLM in a process of its
    own (offline)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = run([sys.executable, str(SCRIPT), mode, *map(str, paths)], timeout=300, env=env)
    line = next((x for x in done.stdout.splitlines() if x.startswith("OUTPUTS ")), None)
    assert line is not None, f"vLLM failed ({done.returncode}): {done.stderr[-3000:]}"
    out = json.loads(line.removeprefix("OUTPUTS "))
    return [out[str(p)] for p in paths]


def fetch(hub: HubServer, repo: str, kwargs: dict[str, Any], dest: Path) -> Path:
    """``repo`` downloaded through our Hub source for the engine arguments ``kwargs``: the snapshot."""
    cfg = DownloadConfig(hf=HFConfig(endpoint_url=hub.endpoint), timeout_s=60, stall_timeout_s=5, retries=0)
    source = for_engine(open_source(f"hf://{repo}", cfg), kwargs)
    return Path(Downloader(source, dest, cfg).run(source.list_files()).path)


def files_of(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_an_embedding_model_from_our_hub_snapshot_embeds_as_the_whole_repo(tmp_path: Path) -> None:
    local = build_tiny_sentence_transformer(tmp_path / "repo", pooling="mean", dense_out=48)
    junk = {"onnx/model.onnx": b"o" * 1000, "openvino/openvino_model.bin": b"v" * 1000, "tf_model.h5": b"h" * 1000}
    for key, data in junk.items():
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(data)
    hub = HubServer().start()
    try:
        hub.push_dir("org/tiny-st", local)
        snapshot = fetch(hub, "org/tiny-st", {"runner": "pooling", "convert": "embed"}, tmp_path / "cache" / "st")
    finally:
        hub.stop()
    fetched = files_of(snapshot)
    assert {"modules.json", "1_Pooling/config.json", "2_Dense/config.json", "2_Dense/model.safetensors"} <= fetched
    assert not fetched & set(junk)
    no_pooling = tmp_path / "no-pooling"
    shutil.copytree(snapshot, no_pooling)
    shutil.rmtree(no_pooling / "1_Pooling")
    full, ours, without = outputs("embed", local, snapshot, no_pooling)
    assert {len(v) for v in full} == {len(v) for v in ours} == {48}  # the Dense module's output size
    assert all(o == pytest.approx(f, abs=1e-6) for o, f in zip(ours, full, strict=True))
    # Without its pooling folder vLLM falls back to last-token pooling: other embeddings (the test sees it).
    assert not all(w == pytest.approx(f, abs=1e-3) for w, f in zip(without, full, strict=True))


def test_a_causal_lm_with_extra_shards_from_our_hub_snapshot_generates_as_the_whole_repo(tmp_path: Path) -> None:
    """Two shards and their index, a stale shard beside them (not in the index), other frameworks'
    checkpoints: the snapshot holds the indexed shards only, and vLLM's greedy tokens on it are the whole
    repo's."""
    from safetensors.numpy import load_file, save_file

    local = build_tiny_llama(tmp_path / "repo")
    tensors = load_file(str(local / "model.safetensors"))
    (local / "model.safetensors").unlink()
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, str(local / shard), metadata={"format": "pt"})
    (local / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: shard for shard, keys in halves.items() for k in keys}}))
    save_file({k: tensors[k] * 0 for k in names[:2]}, str(local / "stale-00001.safetensors"))  # vLLM skips it
    junk = {"tf_model.h5", "flax_model.msgpack", "rust_model.ot", "onnx/model.onnx", "original/consolidated.00.pth"}
    for key in junk:
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(os.urandom(1000))
    hub = HubServer().start()
    try:
        hub.push_dir("org/tiny-lm", local)
        snapshot = fetch(hub, "org/tiny-lm", {}, tmp_path / "cache" / "lm")
    finally:
        hub.stop()
    assert files_of(snapshot) == files_of(local) - junk - {"stale-00001.safetensors"}
    full, ours = outputs("generate", local, snapshot)
    assert ours == full and all(len(tokens) == 12 for tokens in ours)
