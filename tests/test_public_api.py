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
            if isinstance(node, ast.ImportFrom):  # ``from node_init.engine import _warm`` too
                names += [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] in PACKAGES and any(p.startswith("_") for p in parts[1:]):
                    offenders.append(f"{path.relative_to(repo)}: {name}")
    assert offenders == []


def test_no_subpackage_imports_the_flow() -> None:
    """The flow (``node_init._init``) is imported only above it: the package root, Serve, the CLI.

    ``ray_serve/`` is the one subpackage above the flow (a consumer of it, like the CLI)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "node_init"
    offenders = []
    for path in root.glob("*/**/*.py"):
        if path.relative_to(root).parts[0] == "ray_serve":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "_init":
                offenders.append(str(path.relative_to(root)))
    assert offenders == []


def test_every_event_is_registered_and_exported() -> None:
    """An event class the package exports is in the registry, and every registered one is exported."""
    import node_init
    from eventbus import Event

    exported = [getattr(node_init, n) for n in node_init.__all__]
    events = {v for v in exported if isinstance(v, type) and issubclass(v, Event)}
    assert events == set(node_init.EVENTS)
    for cls, spec in node_init.EVENTS.items():
        assert spec.event is cls and spec.phase in set(node_init.Phase)


def test_a_registered_event_reaches_the_log_reader_and_the_hooks(tmp_path: object) -> None:
    """One declaration is all an event needs: the event log reads it back by its name."""
    import msgspec

    import node_init
    from eventbus import Event
    from handlers.event_log import read_events

    @node_init.registered(node_init.Phase.DOWNLOAD)
    class Throwaway(Event, frozen=True, kw_only=True):
        n: int

    try:
        from pathlib import Path

        path = Path(str(tmp_path)) / "events.jsonl"
        line = {"ts": 0.0, "type": "Throwaway", "pid": 1, "event": {"n": 3}}
        path.write_bytes(msgspec.json.encode(line) + b"\n")
        got = list(read_events(path))
        assert got == [Throwaway(n=3)]
    finally:
        node_init.EVENTS.pop(Throwaway)


def test_the_serve_import_path_users_name_is_above_the_flow() -> None:
    pytest.importorskip("ray.serve.llm")
    import node_init.ray_serve as public

    assert public.EventBusCallback.__module__ == "node_init.ray_serve._callback"
    assert public.OverlappedLLMServer.__module__ == "node_init.ray_serve._server"


#: Private imports across node_init's own packages that are allowed, each with why (none today: what a
#: test server or a subpackage needs of another is exported by that package).
CROSS_PRIVATE_ALLOWED: dict[str, str] = {}


def test_no_node_init_package_imports_another_ones_private_modules() -> None:
    """Inside ``node_init``, a private module (``download._cache``) is imported only from within its own
    package; ``cluster/``, ``testing/``, the flow and the config use ``node_init.download``'s names.
    The package root's own private modules (``node_init._config``) are node_init's, shared by all of it."""
    from tests.test_layers import REPO, imports, module_name, sources

    offenders = []
    for path in sources("node_init"):
        importer = module_name(path)
        for line, target in imports(path):
            parts = target.split(".")
            if parts[0] != "node_init":
                continue
            private = next((i for i, p in enumerate(parts) if i and p.startswith("_")), None)
            if private is None:
                continue
            owner = ".".join(parts[:private])
            if importer == owner or importer.startswith(owner + "."):
                continue
            where = path.relative_to(REPO).as_posix()
            if f"{where} -> {target}" not in CROSS_PRIVATE_ALLOWED:
                offenders.append(f"{where}:{line} -> {target}")
    assert offenders == []
