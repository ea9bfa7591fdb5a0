"""The tests' own process helpers (``tests/_procs.py``): a stopped tree is gone whole, a held port is named."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import warnings

import pytest

from tests._procs import TREE_VAR, Tree, marked, wait_port_free

# Ignores Ctrl-C and SIGTERM (as its children do: ignored signals are inherited), and starts a
# grandchild in a session of its own that is re-parented once its parent (the subshell) exits.
STUBBORN = "trap '' INT TERM; (setsid sleep 600 &); sleep 600"


def test_a_stubborn_tree_is_escalated_to_sigkill_and_its_orphan_found_by_its_mark() -> None:
    tree = Tree(["sh", "-c", STUBBORN])
    try:
        for _ in range(50):  # the orphan is started a moment after the shell
            if len(marked(TREE_VAR, tree.mark)) == 3:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        members = tree.members()
        assert len(members) == 3, members
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            tree.stop(interrupt_s=0.5, term_s=0.5, kill_s=10)
        assert [re.search(r"sending (SIG\w+)", str(w.message))[1] for w in warned] == ["SIGTERM", "SIGKILL"]  # type: ignore[index]
        assert tree.members() == [] and not any(m.is_running() and m.status() != "zombie" for m in members)
    finally:
        tree.stop(interrupt_s=0, term_s=0, kill_s=10)


def test_a_port_still_held_fails_naming_its_holder() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    listen = (f"import socket,time; s=socket.socket(); s.bind(('127.0.0.1',{port})); s.listen(); "
              "print(1, flush=True); time.sleep(600)")
    tree = Tree([sys.executable, "-c", listen], stdout=subprocess.PIPE, text=True)
    try:
        assert tree.proc.stdout is not None and tree.proc.stdout.readline() == "1\n"
        with pytest.raises(AssertionError) as info:
            wait_port_free(port, bound_s=0.5)
        assert f"port {port}" in str(info.value) and f"pid {tree.proc.pid}" in str(info.value)
        assert "socket.socket()" in str(info.value)  # its command line
    finally:
        tree.stop(port=port)
    wait_port_free(port, bound_s=0)
