"""The source kinds, by name, in the order they are tried: a table, and nothing else.

Each kind is declared in its own module (its URI forms, check, credentials, listing and reads);
the config's check, :func:`~node_init.download.open_source`, the overlap policy, the share
policy and the README's source table all read :data:`SOURCES`.
"""

from __future__ import annotations

from . import _azure, _gcs, _hub, _local, _s3
from ._source import SourceKind

#: Every registered kind, by name, in the order they are tried (``local`` last: it takes plain paths).
SOURCES: dict[str, SourceKind] = {kind.name: kind for kind in (_s3.KIND, _gcs.KIND, _azure.KIND, _hub.KIND,
                                                                _local.KIND)}


def register_source(kind: SourceKind) -> SourceKind:
    """Add a kind (a later one with the same name replaces it)."""
    SOURCES[kind.name] = kind
    return kind
