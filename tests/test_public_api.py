"""The public surface: every public module's __all__ is exactly what it exports."""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

PACKAGES = ["eventbus", "node_init", "handlers"]


def public_modules() -> list[str]:
    """Every package and public module, subpackages included (``node_init.download``...)."""
    names = []
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.append(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg_name}."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                names.append(info.name)
    return names


def packages() -> set[str]:
    return {name for name in public_modules() if hasattr(importlib.import_module(name), "__path__")}


@pytest.mark.parametrize("name", public_modules())
def test_all_matches_public_names(name: str) -> None:
    try:
        mod = importlib.import_module(name)
    except ImportError as exc:  # optional heavy deps (vllm, ray.serve.llm)
        pytest.skip(f"{name} needs an optional dependency: {exc}")
    assert hasattr(mod, "__all__"), f"{name} has no __all__"
    exported = set(mod.__all__)
    for attr in exported:
        assert hasattr(mod, attr), f"{name}.__all__ names missing {attr}"
    def ours(value: object) -> bool:  # type aliases (``Callable[...]``) belong to typing
        return str(getattr(value, "__module__", name)).split(".")[0] in PACKAGES

    public = {
        n for n, v in vars(mod).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType) and ours(v)
        and n not in ("annotations",)
    }
    if name in packages():  # a package root re-exports exactly its __all__
        ours_exported = {n for n in exported if ours(getattr(mod, n))}
        assert public == ours_exported, f"{name}: public {sorted(public)} vs __all__ {sorted(exported)}"
    else:
        assert exported <= public | set(dir(mod))


def test_eventbus_surface_is_the_documented_one() -> None:
    import eventbus

    assert set(eventbus.__all__) == {
        "Event", "EventBus", "EventBusError", "HandlerError", "HandlerSet", "HandlerTimeout",
        "Outcome", "Subscription",
    }
    assert issubclass(eventbus.HandlerTimeout, eventbus.HandlerError)
    assert issubclass(eventbus.HandlerError, eventbus.EventBusError)


def test_importing_node_init_does_not_import_heavy_deps() -> None:
    import subprocess
    import sys

    code = (
        "import sys, node_init, eventbus, handlers;"
        "bad=[m for m in ('vllm','ray.serve.llm','torch') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


SUBPACKAGES = ["node_init.download", "node_init.cluster", "node_init.engine"]


def test_the_subpackages_are_found() -> None:
    assert set(SUBPACKAGES) <= set(public_modules())


def test_no_module_imports_another_packages_private_modules() -> None:
    """Outside a package, only its public names are used (``node_init.download``, not ``._downloader``)."""
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    offenders = []
    for path in [*repo.glob("tests/**/*.py"), *repo.glob("benchmarks/*.py"), *repo.glob("handlers/*.py"),
                 *repo.glob("examples/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                parts = name.split(".")
                if parts[0] in PACKAGES and any(p.startswith("_") for p in parts[1:]):
                    offenders.append(f"{path.relative_to(repo)}: {name}")
    assert offenders == []


def test_the_serve_import_path_users_name_is_the_engine_packages_code() -> None:
    pytest.importorskip("ray.serve.llm")
    import node_init.engine.ray_serve as impl
    import node_init.ray_serve as public

    assert public.EventBusCallback is impl.EventBusCallback
    assert public.OverlappedLLMServer is impl.OverlappedLLMServer
