"""Ready-made subscribers for node init, named by import path in config.

Each module exposes a ``handlers`` ``HandlerSet`` (e.g. ``handlers.timing:handlers``).
Note: a module of your own named ``handlers`` would shadow this package on Ray workers.
"""

__all__: list[str] = []
