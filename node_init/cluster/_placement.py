"""Which placement group node init uses, and which nodes it spans."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.to_thread

from .._bounds import Bounds
from .._config import NodeInitConfig
from .._ctx import CallbackCtx
from .._errors import PhaseError
from .._phases import Phase


async def _ready(pg: Any, timeout: float, what: str) -> None:
    with anyio.move_on_after(timeout) as scope:
        await pg.ready()
    if scope.cancelled_caught:
        raise PhaseError(
            f"{what} placement group not ready within {timeout}s "
            f"(bundles {pg.bundle_specs}; is the cluster big enough?)",
            phase=Phase.PLACEMENT,
        )


async def resolve_placement_group(ctx: CallbackCtx, config: NodeInitConfig) -> tuple[Any, bool]:
    """``(placement group or None, created_by_us)``.

    A handler's ``ctx.placement_group`` wins; else, inside a Serve replica (or
    any task in a group), the current one, never a second; else one from
    ``config.placement``, ready within ``ready_timeout_s``; ``placement: null``
    means none (the replica's own node only).
    """
    import ray.util

    timeout = Bounds.of(config).placement_s
    if ctx.placement_group is not None:
        await _ready(ctx.placement_group, timeout, "the handler's")
        return ctx.placement_group, False
    current = ray.util.get_current_placement_group()
    if current is not None:
        ctx.placement_group = current
        return current, False
    if config.placement is None:
        return None, False
    pg = ray.util.placement_group(
        [dict(b) for b in config.placement.bundles], strategy=config.placement.strategy,
        name=f"node-init-{config.model_id}"[:100],
    )
    try:
        await _ready(pg, timeout, "the configured")
    except BaseException:
        with anyio.CancelScope(shield=True):
            await remove_placement_group(pg)
        raise
    ctx.placement_group = pg
    return pg, True


def may_span_nodes(ctx: CallbackCtx, config: NodeInitConfig) -> bool:
    """Whether the group :func:`resolve_placement_group` will use could span two or more nodes."""
    import ray.util

    pg = ctx.placement_group or ray.util.get_current_placement_group()
    if pg is not None:
        return len(pg.bundle_specs) >= 2
    if config.placement is None:
        return False
    return len(config.placement.bundles) >= 2 and config.placement.strategy != "STRICT_PACK"


async def placement_nodes(pg: Any) -> list[str]:
    """Distinct node ids of a ready placement group, in bundle order."""
    import ray.util

    # A GCS round trip: off the event loop.
    table = await anyio.to_thread.run_sync(ray.util.placement_group_table, pg)
    ordered = [table["bundles_to_node_id"][i] for i in sorted(table["bundles_to_node_id"])]
    return list(dict.fromkeys(ordered))


async def remove_placement_group(pg: Any) -> None:
    """Remove a placement group, off the event loop (a GCS round trip)."""
    import ray.util

    await anyio.to_thread.run_sync(ray.util.remove_placement_group, pg)
