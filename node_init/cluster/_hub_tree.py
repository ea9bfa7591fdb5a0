"""A pinned Hub commit's tree, listed once on the replica and read by every node from Ray's internal KV.

The Hub rate-limits its API, and many nodes must not each list the same commit. ``download/`` holds no
Ray: it lists (:func:`~node_init.download.hub_tree`) and is handed the tree (``for_engine``).
"""

from __future__ import annotations

import json
from typing import Any

import structlog

from .._errors import describe
from ..download import parse_hub_uri

_log = structlog.get_logger("node_init.node")
_KV_NAMESPACE = "node_init"


def _key(uri: str) -> str:
    repo, commit = parse_hub_uri(uri)
    return f"hub-tree/{repo}@{commit}"


def _ray_up() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return bool(ray.is_initialized())


def share_tree(uri: str, tree: list[dict[str, Any]]) -> None:
    """Put the tree of a pinned ``hf://org/name@<commit>`` where the nodes read it (best effort: a node
    that finds none lists the Hub itself)."""
    if not _ray_up():
        return
    try:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(_key(uri), json.dumps(tree).encode(), overwrite=True, namespace=_KV_NAMESPACE)
    except Exception as exc:
        _log.warning("cannot share the Hub tree with the nodes", source=uri, error=describe(exc))


def shared_tree(uri: str) -> list[dict[str, Any]] | None:
    """The tree the replica shared for a pinned ``hf://`` source, if Ray runs and it did."""
    if not uri.startswith("hf://") or "@" not in uri or not _ray_up():
        return None
    try:
        from ray.experimental import internal_kv

        raw = internal_kv._internal_kv_get(_key(uri), namespace=_KV_NAMESPACE)
    except Exception:  # its KV is unreachable: the node lists the Hub
        return None
    return list(json.loads(raw)) if raw else None
