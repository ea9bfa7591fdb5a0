"""What a node downloads: the modes of Ray's ``NodeModelDownloadable``, by name."""

from __future__ import annotations

import enum
from typing import Any

#: Load formats that stream weights from storage at load time: nothing to download.
STREAMING_LOAD_FORMATS = frozenset({"runai_streamer", "runai_streamer_sharded", "tensorizer"})


class DownloadMode(enum.StrEnum):
    """Which files of the model a node downloads (the names of Ray's ``NodeModelDownloadable``)."""

    MODEL_AND_TOKENIZER = "MODEL_AND_TOKENIZER"
    TOKENIZER_ONLY = "TOKENIZER_ONLY"
    EXCLUDE_SAFETENSORS = "EXCLUDE_SAFETENSORS"
    NONE = "NONE"

    def wants(self, key: str) -> bool:
        """Whether a file (its path relative to the model root) belongs to this mode's subset."""
        if self is DownloadMode.MODEL_AND_TOKENIZER:
            return True
        if self is DownloadMode.NONE:
            return False
        if self is DownloadMode.EXCLUDE_SAFETENSORS:
            return not key.endswith(".safetensors")
        name = key.rsplit("/", 1)[-1]
        # Same substrings as Ray's tokenizer-only download.
        return any(s in name for s in ("tokenizer", "config.json", "chat_template"))


def coerce_mode(value: Any) -> DownloadMode:
    """A :class:`DownloadMode` from itself, its name (any case) or Ray's enum.

    Raises:
        ValueError: naming the value and the allowed names.
    """
    if isinstance(value, DownloadMode):
        return value
    name = value if isinstance(value, str) else getattr(value, "name", None)
    if isinstance(name, str):
        try:
            return DownloadMode[name.upper()]
        except KeyError:
            pass
    allowed = ", ".join(m.name for m in DownloadMode)
    raise ValueError(f"invalid download mode {value!r}; expected one of {allowed}")
