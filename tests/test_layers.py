"""Layers that hold, checked from the source (AST and tokenize; nothing is imported or run).

- ``node_init.download`` imports no Ray: the shared Hub tree travels through the flow or ``cluster/``;
- ``node_init._config`` imports nothing of ``node_init.download`` (the source and revision checks are
  registered by ``download``, which imports the config, never the other way round);
- every broad ``except`` (bare, ``Exception``, ``BaseException``) that swallows the error (neither raises
  nor hands the caught error on) either logs a line or carries a comment naming the case it is for.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("eventbus", "node_init", "handlers")


def module_name(path: Path, *, root: Path = REPO) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, root: Path = REPO) -> Iterator[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``path`` (a module under ``root``), at any depth (a
    lazy import is one too); ``from a import b`` gives both ``a`` and ``a.b`` (``b`` may be a module)."""
    name = module_name(path, root=root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def sources(*roots: str) -> list[Path]:
    return sorted(p for root in roots for p in (REPO / root).rglob("*.py"))


# -- download/ imports no Ray ----------------------------------------------------------------------

#: Modules of download/ that still reach Ray, each with why (an entry here is work left, not a rule).
RAY_IN_DOWNLOAD: dict[str, str] = {}


def _ray_uses(path: Path, *, root: Path = REPO) -> list[str]:
    found = [f"{path.name}:{line} imports {module}" for line, module in imports(path, root=root)
             if module == "ray" or module.startswith("ray.")]
    for node in ast.walk(ast.parse(path.read_text())):  # sys.modules.get("ray"): Ray used without an import
        if isinstance(node, ast.Constant) and node.value == "ray":
            found.append(f"{path.name}:{node.lineno} names the ray module")
    return found


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.xfail(reason=RAY_IN_DOWNLOAD[p.name], strict=False))
    if p.name in RAY_IN_DOWNLOAD else p for p in sources("node_init/download")], ids=lambda p: p.name)
def test_download_imports_no_ray(path: Path) -> None:
    assert _ray_uses(path) == []


def test_the_ray_scan_sees_a_lazy_import(tmp_path: Path) -> None:
    planted = tmp_path / "node_init" / "download" / "_planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("def f() -> None:\n    from ray.experimental import internal_kv\n")
    assert _ray_uses(planted, root=tmp_path) == ["_planted.py:2 imports ray.experimental",
                                                 "_planted.py:2 imports ray.experimental.internal_kv"]


# -- no cycle between the config and download/ -----------------------------------------------------

def test_the_config_imports_nothing_of_download() -> None:
    """download/ imports the config (its structs); the config only runs the checks download/ registers."""
    config = REPO / "node_init" / "_config.py"
    assert [m for _, m in imports(config) if m.startswith("node_init.download")] == []
    assert any(m == "node_init._config" or m.startswith("node_init._config.")
               for p in sources("node_init/download") for _, m in imports(p))


def test_the_config_checks_sources_and_revisions_through_what_download_registered() -> None:
    from node_init import ConfigError, parse_config

    with pytest.raises(ConfigError, match="unsupported scheme"):
        parse_config({"model_id": "m", "model_source": "ftp://x/y"})
    with pytest.raises(ConfigError, match="is not a revision") as info:
        parse_config({"model_id": "m", "engine": {"kwargs": {"tokenizer": "org/tok", "tokenizer_revision": "a..b"}}})
    assert info.value.field == "engine.kwargs.tokenizer_revision"


# -- every broad except that swallows says why -----------------------------------------------------

#: Broad excepts that swallow with neither a log line nor a comment: ``path:function`` -> why allowed.
SWALLOW_ALLOWED: dict[str, str] = {}

_LOG_CALLS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "msg"}


def _broad(handler: ast.ExceptHandler) -> bool:
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(k is None or (isinstance(k, ast.Name) and k.id in ("Exception", "BaseException")) for k in kinds)


def _raises(handler: ast.ExceptHandler) -> bool:
    return any(isinstance(n, ast.Raise) for stmt in handler.body for n in ast.walk(stmt))


def _hands_on(handler: ast.ExceptHandler) -> bool:
    """The caught error goes somewhere: stored, returned, passed to a future or a failure record."""
    return handler.name is not None and any(isinstance(n, ast.Name) and n.id == handler.name
                                            for stmt in handler.body for n in ast.walk(stmt))


def _logs(handler: ast.ExceptHandler) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in _LOG_CALLS
               for stmt in handler.body for n in ast.walk(stmt))


def _own(func: ast.AST) -> Iterator[ast.AST]:
    """The nodes of ``func``'s own body (a nested function's are its own)."""
    todo = list(ast.iter_child_nodes(func))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            todo.extend(ast.iter_child_nodes(node))


def swallowed_silently(path: Path, *, root: Path = REPO) -> list[str]:
    """``path:function:line`` of each broad except in ``path`` that swallows with no log and no comment
    (on the ``except`` line, or in the handler's first statement)."""
    text = path.read_text()
    comments = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(text).readline)
                if tok.type == tokenize.COMMENT}
    found = []
    tree = ast.parse(text)
    for func in [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))]:
        for node in _own(func):
            if not isinstance(node, ast.Try | ast.TryStar):
                continue
            for handler in node.handlers:
                if not _broad(handler) or _raises(handler) or _hands_on(handler) or _logs(handler):
                    continue
                lines = range(handler.lineno, (handler.body[0].end_lineno or handler.lineno) + 1)
                if not comments.intersection(lines):
                    name = getattr(func, "name", "<module>")
                    found.append(f"{path.relative_to(root).as_posix()}:{name}:{handler.lineno}")
    return sorted(set(found))


def test_every_broad_except_that_swallows_logs_or_says_why() -> None:
    offenders = [f for p in sources(*PACKAGES) for f in swallowed_silently(p)
                 if f.rsplit(":", 1)[0] not in SWALLOW_ALLOWED]
    assert offenders == [], "log a line, or say in a comment which case this is (see SWALLOW_ALLOWED)"


def test_the_except_scan_finds_a_silent_one(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text("def f() -> None:\n    try:\n        g()\n    except Exception:\n        pass\n\n\n"
                       "def h() -> None:\n    try:\n        g()\n    except Exception:  # g's failure is h's none\n"
                       "        pass\n")
    assert swallowed_silently(planted, root=tmp_path) == ["planted.py:f:4"]
