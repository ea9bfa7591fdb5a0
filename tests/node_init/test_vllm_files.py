"""The file rule (``node_init.download.select_files``) against vLLM 0.32's own decisions.

For each layout and load format, vLLM's ``DefaultModelLoader._prepare_weights``, ``get_config``'s
config-format choice and ``resolve_tokenizer_args`` run on the WHOLE repo directory and on a directory
holding only the selected files (with the engine arguments the selection pins): the weight set, the
config format and the tokenizer mode must be the same. No engine boots.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node_init.download import LOAD_FORMATS, EngineFileArgs, Selection, check_load_format, select_files

SHARDS = {"model-00001-of-00002.safetensors": "a", "model-00002-of-00002.safetensors": "b"}
#: A Mistral repo as Mistral publishes them: the consolidated checkpoint (with params.json and
#: tekken.json) beside HF shards (with config.json and tokenizer.json).
MISTRAL = {
    "params.json": "{}", "tekken.json": "{}", "consolidated.safetensors": "w",
    "config.json": "{}", "tokenizer.json": "{}", "tokenizer_config.json": "{}", "generation_config.json": "{}",
    "model.safetensors.index.json": json.dumps({"weight_map": {"x": "model-00001-of-00002.safetensors",
                                                               "y": "model-00002-of-00002.safetensors"}}),
    **SHARDS,
    "README.md": "", ".gitattributes": "",
}
#: An HF repo carrying every other framework's checkpoint beside safetensors.
JUNK = {"tf_model.h5", "flax_model.msgpack", "rust_model.ot", "model.onnx", "onnx/model.onnx",
        "original/consolidated.00.pth", "pytorch_model.bin", "stale.safetensors"}
HF = {"config.json": "{}", "tokenizer.json": "{}", "merges.txt": "", "vocab.json": "{}",
      "chat_template.jinja": "", "additional_chat_templates/tool.jinja": "", "preprocessor_config.json": "{}",
      "model.safetensors.index.json": json.dumps({"weight_map": {"x": "model-00001-of-00002.safetensors",
                                                                 "y": "model-00002-of-00002.safetensors"}}),
      "modeling_custom.py": "", **SHARDS, **dict.fromkeys(JUNK, "j")}


def write(root: Path, files: dict[str, str]) -> Path:
    for key, text in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_text(text)
    return root


def reader(root: Path) -> Callable[[str], bytes]:
    return lambda key: (root / key).read_bytes()


def snapshot(root: Path, selection: Selection, dest: Path) -> Path:
    return write(dest, {k: (root / k).read_text() for k in selection.files})


@pytest.fixture(scope="module")
def vllm_decides() -> Iterator[Callable[..., tuple[list[str], str, str]]]:
    """``(weights, config format, tokenizer mode)`` vLLM decides for a directory, by its own functions."""
    # A local directory: nothing to ask a Hub. Only for this module: the variable is read at call time
    # by the Hub source, and left set it would make every later Hub test in the session read the cache.
    import huggingface_hub.constants  # noqa: F401  (imported first: the library fixes them at import)

    patch = pytest.MonkeyPatch()
    patch.setenv("HF_HUB_OFFLINE", "1")
    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
    from vllm.tokenizers.registry import resolve_tokenizer_args
    from vllm.transformers_utils import config as vconfig

    class Decided(Exception):
        pass

    def decide(path: Path, load_format: str, **kwargs: Any) -> tuple[list[str], str, str]:
        loader = DefaultModelLoader(LoadConfig(load_format=load_format))
        _, files, _, _ = loader._prepare_weights(str(path), None, None, True, None)
        seen: list[str] = []

        def parser(fmt: str) -> Any:  # get_config decided the format: stop before parsing the test's stub
            seen.append(fmt)
            raise Decided

        real = vconfig.get_config_parser
        vconfig.get_config_parser = parser
        try:
            vconfig.get_config(path, trust_remote_code=False, config_format=kwargs.get("config_format", "auto"))
        except Decided:
            pass
        finally:
            vconfig.get_config_parser = real
        mode, *_ = resolve_tokenizer_args(str(path), tokenizer_mode=kwargs.get("tokenizer_mode", "auto"))
        return sorted(os.path.relpath(f, path) for f in files), seen[0], mode

    try:
        yield decide
    finally:
        patch.undo()


@pytest.mark.parametrize("load_format", ["auto", "safetensors", "mistral", "hf"])
def test_mistral_layout_vllm_decides_the_same_on_our_snapshot(load_format: str, tmp_path: Path,
                                                              vllm_decides: Any) -> None:
    full = write(tmp_path / "full", MISTRAL)
    selection = select_files(MISTRAL, EngineFileArgs(load_format=load_format), reader(full))
    ours = snapshot(full, selection, tmp_path / "ours")
    on_full = vllm_decides(full, load_format)
    on_ours = vllm_decides(ours, load_format, **selection.pinned_kwargs())
    assert on_ours == on_full
    if load_format in ("safetensors", "hf"):  # the consolidated file that decided stays on the Hub: the pin matters
        assert vllm_decides(ours, load_format)[1:] == ("hf", "hf") != on_full[1:]
    assert list(selection.weights) == on_full[0]
    assert (selection.config_format, selection.tokenizer_mode) == on_full[1:]
    # Mistral's consolidated format under auto and mistral; the HF shards (not both) otherwise.
    mistral = load_format in ("auto", "mistral")
    assert set(selection.weights) == ({"consolidated.safetensors"} if mistral else set(SHARDS))
    assert ("params.json" in selection.files) and ("tekken.json" in selection.files)
    assert "README.md" not in selection.files and ".gitattributes" not in selection.files


@pytest.mark.parametrize("load_format", ["auto", "safetensors", "hf", "fastsafetensors"])
def test_other_frameworks_checkpoints_stay_on_the_hub(load_format: str, tmp_path: Path, vllm_decides: Any) -> None:
    full = write(tmp_path / "full", HF)
    selection = select_files(HF, EngineFileArgs(load_format=load_format), reader(full))
    assert not JUNK & set(selection.files)
    assert "modeling_custom.py" not in selection.files  # no trust_remote_code: no code
    assert {"merges.txt", "chat_template.jinja", "additional_chat_templates/tool.jinja",
            "preprocessor_config.json", "model.safetensors.index.json"} <= set(selection.files)
    if load_format != "fastsafetensors":  # needs the fastsafetensors package to load, not to choose
        ours = snapshot(full, selection, tmp_path / "ours")
        assert vllm_decides(ours, load_format, **selection.pinned_kwargs()) == vllm_decides(full, load_format)
    code = select_files(HF, EngineFileArgs(load_format=load_format, trust_remote_code=True), reader(full))
    assert set(code.files) - set(selection.files) == {"modeling_custom.py"}


def test_sentence_transformers_modules_at_any_depth(tmp_path: Path) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
               {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}]
    files = {"config.json": "{}", "model.safetensors": "w", "modules.json": json.dumps(modules),
             "1_Pooling/config.json": "{}", "2_Dense/config.json": "{}", "2_Dense/model.safetensors": "w",
             "2_Dense/pytorch_model.bin": "w", "0_Transformer/pytorch_model.bin": "w", "onnx/model.onnx": "w",
             "config_sentence_transformers.json": "{}", "sentence_bert_config.json": "{}"}
    full = write(tmp_path, files)
    selection = select_files(files, EngineFileArgs(), reader(full))
    assert set(selection.files) == {"config.json", "model.safetensors", "modules.json", "1_Pooling/config.json",
                                    "2_Dense/config.json", "2_Dense/model.safetensors",
                                    "config_sentence_transformers.json", "sentence_bert_config.json"}


WEIGHTS_BY_FORMAT = {"a.safetensors": "w", "b.bin": "w", "c.pt": "w", "training_args.bin": "w", "optimizer.pt": "w",
                     "consolidated.safetensors": "w", "model-rank-0-part-0.safetensors": "w", "config.json": "{}"}


SAFETENSORS = {"a.safetensors", "model-rank-0-part-0.safetensors"}
#: The weights each format takes from WEIGHTS_BY_FORMAT (``mistral``: with a consolidated file added).
EXPECTED = {"auto": SAFETENSORS, "hf": SAFETENSORS, "ipc_cache": SAFETENSORS, "safetensors": SAFETENSORS,
            "fastsafetensors": SAFETENSORS, "instanttensor": SAFETENSORS, "sharded_state": SAFETENSORS,
            "pt": {"c.pt"}, "npcache": {"b.bin"}, "mistral": {"consolidated.safetensors"}}


@pytest.mark.parametrize("load_format", sorted(LOAD_FORMATS))
def test_every_load_format_has_a_file_set_none_or_a_parse_time_error(load_format: str, tmp_path: Path) -> None:
    kind, _ = LOAD_FORMATS[load_format]
    repo = {k: v for k, v in WEIGHTS_BY_FORMAT.items() if k != "consolidated.safetensors" or load_format == "mistral"}
    full = write(tmp_path, repo)
    if kind == "refused":
        with pytest.raises(ValueError, match=load_format):
            check_load_format(load_format)
        from node_init import ConfigError, parse_config

        with pytest.raises(ConfigError, match="load_format") as info:
            parse_config({"model_id": "m", "model_source": "org/m", "engine": {"kwargs": {"load_format": load_format}}})
        assert info.value.field == "engine.kwargs.load_format"
        return
    selection = select_files(repo, EngineFileArgs(load_format=load_format), reader(full))
    if kind == "none":
        assert selection.weights == () and selection.files == ("config.json",)
        return
    assert set(selection.weights) == EXPECTED[load_format]
    assert set(selection.files) == EXPECTED[load_format] | {"config.json"}


def test_mistral_without_consolidated_weights_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="consolidated"):
        select_files(["config.json", "a.safetensors"], EngineFileArgs(load_format="mistral"), reader(tmp_path))


def test_an_unknown_load_format_is_refused_at_parse_time() -> None:
    from node_init import ConfigError, parse_config

    with pytest.raises(ConfigError, match="bogus") as info:
        parse_config({"model_id": "m", "model_source": "org/m", "engine": {"kwargs": {"load_format": "bogus"}}})
    assert info.value.field == "engine.kwargs.load_format"


def test_an_index_naming_a_missing_shard_names_both(tmp_path: Path) -> None:
    files = {"config.json": "{}", "model-1.safetensors": "w",
             "model.safetensors.index.json": json.dumps({"weight_map": {"x": "model-1.safetensors",
                                                                        "y": "model-2.safetensors"}})}
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors\.index\.json names model-2\.safetensors"):
        select_files(files, EngineFileArgs(), reader(write(tmp_path, files)))
