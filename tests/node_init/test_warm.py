"""Getting vLLM ready early: the import starts with the init, and the model-info cache a fresh node lacks.

The vLLM parts run in fresh subprocesses: ``VLLM_CACHE_ROOT`` must be an empty directory before vLLM
reads it, and whether the import started early is only visible in a process that had not imported it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from node_init.engine import model_architectures
from node_init.testing import build_tiny_llama
from tests import _procs as procs

REPO = Path(__file__).resolve().parents[2]


def _python(code: str, tmp_path: Path, timeout: float = 300) -> str:
    env = {**os.environ, "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache"), "PYTHONPATH": str(REPO)}
    proc = procs.run([sys.executable, "-c", code], env=env, timeout=timeout)  # vLLM's own subprocesses ended too
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def _config(tmp_path: Path, **fields: object) -> str:
    (tmp_path / "config.json").write_text(json.dumps(fields))
    return str(tmp_path)


def test_architectures_named_by_the_config(tmp_path: Path) -> None:
    path = _config(tmp_path, architectures=["MistralForCausalLM"], model_type="llama")
    assert model_architectures(path) == ["MistralForCausalLM"]


def test_architectures_fall_back_to_the_model_type(tmp_path: Path) -> None:
    # vLLM resolves a config without ``architectures`` through transformers' auto classes.
    assert model_architectures(_config(tmp_path, model_type="llama")) == ["LlamaForCausalLM", "LlamaModel"]


def test_architectures_of_a_missing_or_broken_config_are_none(tmp_path: Path) -> None:
    assert model_architectures(str(tmp_path)) == []
    (tmp_path / "config.json").write_text("{not json")
    assert model_architectures(str(tmp_path)) == []


@pytest.mark.engine
def test_model_info_is_vllms_own_answer_and_vllm_reads_it(tmp_path: Path) -> None:
    model = build_tiny_llama(tmp_path / "tiny")
    out = _python(f"""
import json
from dataclasses import asdict
from vllm.model_executor.models import registry
from vllm.model_executor.models.registry import ModelRegistry, _ModelInfo, _run_in_subprocess
from node_init.engine import warm_model_info

first = warm_model_info({str(model)!r})
again = warm_model_info({str(model)!r})
entry = ModelRegistry.models["LlamaForCausalLM"]
# vLLM's own way: the class inspected in a fresh subprocess.
theirs = _run_in_subprocess(lambda: _ModelInfo.from_model_cls(entry.load_model_cls()))

def refuse(fn):
    raise AssertionError("vLLM inspected the class again instead of reading the cache")

registry._run_in_subprocess = refuse
ours = entry.inspect_model_cls()
# Through JSON, as vLLM's own cache stores it (tuples come back as lists either way).
same = json.loads(json.dumps(asdict(ours))) == json.loads(json.dumps(asdict(theirs)))
print(json.dumps({{"first": first, "again": again, "same": same}}))
""", tmp_path)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["first"] == ["vllm.model_executor.models.llama.LlamaForCausalLM"]
    assert result["again"] == []  # already warm: nothing inspected twice
    assert result["same"], "the cached model info differs from vLLM's own inspection"
    assert list((tmp_path / "vllm-cache" / "modelinfos").iterdir())


@pytest.mark.engine
@pytest.mark.parametrize("hand_off", [False, True], ids=["ours", "handed_off"])
def test_the_import_starts_before_the_first_hook(tmp_path: Path, hand_off: bool) -> None:
    """Also when the caller boots the engine itself (the stock path): the import overlaps the download."""
    model = build_tiny_llama(tmp_path / "tiny")
    out = _python(f"""
import anyio, json
from eventbus import EventBus
from node_init import BeforeEngineInit, BeforeInit, initialize_node, parse_config
from node_init.engine import import_started

seen = {{}}
bus = EventBus()

@bus.on(BeforeInit)
def before_init(event, ctx):
    seen["import_started"] = import_started()
    return False  # no placement, no download: straight to the engine

@bus.on(BeforeEngineInit)
def before_engine(event, ctx):
    return {hand_off}  # and no engine (handed off: none is booted): only when the import started matters

config = parse_config({{"model_id": "tiny", "model_source": {str(model)!r}, "placement": None,
                       "engine": {{"kind": "vllm"}}}})
anyio.run(lambda: initialize_node(config, bus=bus, hand_off={hand_off}), backend="asyncio")
print(json.dumps(seen))
""", tmp_path)
    assert json.loads(out.strip().splitlines()[-1]) == {"import_started": True}
