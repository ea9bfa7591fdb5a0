"""The exchange's vocabulary: its version and actor names, what a range and a piece are, and the
answers its calls give (:class:`Answer`). docs/exchange.md describes every message.

Sent to Ray by value with the actors, whose processes start without importing ``node_init``: the
actors' modules import the standard library, and numbers from ``_bounds`` (which travel as values).
"""

from __future__ import annotations

import enum

#: A range: (key, version tag, start, end).
Unit = tuple[str, str, int, int]
#: A piece of a range: (range, index).
Piece = tuple[Unit, int]
#: An init on the hub and the agents: (its id, the piece size, how long it may go without a call).
InitKey = tuple[str, int, float]
#: Ranges smaller than this come from the source on every node (the object store's overhead wins).
MIN_SHARED_BYTES = 256 * 1024
#: The exchange's protocol version: a library that changes the calls names a new hub rather than talk
#: to an old one (which a new hub removes once it is idle). 7: answers are :class:`Answer` members.
PROTOCOL = 7
#: The hub actor's name and namespace (``ray list actors`` shows it): the prefix and the protocol.
EXCHANGE_PREFIX = "node-init-exchange-"
#: Each node's agent: this prefix, the protocol, ``-`` and the node's id.
AGENT_PREFIX = "node-init-agent-"
EXCHANGE_NAME = f"{EXCHANGE_PREFIX}{PROTOCOL}"
EXCHANGE_NAMESPACE = "node_init"


class Answer(enum.StrEnum):
    """What an exchange call answers, besides data (a run of offers, a node's id) and ``None`` (use
    the source). A ``str`` enum: a member compares equal to its value in any process, whichever copy
    of this class (sent by value) made it."""

    #: The offer is recorded; the peers that need the piece may take it.
    OK = "ok"
    #: The offering node does not own the range (its provisional view was wrong): it offers no more of it.
    REFUSED = "refused"
    #: The owner held ``share_memory_mb`` for its peers for longer than a silence: the rest of the range is skipped.
    FULL = "full"
    #: In an ``offer_all``: a later piece of a range whose earlier piece was not accepted (not recorded).
    STOPPED = "stopped"
    #: The asking node owns the range now (a takeover, or a rehome): it reads it from the source and offers it.
    OWN = "own"
    #: The asking node was assigned the range (its provisional view differed): it reads it itself.
    YOURS = "yours"
    #: Take the piece again (another node took the range over, or it was offered again since).
    RETRY = "retry"


def piece_size(part: int) -> int:
    """Owners offer a range in pieces of this size as they arrive (a quarter of the downloader's
    range, 4 MiB by default), so peers pull a range while it still downloads."""
    return max(MIN_SHARED_BYTES, part // 4)


def pieces_of(unit: Unit, piece: int) -> int:
    """How many pieces ``unit`` is offered in."""
    return max(1, -(-(unit[3] - unit[2]) // piece))


def piece_bytes(unit: Unit, index: int, piece: int) -> int:
    """The size of piece ``index`` of ``unit`` (the last one may be short)."""
    return min(piece, unit[3] - unit[2] - index * piece)
