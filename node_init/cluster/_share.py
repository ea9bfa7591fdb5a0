"""Fetch once per cluster: disjoint shares from the source, the rest from peers through Ray's object store.

The replica opens one :class:`~node_init.cluster.Exchange` per init, on the cluster's long-lived
:class:`~node_init.cluster.ExchangeHub` actor, while placement runs.
Each node task joins it after its ``BeforeDownload`` (vetoes and modes respected) with the ranges it
still has to fetch; once every node has joined (or is gone), each range that two or more nodes need
goes to one of them, balancing bytes. A node does not wait for that: it starts on its provisional
share (the assignment if every node needs what it needs) and claims it when it joins. It reads its
own share from the source first (:class:`SharedSource` wraps the source for the downloader) and
offers each range to its peers in pieces (:func:`~node_init.cluster._exchange.piece_size`) as they
arrive, with ``ray.put``: the bytes stay in its node's object store, and peers pull them through
Ray's object manager while the range still downloads. It takes the rest from the owners' offers.
Whatever a peer cannot supply (its owner died, did not offer it within the memory bound, or took
too long) comes from the source: the same pinned version through the same verified writes, only
more origin bytes. The unit of assignment is the downloader's own range (``part_size_mb``, a small
file whole), so every byte still goes through one ``Downloader`` and one cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import structlog

from .._bounds import Bounds
from .._config import NodeInitConfig
from ..download import RemoteFile, shares
from ._handles import InitExchange, close_exchange, start_exchange
from ._protocol import MIN_SHARED_BYTES, Unit

_log = structlog.get_logger("node_init.share")

#: Bytes handed to the downloader at a time from a peer's range (progress moves at this grain).
SLICE = 256 * 1024


def unit_at(file: RemoteFile, offset: int, part: int) -> Unit:
    """The downloader's range of ``file`` that holds ``offset`` (the whole file when it is one range)."""
    if file.size <= part:
        return (file.key, file.etag, 0, file.size)
    lo = offset - offset % part
    return (file.key, file.etag, lo, min(lo + part, file.size))


def units_of(files: list[RemoteFile], part: int) -> list[Unit]:
    """Every shareable range of ``files`` (what the downloader would read, minus the small ones)."""
    out: list[Unit] = []
    for f in files:
        for lo in range(0, f.size, part) if f.size > part else [0]:
            unit = unit_at(f, lo, part)
            if unit[3] - unit[2] >= MIN_SHARED_BYTES:
                out.append(unit)
    return out


def share_enabled(config: NodeInitConfig) -> bool:
    """Whether ``download.share`` applies to this source (sharing within an init, holders across inits)."""
    return shares(config.model_source, config.download.share)  # the source registry says which kinds share


def sharing(config: NodeInitConfig, nodes: list[str]) -> bool:
    """Whether an init on ``nodes`` runs an exchange (``download.share``, two or more nodes)."""
    return len(nodes) >= 2 and share_enabled(config)



@contextlib.contextmanager
def open_exchange(config: NodeInitConfig, *, wanted: bool) -> Iterator[InitExchange | None]:
    """The one place an init's exchange lives: opened on the cluster's hub if ``wanted`` (else
    ``None``), closed when the block ends, however it ends."""
    bounds = Bounds.of(config)
    exchange = start_exchange(config.download.part_size_mb, bounds.exchange_idle_s, bounds.hub_idle_s,
                              bounds.actor_call_s) if wanted else None
    try:
        yield exchange
    finally:
        try:
            close_exchange(exchange)
        except Exception as exc:  # the hub is gone: it dropped the state with it (each agent at its bound)
            _log.info("exchange not closed", error=type(exc).__name__)

