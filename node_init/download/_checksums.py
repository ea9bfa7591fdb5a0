"""What the origin says a file's bytes are, and checking bytes against it as they stream in.

A source attaches an :class:`OriginChecksum` to each listed file it can vouch for. CRCs
(``crc32``, ``crc32c``, ``crc64nvme``) combine: each range's CRC is computed as its bytes arrive,
in parallel, and the file's is assembled from them at the end (``awscrt``'s combine functions), with
no second pass. Digests that do not combine (``sha256``, ``sha1``, ``md5``) are fed in order as the
file's completed prefix grows. A per-part (``composite``) value, as S3 states for multipart
uploads (the multipart ETag, ``<md5 of the parts' MD5s>-N``, and composite CRC/SHA checksums), is
the checksum of the parts' checksums: each part's is taken in order and the file's from them.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Literal

import msgspec

#: The CRCs an origin may state, with their width in bytes.
CRC_BYTES = {"crc32": 4, "crc32c": 4, "crc64nvme": 8}
#: The digests an origin may state that do not combine (fed in order). ``git-sha1`` is git's blob id (the
#: SHA-1 of ``blob <size>\0`` and the bytes), as the Hugging Face Hub states small files.
DIGESTS = ("sha256", "sha1", "md5", "git-sha1")


class OriginChecksum(msgspec.Struct, frozen=True):
    """A checksum the origin states for a file's content.

    Attributes:
        algorithm: ``crc32``, ``crc32c``, ``crc64nvme``, ``sha256``, ``sha1`` or ``md5``.
        value: As the origin gives it: base64 of the big-endian bytes for S3's additional checksums,
            hex for an MD5 from an ETag (``<hex>-N`` for a multipart one).
        scope: ``full`` (the whole object's bytes) or ``composite`` (the checksum of its parts'
            checksums, each part ``part_size`` bytes but the last).
        part_size: The part size of a ``composite`` value (``0`` for ``full``).
    """

    algorithm: str
    value: str
    scope: Literal["full", "composite"] = "full"
    part_size: int = 0

    @property
    def is_crc(self) -> bool:
        """Whether ranges' values combine into the file's (a full-object CRC)."""
        return self.algorithm in CRC_BYTES and self.scope == "full"

    @property
    def checkable(self) -> bool:
        """Whether the bytes can be checked against it (a composite value needs its part size)."""
        return self.scope == "full" or self.part_size > 0

    @property
    def label(self) -> str:
        """How a file checked against it was verified: ``crc64nvme``, ``md5``, ``multipart-md5``,
        ``sha256-composite``, ..."""
        if self.scope == "full":
            return self.algorithm
        return "multipart-md5" if self.algorithm == "md5" else f"{self.algorithm}-composite"

    def matches(self, got: str) -> bool:
        """Whether ``got`` (computed in this checksum's form) is the stated value. A composite value
        may or may not carry its ``-N`` part count (S3 does; moto and some stores do not)."""
        if self.scope == "full":
            return got == self.value
        return got.split("-")[0] == self.value.split("-")[0]

    def __str__(self) -> str:
        if self.scope == "full":
            return f"{self.algorithm}:{self.value}"
        return f"{self.algorithm}*{self.part_size}:{self.value}"

    @classmethod
    def parse(cls, text: str) -> OriginChecksum:
        """The checksum :meth:`__str__` wrote (as the cache's journal records it)."""
        head, _, value = text.partition(":")
        algorithm, star, part = head.partition("*")
        if star:
            return cls(algorithm, value, "composite", int(part))
        return cls(algorithm, value)


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


def _raw(algorithm: str) -> Callable[[], _Raw]:
    if algorithm in CRC_BYTES:
        return lambda: _CrcRaw(algorithm)
    return lambda: _HashRaw("sha1" if algorithm == "git-sha1" else algorithm)


class _Raw:
    def update(self, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def digest(self) -> bytes:
        raise NotImplementedError


class _HashRaw(_Raw):
    def __init__(self, algorithm: str) -> None:
        self._h = new_digest(algorithm)

    def update(self, data: bytes | memoryview) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest()


class _CrcRaw(_Raw):
    def __init__(self, algorithm: str) -> None:
        self._algorithm, self._crc = algorithm, RangeCrc(algorithm)

    def update(self, data: bytes | memoryview) -> None:
        self._crc.update(data)

    def digest(self) -> bytes:
        return self._crc.value.to_bytes(CRC_BYTES[self._algorithm], "big")


class InOrder:
    """A checksum fed the file's bytes in order, in ``checksum``'s algorithm and form: a whole-object
    digest, or a composite one (each part's checksum in turn, then the checksum of them all)."""

    def __init__(self, checksum: OriginChecksum, size: int = 0) -> None:
        self._checksum = checksum
        self._new = _raw(checksum.algorithm)
        self._part = checksum.part_size if checksum.scope == "composite" else 0
        self._current = self._new()
        if checksum.algorithm == "git-sha1":  # git hashes a header with the size before the bytes
            self._current.update(b"blob %d\0" % size)
        self._in_part = 0
        self._parts: list[bytes] = []

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while self._part and len(view) >= self._part - self._in_part:  # a part ends within this chunk
            cut = self._part - self._in_part
            self._current.update(view[:cut])
            self._parts.append(self._current.digest())
            self._current, self._in_part, view = self._new(), 0, view[cut:]
        if view:
            self._current.update(view)
            self._in_part += len(view)

    def result(self) -> str:
        """The value in the form the origin stated it (hex for an ETag's MD5, else base64)."""
        if self._part:
            parts = self._parts + ([self._current.digest()] if self._in_part or not self._parts else [])
            whole = self._new()
            for p in parts:
                whole.update(p)
            raw, suffix = whole.digest(), f"-{len(parts)}"
        else:
            raw, suffix = self._current.digest(), ""
        # Stated in hex (an ETag's MD5, the Hub's SHA-256 and git ids): hex; else base64 (S3, GCS, Azure).
        stated = self._checksum.value.split("-")[0]
        hexed = len(stated) == 2 * len(raw) and all(c in "0123456789abcdef" for c in stated.lower())
        return (raw.hex() if hexed else base64.b64encode(raw).decode()) + suffix


def file_checksum(path: str, checksum: OriginChecksum, chunk: int = 8 << 20) -> str:
    """``path``'s content in ``checksum``'s algorithm and form (re-reads every byte: ``verify: full``)."""
    with open(path, "rb") as f:
        if checksum.is_crc:
            update, value = _crc_fns(checksum.algorithm)[0], 0
            while block := f.read(chunk):
                value = update(block, value)
            return encode_crc(checksum.algorithm, value)
        hasher = InOrder(checksum, os.fstat(f.fileno()).st_size)
        while block := f.read(chunk):
            hasher.update(block)
        return hasher.result()
