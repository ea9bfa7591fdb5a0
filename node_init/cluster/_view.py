"""What peers and holders share: a view of the origin that reads some ranges from other nodes.

:class:`SourceView` is the one base of :class:`~node_init.cluster.SharedSource` (an init's peers)
and :class:`~node_init.cluster.HolderSource` (nodes that hold the files from earlier inits). It
keeps what a view must answer for: the origin it stands in front of, which node sent which bytes
(a CRC32C of each range received), and the nodes whose bytes proved wrong. A file whose bytes
failed the origin's checksum is read again through :meth:`SourceView.from_origin`: the origin's
bytes of each range a node had sent are checked against what it sent, so the node that sent wrong
bytes is named even when it also vouched for them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import structlog

from ..download import RangeCrc, RemoteFile, Source, crc

_log = structlog.get_logger("node_init.share")

#: The CRC a piece or range carries between nodes (hardware-assisted: GB/s on one core).
PIECE_SUM = "crc32c"


def piece_sum(data: bytes | memoryview) -> int:
    """The checksum a piece travels with (:data:`PIECE_SUM`)."""
    return crc(PIECE_SUM, data)


class SourceView:
    """A :class:`~node_init.download.Source` in front of ``origin`` that reads some ranges from other nodes.

    Args:
        origin: The model's source.
    """

    def __init__(self, origin: Source) -> None:
        self.origin = origin
        self.uri = origin.uri
        self.in_place = origin.in_place
        self.local = False  # some ranges come from other nodes: latency-bound, whatever the origin
        #: Nodes whose bytes differed from their owner's checksum or the origin's, and how many ranges.
        self.bad_nodes: dict[str, int] = {}
        self._received: dict[tuple[str, str], dict[tuple[int, int], tuple[str, int]]] = {}
        self._view_lock = threading.Lock()

    def list_files(self) -> list[RemoteFile]:
        return self.origin.list_files()

    def from_origin(self) -> Source:
        """Where a file is read again after its bytes failed the origin's checksum: the origin itself
        (never a view that may hand back the same bytes), checking what other nodes had sent of it."""
        return _Recheck(self)

    def received(self, file: RemoteFile, lo: int, data: bytes | memoryview, node: str,
                 checksum: int | None = None) -> None:
        """``node`` sent ``data`` as bytes ``[lo, lo + len(data))`` of ``file`` (and they were used);
        ``checksum``: its :func:`piece_sum`, if the caller has it already."""
        value = piece_sum(data) if checksum is None else checksum
        with self._view_lock:
            self._received.setdefault((file.key, file.etag), {})[(lo, lo + len(data))] = (node, value)

    def blame(self, node: str, file: RemoteFile, offset: int, why: str) -> None:
        """``node`` sent wrong bytes of ``file`` at ``offset``: say so, and count it."""
        with self._view_lock:
            self.bad_nodes[node] = self.bad_nodes.get(node, 0) + 1
        _log.warning("a node sent bytes that differ from the origin's: reading them from the origin",
                     bad_node=node, file=file.key, offset=offset, why=why)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.origin!r})"


class _Recheck:
    """The origin, read after a checksum mismatch, checking the ranges other nodes had sent."""

    def __init__(self, view: SourceView) -> None:
        self._view = view
        self.uri = view.origin.uri
        self.in_place = view.origin.in_place
        self.local = view.origin.local

    def list_files(self) -> list[RemoteFile]:
        return self._view.origin.list_files()

    def stream(self, file: RemoteFile, start: int, end: int) -> Iterator[bytes | memoryview]:
        with self._view._view_lock:
            sent = {r: v for r, v in self._view._received.get((file.key, file.etag), {}).items()
                    if start <= r[0] and r[1] <= end}
        sums = {r: RangeCrc(PIECE_SUM) for r in sent}
        pos = start
        for chunk in self._view.origin.stream(file, start, end):
            after = pos + len(chunk)
            for (lo, hi), rc in sums.items():
                if lo < after and pos < hi:
                    rc.update(memoryview(chunk)[max(lo, pos) - pos:min(hi, after) - pos])
            yield chunk
            pos = after
        for r, (node, value) in sent.items():
            if r[1] <= pos and sums[r].value != value:
                self._view.blame(node, file, r[0], "the origin's bytes differ from what it sent")
