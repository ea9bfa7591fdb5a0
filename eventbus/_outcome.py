"""The result of one publish."""

from __future__ import annotations

import attrs

from ._errors import HandlerError


@attrs.frozen(slots=True)
class Outcome:
    """What happened when an event was published.

    Attributes:
        vetoed_by: ``module.qualname`` of each handler that returned ``False``,
            in dispatch order.
        errors: Errors of handlers subscribed with ``on_error="log"``.
    """

    vetoed_by: tuple[str, ...] = ()
    errors: tuple[HandlerError, ...] = ()

    @property
    def vetoed(self) -> bool:
        """Whether any handler returned ``False``."""
        return bool(self.vetoed_by)

    @property
    def ok(self) -> bool:
        """Whether no handler vetoed and none failed."""
        return not self.vetoed_by and not self.errors


#: Shared "nothing happened" outcome: the common path allocates nothing.
NOTHING = Outcome()
