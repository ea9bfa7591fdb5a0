"""Each extra declares what its code imports: every third-party module the packages import belongs to a
core dependency or to an extra, and that module's own imports are satisfied by what the extra (with the
core dependencies and everything they require) installs. ``google.auth.transport.requests`` under a
``[gcp]`` extra of only ``google-auth`` fails here: ``requests`` is no requirement of google-auth.

Read from the installed venv's metadata and the modules' source (nothing imported but to locate them).
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.test_layers import REPO, imports, sources

PACKAGES = ("eventbus", "node_init", "handlers")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def project() -> tuple[frozenset[str], dict[str, frozenset[str]]]:
    """``(core requirements, {extra: its requirements})`` as PEP 508 strings; an extra naming the
    project's own extra (``ray-serve-llm-callback[serve-llm]``) holds that extra's requirements."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    me = _norm(data["name"])
    declared: dict[str, list[str]] = data["optional-dependencies"]

    def expand(reqs: list[str]) -> set[str]:
        out: set[str] = set()
        for text in reqs:
            req = Requirement(text)
            out |= {r for e in req.extras for r in expand(declared[e])} if _norm(req.name) == me else {text}
        return out

    return frozenset(data["dependencies"]), {name: frozenset(expand(reqs)) for name, reqs in declared.items()}


def names(requirements: frozenset[str]) -> set[str]:
    return {_norm(Requirement(r).name) for r in requirements}


@cache
def closure(requirements: frozenset[str]) -> frozenset[str]:
    """The distributions ``requirements`` install (PEP 508 strings: ``ray[serve]==2.60.0``), with every
    requirement of theirs, their requested extras' included (installed distributions only)."""
    seen: set[tuple[str, str]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        for extra in ["", *sorted(req.extras)]:
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            try:
                requires = md.requires(name) or []
            except md.PackageNotFoundError:
                continue
            for text in requires:
                inner = Requirement(text)
                if inner.marker is None or inner.marker.evaluate({"extra": extra}):
                    todo.append(inner)
    return frozenset(name for name, _ in seen)


@cache
def _files(dist: str) -> dict[str, md.PackagePath]:
    """A distribution's files, by their path relative to site-packages."""
    return {str(f): f for f in md.distribution(dist).files or []}


@cache
def _top_levels() -> dict[str, list[str]]:
    return md.packages_distributions()


@cache
def locate(module: str) -> tuple[str, Path] | None:
    """``(distribution, source file)`` of an installed third-party module, found in the distributions'
    file lists (nothing is imported); ``None`` for ours, the stdlib, or a name that is no module."""
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in PACKAGES or top == "tests":
        return None
    base = module.replace(".", "/")
    for name in _top_levels().get(top, []):
        files = _files(name)
        for rel in (f"{base}.py", f"{base}/__init__.py"):
            if rel in files:
                return _norm(name), Path(str(files[rel].locate()))
    return None


def distribution(module: str) -> str | None:
    found = locate(module)
    return found[0] if found else None


def module_file(module: str) -> Path | None:
    found = locate(module)
    return found[1] if found else None


def top_level_imports(path: Path) -> set[str]:
    """The modules ``path`` needs when it is imported: its module-level imports, and those under a ``try``
    whose ``except`` raises (google-auth's urllib3 transport: ``packaging`` or an ImportError); an import
    under a ``try`` that goes on without it (``certifi = None``) is optional."""
    found: set[str] = set()
    body = list(ast.parse(path.read_text()).body)
    while body:
        node = body.pop()
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Try) and any(isinstance(n, ast.Raise) for h in node.handlers for n in ast.walk(h)):
            body.extend(node.body)
    return found


def third_party_imports() -> dict[str, list[str]]:
    """``{module: [where our code imports it]}`` for every installed third-party module our packages import."""
    found: dict[str, list[str]] = {}
    for path in sources(*PACKAGES):
        if "testing" in path.relative_to(REPO).parts:  # the test servers: the [test] extra's
            continue
        for line, module in imports(path):
            if distribution(module) is not None and module_file(module) is not None:
                found.setdefault(module, []).append(f"{path.relative_to(REPO)}:{line}")
    return found


def installs(dist: str) -> list[frozenset[str]]:
    """The ways to get ``dist`` the project declares: the core requirements if they install it, else
    each extra that names it (directly: an extra that only pulls it in by chance does not declare it),
    and, for a core distribution's optional parts (``obstore.auth.boto3``), the core with any extra."""
    core, extras = project()
    if dist in closure(core):
        return [core, *(core | deps for deps in extras.values())]
    return [core | deps for deps in extras.values() if dist in names(deps)]


def test_every_third_party_module_is_declared_and_its_imports_come_with_its_extra() -> None:
    problems = []
    for module, where in sorted(third_party_imports().items()):
        dist = distribution(module)
        path = module_file(module)
        assert dist is not None and path is not None
        ways = installs(dist)
        if not ways:
            problems.append(f"{module} ({dist}), imported at {where[0]}: no extra declares {dist}")
            continue
        needed = {d for d in (distribution(m) for m in top_level_imports(path)) if d is not None}
        if not any(needed <= closure(way) for way in ways):
            best = min(ways, key=lambda way: len(needed - closure(way)))
            problems.append(f"{module} ({dist}), imported at {where[0]}, needs {sorted(needed - closure(best))}: "
                            "installed by no extra that declares it")
    assert problems == [], "\n".join(problems)


def test_the_gcp_extra_needs_no_requests() -> None:
    """google-auth's own calls go over urllib3 (a core dependency): ``requests`` is never imported for gs://."""
    gcs = REPO / "node_init" / "download" / "_gcs.py"
    assert not [m for _, m in imports(gcs) if m.split(".")[0] == "requests" or m.endswith("transport.requests")]


@pytest.mark.parametrize("module", ["google.auth.transport.requests"])
def test_the_check_sees_a_transport_the_extra_does_not_bring(module: str) -> None:
    core, extras = project()
    path = module_file(module)
    if path is None:
        pytest.skip(f"{module} is not installed here")
    needed = {distribution(m) for m in top_level_imports(path)} - {None}
    assert "requests" in needed and "requests" not in closure(core | extras["gcp"])
    urllib3_transport = module_file("google.auth.transport.urllib3")
    assert urllib3_transport is not None and "packaging" in {distribution(m) for m in
                                                             top_level_imports(urllib3_transport)}
    assert installs("google-auth") == [core | extras["gcp"]]  # the one extra that declares it
