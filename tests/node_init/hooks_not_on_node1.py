"""A handler module that imports in the replica but not on node1 (a missing dependency there)."""

import os

from eventbus import HandlerSet

if os.environ.get("NODE_NAME") == "node1":
    raise ImportError("libfoo is not installed on node1")

handlers = HandlerSet()
