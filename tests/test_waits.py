"""Every wait of an init is set in ``node_init/_bounds.py``: a number that bounds a wait anywhere else in
``node_init`` fails here (an AST scan; the test servers under ``node_init/testing/`` are exempt).

What the scan reads as a wait's number (a literal other than ``0``, which waits for nothing):
- a keyword argument named for a wait: ``timeout``, ``*_timeout``, ``timeout_s``, ``retries``,
  ``max_retries``, ``max_attempts``, ``backoff*``, ``seconds``, ``*_s`` (``idle_s=600.0``);
- the first argument of ``sleep(...)``, ``wait(...)``, ``join(...)``, ``result(...)``;
- a parameter's default, or an assignment, whose name is a wait's (``idle_s: float = 600.0``,
  ``budget = 2 * timeout``, ``TIMEOUT_S = 30.0``): names ending in ``_s``/``_S`` or holding
  ``timeout``, ``retries``, ``backoff``, ``budget``, ``deadline``;
- ``for ... in range(N)`` around a ``try`` (a retry count).

Polling intervals (a short wait in a loop that re-checks its own bound each turn) and numbers that
are no wait at all are allowed by name in :data:`ALLOWED`, each with why. The config's fields are the
settings every bound derives from: their defaults (``_config.py``'s struct fields) are read by
``Bounds``, not copied, so the scan skips them.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOT = REPO / "node_init"

_WAIT_NAME = re.compile(r"(^|_)(timeout|retries|backoff|budget|deadline)|_s$|^seconds$|max_attempts$", re.I)
_WAIT_CALLS = {"sleep", "wait", "join", "result"}

#: ``path:name`` -> why a number there is allowed. A polling interval re-checks its own bound each turn;
#: the others bound no wait.
ALLOWED: dict[str, str] = {
    "node_init/download/_downloader.py:POLL_S":
        "polling: the watchdog loop wakes this often to re-check cancel, the stall and the deadline",
    "node_init/download/_cache.py:COLLECT_GRACE_S":
        "no wait: a snapshot younger than this is never collected (its engine may be about to hold it)",
    "node_init/overlap.py:OVERLAP_MIN_S":
        "no wait: the estimated download time past which overlap pays (a policy threshold)",
    "node_init/overlap.py:OVERLAP_PROBE_S":
        "a measuring window: auto samples the live download rate this long (when none was measured) "
        "before it decides; the boot's own bound is Bounds.boot_s",
    "node_init/overlap.py:ENGINE_POLL_S":
        "polling: auto looks this often whether the engine could start yet, within the init's bound",
    "node_init/_cli.py:sleep":
        "no bound: `node-init serve` keeps its process alive until interrupted (the sleep is the idle loop)",
    "node_init/_cli.py:timeout_s": "a setting of the config the demo command writes, as a user's file holds it",
    "node_init/_cli.py:ready_timeout_s": "a setting of the config the demo command writes, as a user's file holds it",
    "node_init/download/_s3.py:total_max_attempts":
        "botocore's own retries off (one attempt): the HEAD is retried by with_retries, bounded by Bounds",
}

def _num(node: ast.AST | None) -> bool:
    """``node`` is a number other than 0, or arithmetic on one (``600.0``, ``2 * timeout``, ``x or 30``,
    ``min(10.0, stall)``, ``a if b else 0.02``); a number inside another call (``round(x, 3)``,
    ``bounds.rpc(2 * w)``) or a subscript is that call's business."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int | float) and not isinstance(node.value, bool) and node.value != 0
    if isinstance(node, ast.BinOp):
        return _num(node.left) or _num(node.right)
    if isinstance(node, ast.BoolOp):
        return any(_num(v) for v in node.values)
    if isinstance(node, ast.UnaryOp):
        return _num(node.operand)
    if isinstance(node, ast.IfExp):
        return _num(node.body) or _num(node.orelse)
    if isinstance(node, ast.Call) and _called(node.func) in ("min", "max", "float", "int", "timedelta"):
        return any(_num(a) for a in [*node.args, *(k.value for k in node.keywords)])
    return False


def _name(target: ast.AST) -> str | None:
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute):
        return target.attr
    return None


def _called(func: ast.AST) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def findings(path: Path) -> Iterator[tuple[int, str]]:
    """``(line, name)`` of every number bounding a wait in ``path`` (``name``: what it is given to)."""
    tree = ast.parse(path.read_text())
    config = path == ROOT / "_config.py"
    struct_fields = {id(stmt) for cls in ast.walk(tree) if isinstance(cls, ast.ClassDef)
                     for stmt in cls.body} if config else set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called = _called(node.func)
            for kw in node.keywords:
                if kw.arg and _WAIT_NAME.search(kw.arg) and _num(kw.value):
                    yield node.lineno, kw.arg
            if called in _WAIT_CALLS and node.args and _num(node.args[0]):
                yield node.lineno, called
        elif isinstance(node, ast.Dict):  # botocore's retries={"max_attempts": 4}, obstore's retry_config
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(key.value, str) and _WAIT_NAME.search(key.value) \
                        and _num(value):
                    yield node.lineno, key.value
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
            for arg, default in pairs:
                if _WAIT_NAME.search(arg.arg) and _num(default):
                    yield default.lineno, arg.arg
        elif isinstance(node, ast.Assign | ast.AnnAssign) and id(node) not in struct_fields:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = _name(target)
                if name and _WAIT_NAME.search(name) and _num(node.value):
                    yield node.lineno, name
        elif isinstance(node, ast.For) and isinstance(node.iter, ast.Call) and _called(node.iter.func) == "range" \
                and node.iter.args and _num(node.iter.args[-1]) and any(isinstance(n, ast.Try) for n in node.body):
            yield node.lineno, "range"


def modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py")
                  if p.name != "_bounds.py" and "testing" not in p.relative_to(ROOT).parts)


def offenders() -> list[str]:
    found = []
    for path in modules():
        rel = path.relative_to(REPO).as_posix()
        for line, name in findings(path):
            if f"{rel}:{name}" not in ALLOWED:
                found.append(f"{rel}:{line} {name}")
    return found


def test_every_number_bounding_a_wait_is_in_bounds() -> None:
    assert offenders() == [], "derive it in node_init/_bounds.py (Bounds), or list a polling interval in ALLOWED"


def test_the_scan_fails_on_a_timeout_planted_in_a_source_module(tmp_path: Path) -> None:
    """A copy of the GCS source with ``timeout=30`` given to its listing request is an offender."""
    source = (ROOT / "download" / "_gcs.py").read_text()
    call = "headers=self._headers(), preload_content=True)"  # the listing's request
    assert call in source
    planted = tmp_path / "_gcs.py"
    planted.write_text(source.replace(call, call[:-1] + ", timeout=30)", 1))
    assert list(findings(ROOT / "download" / "_gcs.py")) == []
    assert [name for _, name in findings(planted)] == ["timeout"]


def test_every_allowed_entry_is_still_there() -> None:
    """An allow-list entry whose number has gone is removed (it would hide the next one)."""
    seen = {f"{p.relative_to(REPO).as_posix()}:{name}" for p in modules() for _, name in findings(p)}
    assert sorted(set(ALLOWED) - seen) == []
