"""Every fenced block in README.md, docs/ and benchmarks/README.md: Python compiles and its imports
resolve (blocks marked ``run`` are run), YAML parses (configs with our parser). Markers: ``_markdown``."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from node_init import parse_config

from ._markdown import Block, blocks, pages

#: Modules whose import is slow (vLLM, Ray Serve LLM: seconds each): their names are resolved from the
#: source, without importing them, in this fast tier.
HEAVY = ("vllm", "ray.serve.llm", "node_init.ray_serve", "ray.llm", "torch", "transformers")
MARKS = {"", "run", "config", "config-part", "serve", "skip"}
ALL = [b for page in pages() for b in blocks(page)]


def _id(block: Block) -> str:
    return block.where


def _kind(block: Block) -> tuple[str, dict[str, str]]:
    """The marker's kind and its ``key=value`` options (``file NAME`` gives ``{"name": NAME}``)."""
    words = block.mark.split()
    if not words:
        return "", {}
    if words[0] == "file":
        return "file", {"name": words[1]}
    return words[0], dict(w.split("=", 1) for w in words[1:])


def test_every_marker_is_known() -> None:
    bad = [b.where for b in ALL if _kind(b)[0] not in MARKS | {"file"}]
    assert not bad, f"unknown doc markers at {bad}"


def test_every_yaml_block_says_what_it_is() -> None:
    """A YAML block is a config, a fragment of one, a Serve config, or skipped with a reason: none is only YAML."""
    bare = [b.where for b in ALL if b.lang == "yaml" and _kind(b)[0] not in ("config", "config-part", "serve", "skip")]
    assert not bare, f"YAML blocks with no doc marker: {bare}"


def _compile(block: Block) -> ast.Module:
    try:
        tree = compile(block.text, block.where, "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError as exc:
        pytest.fail(f"{block.where}: does not compile: {exc}")
    assert isinstance(tree, ast.Module)
    return tree


def _top_level_names(module: str) -> set[str] | None:
    """The names a module defines or imports at top level, read from its source (None: no source)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    tree = ast.parse(Path(spec.origin).read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _check_imports(block: Block, tree: ast.Module, local: set[str]) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [(node.module, a.name) for a in node.names]
        else:
            continue
        for module, name in targets:
            if module.split(".")[0] in local:
                continue
            where = f"{block.where}: import {module}" + (f".{name}" if name else "")
            if module.startswith(HEAVY):
                assert importlib.util.find_spec(module) is not None, f"{where}: no such module"
                if name:
                    defined = _top_level_names(module)
                    assert defined is None or name in defined, f"{where}: {module} has no {name}"
                continue
            try:
                imported = importlib.import_module(module)
            except ImportError as exc:
                pytest.fail(f"{where}: {exc}")
            if name:
                assert hasattr(imported, name) or importlib.util.find_spec(f"{module}.{name}"), (
                    f"{where}: {module} has no {name}")


def _python_blocks_by_page() -> list[list[Block]]:
    return [[b for b in blocks(page) if b.lang == "python"] for page in pages()]


@pytest.mark.parametrize("page_blocks", [p for p in _python_blocks_by_page() if p],
                         ids=lambda p: str(p[0].page.name))
def test_python_blocks_compile_resolve_and_run(page_blocks: list[Block], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of one page in order: ``file NAME`` blocks are saved for later blocks to import; ``run`` blocks run."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    local: set[str] = set()
    for block in page_blocks:
        tree = _compile(block)
        _check_imports(block, tree, local)
        kind, options = _kind(block)
        if kind == "file":
            (tmp_path / options["name"]).write_text(block.text)
            local.add(options["name"].removesuffix(".py"))
            importlib.import_module(options["name"].removesuffix(".py"))
        elif kind == "run":
            code = compile(block.text, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            anyio.run(_run_block, code)
    for name in local:
        sys.modules.pop(name, None)


async def _run_block(code: Any) -> None:
    """Run a compiled block as a reader would, in a fresh namespace (top-level ``await`` allowed)."""
    result = eval(code, {"__name__": "doc_block"})
    if result is not None:
        await result


YAML = [b for b in ALL if b.lang == "yaml"]


@pytest.mark.parametrize("block", YAML, ids=_id)
def test_yaml_blocks_parse(block: Block) -> None:
    try:
        data = msgspec.yaml.decode(block.text)
    except msgspec.DecodeError as exc:
        pytest.fail(f"{block.where}: not YAML: {exc}")
    kind, _ = _kind(block)
    if kind == "config":
        parse_config(data, file=block.where)
    elif kind == "config-part":
        parse_config({"model_id": "x", **data}, file=block.where)
    elif kind == "serve":
        _check_serve_config(block, data)


def _check_serve_config(block: Block, data: Any) -> None:
    """Our settings in each ``llm_configs`` item parse as they would in a replica (Ray's own check of the
    ``LLMConfig`` runs in the engine tier, ``test_serve_blocks_are_ray_llm_configs``)."""
    apps = data["applications"]
    assert apps, f"{block.where}: no applications"
    for app in apps:
        for llm in app["args"]["llm_configs"]:
            kwargs = dict(llm.get("callback_config", {}).get("callback_kwargs", {}))
            source = llm["model_loading_config"].get("model_source")
            engine = dict(kwargs.get("engine") or {})
            engine.setdefault("kind", "vllm")
            engine["kwargs"] = {**llm.get("engine_kwargs", {}), **engine.get("kwargs", {})}
            parse_config({"placement": None, "model_source": source, **kwargs, "engine": engine,
                          "model_id": llm["model_loading_config"]["model_id"]}, file=block.where)


SERVE = [b for b in ALL if b.lang == "yaml" and _kind(b)[0] == "serve"]


@pytest.mark.engine
@pytest.mark.parametrize("block", SERVE, ids=_id)
def test_serve_blocks_are_ray_llm_configs(block: Block) -> None:
    """Ray's ``LLMConfig`` takes each item, and our build check passes on it (as ``serve run`` would)."""
    from ray.serve.llm import LLMConfig

    from node_init.ray_serve import validate_llm_config

    for app in msgspec.yaml.decode(block.text)["applications"]:
        assert app["import_path"] in ("node_init.ray_serve:build_openai_app", "ray.serve.llm:build_openai_app")
        for llm in app["args"]["llm_configs"]:
            kwargs = llm.get("callback_config", {}).get("callback_kwargs", {})
            # The handlers' modules are the user's (shipped with --working-dir): checked on the node.
            llm = {**llm, "runtime_env": {"working_dir": "s3://bucket/hooks.zip"}} if kwargs.get("handlers") else llm
            validate_llm_config(LLMConfig(**llm))


SH = [b for b in ALL if b.lang in ("sh", "bash", "console")]


@pytest.mark.parametrize("block", SH, ids=_id)
def test_shell_blocks_name_only_commands_and_subcommands_that_exist(block: Block) -> None:
    from .test_cli import _subcommands

    for line in block.text.splitlines():
        words = line.split("#")[0].split()
        if "node-init" in words:
            sub = words[words.index("node-init") + 1]
            assert sub in _subcommands(), f"{block.where}: node-init has no subcommand {sub!r}"
        if words[:1] == ["make"]:
            makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
            for target in words[1:]:
                assert f"\n{target}:" in makefile, f"{block.where}: no make target {target}"
