"""The public surface: every public module's __all__ is exactly what it exports."""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

PACKAGES = ["eventbus", "node_init", "handlers"]


def public_modules() -> list[str]:
    names = []
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.append(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                names.append(f"{pkg_name}.{info.name}")
    return names


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
    public = {
        n for n, v in vars(mod).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
        and getattr(v, "__module__", name).split(".")[0] in PACKAGES
        and n not in ("annotations",)
    }
    if name in PACKAGES:  # a package root re-exports exactly its __all__
        assert public == exported, f"{name}: public {sorted(public)} vs __all__ {sorted(exported)}"
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
