"""Which files of a model repo vLLM 0.32 reads, for the engine arguments it is given: one rule, an allow-list.

A Hub snapshot is handed to the engine offline, so a file vLLM would have fetched on demand and the
snapshot lacks is not an error: vLLM runs without it (a sentence-transformers model without its
``1_Pooling/config.json`` is served with another pooling). :func:`select_files` therefore keeps every
file vLLM reads, at any depth, and nothing else:

- **Configs, tokenizers, templates, processors** (the repo root): ``*.json`` (``config.json``,
  ``params.json``, ``generation_config.json``, tokenizer, processor and quantization configs, mistral_common's
  ``tekken.json``) but the weight indexes vLLM does not read; ``*.txt`` (``merges.txt``, ``vocab.txt``);
  sentencepiece ``*.model`` and ``tokenizer.model.v*``; ``*.tiktoken``; ``*.jinja`` and
  ``additional_chat_templates/*.jinja``.
- **sentence-transformers modules**: ``modules.json``, then for the Pooling module ``<path>/config.json``
  (``get_pooling_config``), for each Dense module ``<path>/config.json`` and its weights,
  ``model.safetensors`` else ``pytorch_model.bin`` (``try_get_dense_modules``, ``_load_st_projector``).
  A Normalize module is read from ``modules.json`` alone.
- ``*.py`` (at any depth) only with ``trust_remote_code``.
- **Weights** as ``DefaultModelLoader._prepare_weights`` picks them for the ``load_format``
  (:data:`WEIGHT_PATTERNS`): the first pattern that matches a top-level file wins; safetensors are
  narrowed to the shards their index names (the index is fetched too); other formats lose
  ``training_args.bin`` and the optimizer's files. Under ``auto`` a ``consolidated*.safetensors``
  anywhere in the repo makes it ``mistral``.

Everything else (``tf_model.h5``, ``flax_model.msgpack``, ``rust_model.ot``, ``model.onnx``,
``original/consolidated.00.pth``, duplicate checkpoints, README) stays on the Hub. Every load format
vLLM 0.32 accepts is in :data:`LOAD_FORMATS`: weights by a pattern, none (``dummy`` and the streaming
formats, which read the source themselves) or refused when the config is parsed (``modelexpress``:
its package decides what it reads).

vLLM also decides the config format (``params.json`` over ``config.json`` in a Mistral repo) and the
tokenizer mode (mistral_common when ``tekken.json`` or ``tokenizer.model.v*`` is there) from the
repo's file list, and a snapshot may lack the file that decided it (``load_format: safetensors`` on a
Mistral repo leaves ``consolidated.safetensors`` on the Hub). :class:`Selection` says what vLLM
decides on the whole repo and :meth:`Selection.pinned_kwargs` the engine arguments that make it
decide the same on the snapshot. The module imports neither vLLM nor Ray.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from fnmatch import fnmatch
from typing import Any, Literal

import attrs

#: Weight patterns by the load format ``_prepare_weights`` resolves to, tried in order (``*.pt`` is
#: its ``fall_back_to_pt`` for the formats that do not insist on safetensors), and the index that
#: narrows safetensors.
WEIGHT_PATTERNS: dict[str, tuple[tuple[str, ...], str]] = {
    "hf": (("*.safetensors", "*.bin", "*.pt"), "model.safetensors.index.json"),
    "safetensors": (("*.safetensors",), "model.safetensors.index.json"),
    "fastsafetensors": (("*.safetensors",), "model.safetensors.index.json"),
    "instanttensor": (("*.safetensors",), "model.safetensors.index.json"),
    "mistral": (("consolidated*.safetensors",), "consolidated.safetensors.index.json"),
    "pt": (("*.pt",), "model.safetensors.index.json"),
    "npcache": (("*.bin", "*.pt"), "model.safetensors.index.json"),
    # ShardedStateLoader downloads every top-level safetensors file and loads its rank's shards.
    "sharded_state": (("*.safetensors",), ""),
}

#: Files ``filter_files_not_needed_for_inference`` drops from non-safetensors weights.
TRAINING_FILES = ("training_args.bin", "optimizer.bin", "optimizer.pt", "scheduler.pt", "scaler.pt")

LoadKind = Literal["weights", "none", "refused"]

#: Every ``load_format`` vLLM 0.32 accepts (``model_executor/model_loader/__init__.py``), and what it
#: reads: ``weights`` (by :data:`WEIGHT_PATTERNS`; ``auto`` and ``ipc_cache``, whose fallback is
#: ``auto``, resolve to ``mistral`` or ``hf``), ``none`` (no weight file: random weights or a
#: streaming loader reading the source itself) or ``refused`` (the files are not known here).
LOAD_FORMATS: dict[str, tuple[LoadKind, str]] = {
    "auto": ("weights", "mistral when a consolidated*.safetensors exists, else hf"),
    "hf": ("weights", "*.safetensors, else *.bin, else *.pt"),
    "safetensors": ("weights", "*.safetensors"),
    "fastsafetensors": ("weights", "*.safetensors"),
    "instanttensor": ("weights", "*.safetensors"),
    "mistral": ("weights", "consolidated*.safetensors"),
    "pt": ("weights", "*.pt"),
    "npcache": ("weights", "*.bin, else *.pt"),
    "sharded_state": ("weights", "every top-level *.safetensors (the model-rank-*-part-* shards)"),
    "ipc_cache": ("weights", "as auto (its fallback when the weight cache daemon is absent)"),
    "dummy": ("none", "random weights"),
    "runai_streamer": ("none", "streamed from the source by the engine"),
    "runai_streamer_sharded": ("none", "streamed from the source by the engine"),
    "tensorizer": ("none", "streamed from the source by the engine"),
    "modelexpress": ("refused", "the modelexpress package decides what it reads"),
}

#: sentence-transformers module types vLLM reads (``transformers_utils/config.py``).
POOLING_TYPES = frozenset({"sentence_transformers.models.Pooling",
                           "sentence_transformers.sentence_transformer.modules.pooling.Pooling"})
DENSE_TYPES = frozenset({"sentence_transformers.models.Dense", "sentence_transformers.base.modules.dense.Dense",
                         "pylate.models.Dense.Dense"})
#: Root files vLLM never reads though they look like configs.
_NOT_READ = frozenset({"trainer_state.json"})
#: A Mistral tokenizer (mistral_common) by its file names (``tokenizers/registry.py``).
MISTRAL_TOKENIZER = ("tekken.json", "tokenizer.model.v*")


@attrs.frozen
class EngineFileArgs:
    """The engine arguments that decide which files vLLM reads.

    Attributes:
        load_format: vLLM's ``load_format`` (lower-cased, as vLLM does).
        trust_remote_code: ``*.py`` files are read only with it.
        config_format: ``auto``, ``hf``, ``mistral`` (or a registered parser's name).
        tokenizer_mode: ``auto``, ``hf``, ``mistral``, ...
        own_tokenizer: The tokenizer is read from this repo (no ``tokenizer`` argument naming another).
    """

    load_format: str = "auto"
    trust_remote_code: bool = False
    config_format: str = "auto"
    tokenizer_mode: str = "auto"
    own_tokenizer: bool = True

    @classmethod
    def of(cls, kwargs: Mapping[str, Any], *, model: str | None = None) -> EngineFileArgs:
        """From engine arguments (``model``: the source, to tell a ``tokenizer`` naming the model itself)."""
        tokenizer = kwargs.get("tokenizer")
        return cls(load_format=str(kwargs.get("load_format") or "auto").lower(),
                   trust_remote_code=bool(kwargs.get("trust_remote_code", False)),
                   config_format=str(kwargs.get("config_format") or "auto"),
                   tokenizer_mode=str(kwargs.get("tokenizer_mode") or "auto"),
                   own_tokenizer=not tokenizer or tokenizer == model)


def check_load_format(load_format: str) -> None:
    """Raise ``ValueError`` unless vLLM 0.32 accepts ``load_format`` and its files are known here."""
    kind = LOAD_FORMATS.get(load_format.lower())
    if kind is None:
        raise ValueError(f"{load_format!r} is not a load_format vLLM 0.32 accepts ({', '.join(LOAD_FORMATS)})")
    if kind[0] == "refused":
        raise ValueError(f"load_format {load_format!r} cannot be downloaded ahead: {kind[1]}; leave model_source "
                         "out to let the engine load the model itself")


@attrs.frozen
class Selection:
    """What vLLM reads from a repo.

    Attributes:
        files: Every file to fetch, sorted.
        weights: The weight files among them (as ``_prepare_weights`` returns them).
        load_format: The format ``_prepare_weights`` resolves to (``mistral``, ``hf``, ...; ``none``).
        index: The weight index read to narrow safetensors ("" when none).
        config_format: The config format vLLM decides on the whole repo.
        tokenizer_mode: The tokenizer mode it decides (for this repo's own tokenizer; "" otherwise).
        args: The engine arguments it was decided for.
    """

    files: tuple[str, ...]
    weights: tuple[str, ...]
    load_format: str
    index: str
    config_format: str
    tokenizer_mode: str
    args: EngineFileArgs

    def pinned_kwargs(self) -> dict[str, str]:
        """Engine arguments that make vLLM decide on the snapshot what it decides on the whole repo: the
        config format and tokenizer mode, where the arguments left them to ``auto``."""
        pinned = {}
        if self.args.config_format == "auto" and self.config_format:
            pinned["config_format"] = self.config_format
        if self.args.tokenizer_mode == "auto" and self.tokenizer_mode:
            pinned["tokenizer_mode"] = self.tokenizer_mode
        return pinned


def pinned_kwargs(paths: Iterable[str], args: EngineFileArgs) -> dict[str, str]:
    """:meth:`Selection.pinned_kwargs` from the file list alone (no weight choice, nothing read).

    Raises:
        FileNotFoundError: under ``config_format: auto``, the repo has no config vLLM reads.
    """
    listed = sorted(set(paths))
    mode = tokenizer_mode(listed, args) if args.own_tokenizer else ""
    return Selection(files=(), weights=(), load_format="", index="", config_format=config_format(listed, args),
                     tokenizer_mode=mode, args=args).pinned_kwargs()


def _top(paths: Iterable[str]) -> list[str]:
    # glob's '*' matches neither a '/' nor a leading dot.
    return [p for p in paths if "/" not in p and not p.startswith(".")]


def _any_depth(paths: Iterable[str], patterns: Iterable[str]) -> bool:
    """``list_filtered_repo_files``: a pattern matched against each file's base name, at any depth."""
    pats = tuple(patterns)
    return any(fnmatch(p.rsplit("/", 1)[-1], pat) for p in paths for pat in pats)


def is_mistral_repo(paths: Iterable[str]) -> bool:
    """vLLM's ``is_mistral_model_repo``: a ``consolidated*.safetensors`` anywhere."""
    return _any_depth(paths, ("consolidated*.safetensors",))


def config_format(paths: list[str], args: EngineFileArgs) -> str:
    """The config format vLLM's ``get_config`` decides for this repo.

    Raises:
        FileNotFoundError: under ``auto``, the repo has neither ``config.json`` nor ``params.json``.
    """
    if args.config_format != "auto":
        return args.config_format
    if is_mistral_repo(paths) and "params.json" in paths:
        return "mistral"
    if "config.json" in paths:
        return "hf"
    raise FileNotFoundError("the repo has no config.json (HF format) nor params.json (Mistral format): vLLM "
                            "could not read its config")


def tokenizer_mode(paths: list[str], args: EngineFileArgs) -> str:
    """The tokenizer mode vLLM's ``resolve_tokenizer_args`` decides for a repo holding the tokenizer."""
    if args.tokenizer_mode != "auto":
        return args.tokenizer_mode
    return "mistral" if is_mistral_repo(paths) and _any_depth(paths, MISTRAL_TOKENIZER) else "hf"


def non_weight_files(paths: Iterable[str], args: EngineFileArgs) -> list[str]:
    """Configs, tokenizers, chat templates, processors (and ``*.py`` with ``trust_remote_code``): what
    vLLM and transformers read besides weights and sentence-transformers modules."""
    keep = []
    for p in paths:
        name = p.rsplit("/", 1)[-1]
        if p.endswith(".py"):
            if args.trust_remote_code:
                keep.append(p)
            continue
        if p.startswith("additional_chat_templates/") and p.count("/") == 1 and name.endswith(".jinja"):
            keep.append(p)
            continue
        if "/" in p or p.startswith(".") or name in _NOT_READ or name.endswith(".index.json"):
            continue
        if name.endswith((".json", ".txt", ".model", ".tiktoken", ".jinja")) or fnmatch(name, "tokenizer.model.v*"):
            keep.append(p)
    return keep


def weight_files(paths: list[str], load_format: str, read: Callable[[str], bytes]) -> tuple[list[str], str, str]:
    """``(weights, resolved load format, index read)`` as ``_prepare_weights`` picks them.

    Raises:
        FileNotFoundError: no file matches (vLLM: "Cannot find any model weights"), or the index names a
            shard the repo does not hold (naming both).
        ValueError: the index is not JSON with a ``weight_map``.
    """
    resolved = load_format
    if resolved in ("auto", "ipc_cache"):
        resolved = "mistral" if is_mistral_repo(paths) else "hf"
    patterns, index = WEIGHT_PATTERNS[resolved]
    top = _top(paths)
    found: list[str] = []
    for pattern in patterns:
        found = [p for p in top if fnmatch(p, pattern)]
        if found:
            break
    if not found:
        raise FileNotFoundError(f"no weight files vLLM would load with load_format {load_format!r} "
                                f"(looked for {', '.join(patterns)} at the top of the repo)")
    if not found[0].endswith(".safetensors"):
        return sorted(p for p in found if not p.endswith(TRAINING_FILES)), resolved, ""
    if not index or index not in paths:
        return sorted(found), resolved, ""
    try:
        named = set(json.loads(read(index))["weight_map"].values())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{index} is not a weight index (JSON with a weight_map): {exc}") from exc
    missing = sorted(str(s) for s in named - set(found))
    if missing:
        raise FileNotFoundError(f"{index} names {missing[0]}, which the repo does not hold"
                                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return sorted(p for p in found if p in named), resolved, index


def module_files(paths: list[str], read: Callable[[str], bytes]) -> list[str]:
    """``modules.json`` and what vLLM reads of the modules it names (see the module doc).

    Raises:
        ValueError: ``modules.json`` is not a JSON list of modules.
    """
    if "modules.json" not in paths:
        return []
    try:
        modules = json.loads(read("modules.json"))
        if isinstance(modules, dict):
            modules = modules.get("modules", [])
        kinds = [(str(m.get("type", "")), str(m.get("path", "")).strip("/")) for m in modules]
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"modules.json is not a list of sentence-transformers modules: {exc}") from exc
    have = set(paths)
    keep = ["modules.json"]
    for kind, folder in kinds:
        prefix = f"{folder}/" if folder else ""
        if kind in POOLING_TYPES or kind in DENSE_TYPES:
            keep += [f"{prefix}config.json"] if f"{prefix}config.json" in have else []
        if kind in DENSE_TYPES:
            weights = [f"{prefix}{n}" for n in ("model.safetensors", "pytorch_model.bin") if f"{prefix}{n}" in have]
            keep += weights[:1]
    return keep


def select_files(paths: Iterable[str], args: EngineFileArgs, read: Callable[[str], bytes]) -> Selection:
    """The files vLLM reads from a repo holding ``paths`` under ``args`` (see the module doc).

    Args:
        paths: Every file of the repo, relative, ``/``-separated.
        args: The engine arguments that decide it.
        read: The bytes of a small file of the repo (``modules.json``, a weight index).

    Raises:
        ValueError: a load format vLLM does not accept or whose files are not known here; a
            ``modules.json`` or index that cannot be read.
        FileNotFoundError: no weights, no config, or an index naming a shard the repo lacks.
    """
    listed = sorted(set(paths))
    check_load_format(args.load_format)
    kind = LOAD_FORMATS[args.load_format][0]
    weights: list[str] = []
    resolved, index = "none", ""
    if kind == "weights":
        weights, resolved, index = weight_files(listed, args.load_format, read)
    files = set(non_weight_files(listed, args)) | set(module_files(listed, read)) | set(weights)
    files |= {index} if index else set()
    return Selection(files=tuple(sorted(files)), weights=tuple(weights), load_format=resolved, index=index,
                     config_format=config_format(listed, args),
                     tokenizer_mode=tokenizer_mode(listed, args) if args.own_tokenizer else "", args=args)


def select_tokenizer_files(paths: Iterable[str], args: EngineFileArgs) -> tuple[list[str], str]:
    """``(files, tokenizer mode)`` of a repo named by the ``tokenizer`` engine argument: its
    configs, tokenizer files and templates (no weights), and the mode vLLM decides on the whole repo."""
    listed = sorted(set(paths))
    return sorted(non_weight_files(listed, args)), tokenizer_mode(listed, args)
