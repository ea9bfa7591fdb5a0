"""The phases of an init, named once."""

from __future__ import annotations

import enum


class Phase(enum.StrEnum):
    """The phases of an init, in order (an error, ``InitFailed`` and the logs name one)."""

    BEFORE_INIT = "before_init"
    PLACEMENT = "placement"
    BEFORE_DOWNLOAD = "before_download"
    DOWNLOAD = "download"
    BEFORE_ENGINE_INIT = "before_engine_init"
    ENGINE = "engine"
    AFTER_INIT = "after_init"
