"""Engine boot. ``kind: vllm`` arrives with the engine layer; ``none`` runs node init alone."""

from __future__ import annotations

from typing import Any

from ._config import NodeInitConfig
from ._errors import EngineError


async def boot_engine(config: NodeInitConfig, model_path: str, kwargs: dict[str, Any]) -> Any:
    """Boot the configured engine on ``model_path``."""
    raise EngineError(f"engine kind {config.engine.kind!r} is not available in this build")
