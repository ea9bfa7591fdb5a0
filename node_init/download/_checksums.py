"""What the origin says a file's bytes are, and checking bytes against it as they stream in.

A source attaches an :class:`OriginChecksum` to each listed file it can vouch for. CRCs
(``crc32``, ``crc32c``, ``crc64nvme``) combine: each range's CRC is computed as its bytes arrive,
in parallel, and the file's is assembled from them at the end (``awscrt``'s combine functions), with
no second pass. Digests that do not combine (``sha256``, ``sha1``, ``md5``) are fed in order as the
file's completed prefix grows.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from typing import Literal

import msgspec

#: The CRCs an origin may state, with their width in bytes.
CRC_BYTES = {"crc32": 4, "crc32c": 4, "crc64nvme": 8}
#: The digests an origin may state that do not combine (fed in order).
DIGESTS = ("sha256", "sha1", "md5")


class OriginChecksum(msgspec.Struct, frozen=True):
    """A checksum the origin states for a file's content.

    Attributes:
        algorithm: ``crc32``, ``crc32c``, ``crc64nvme``, ``sha256``, ``sha1`` or ``md5``.
        value: As the origin gives it: base64 of the big-endian bytes for S3's additional checksums,
            hex for an MD5 from an ETag.
        scope: ``full`` (the whole object's bytes); per-part (``composite``) values are not checked yet.
    """

    algorithm: str
    value: str
    scope: Literal["full", "composite"] = "full"

    @property
    def is_crc(self) -> bool:
        return self.algorithm in CRC_BYTES

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.value}"


def _crc_fns(algorithm: str) -> tuple[Callable[[bytes | memoryview, int], int], Callable[[int, int, int], int]]:
    from awscrt import checksums

    fns: dict[str, tuple[Callable[[bytes | memoryview, int], int], Callable[[int, int, int], int]]] = {
        "crc32": (checksums.crc32, checksums.combine_crc32),
        "crc32c": (checksums.crc32c, checksums.combine_crc32c),
        "crc64nvme": (checksums.crc64nvme, checksums.combine_crc64nvme),
    }
    return fns[algorithm]


class RangeCrc:
    """A CRC of one range, updated chunk by chunk as the bytes arrive."""

    __slots__ = ("_update", "value")

    def __init__(self, algorithm: str) -> None:
        self._update = _crc_fns(algorithm)[0]
        self.value = 0

    def update(self, chunk: bytes | memoryview) -> None:
        self.value = self._update(chunk, self.value)


def crc(algorithm: str, data: bytes | memoryview) -> int:
    """The CRC of ``data`` in one go."""
    return _crc_fns(algorithm)[0](data, 0)


def combine(algorithm: str, parts: Sequence[tuple[int, int]]) -> int:
    """The CRC of the concatenation, from ``(crc, length)`` of each part in order."""
    join = _crc_fns(algorithm)[1]
    total = 0
    for value, length in parts:
        total = join(total, value, length)
    return total


def encode_crc(algorithm: str, value: int) -> str:
    """S3's form of a CRC: base64 of its big-endian bytes."""
    return base64.b64encode(value.to_bytes(CRC_BYTES[algorithm], "big")).decode()


def new_digest(algorithm: str) -> hashlib._Hash:
    """A hasher for a digest that does not combine."""
    return hashlib.new(algorithm, usedforsecurity=False)


def encode_digest(checksum: OriginChecksum, hasher: hashlib._Hash) -> str:
    """``hasher``'s result in the form ``checksum`` was stated in (hex for an ETag's MD5, else base64)."""
    if checksum.algorithm == "md5" and len(checksum.value) == 32:
        return hasher.hexdigest()
    return base64.b64encode(hasher.digest()).decode()


def file_checksum(path: str, checksum: OriginChecksum, chunk: int = 8 << 20) -> str:
    """``path``'s content in ``checksum``'s algorithm and form (re-reads every byte: ``verify: full``)."""
    with open(path, "rb") as f:
        if checksum.is_crc:
            update, value = _crc_fns(checksum.algorithm)[0], 0
            while block := f.read(chunk):
                value = update(block, value)
            return encode_crc(checksum.algorithm, value)
        hasher = new_digest(checksum.algorithm)
        while block := f.read(chunk):
            hasher.update(block)
        return encode_digest(checksum, hasher)
