"""Processes and ports a test started, let go of within a bound, or a failure naming what still holds them.

A test never assumes that a process it stopped has already let go of a port, a file or a Ray session.
It starts the command as a :class:`Tree` (a session and process group of its own, and a mark in the
environment every process it starts inherits, which survives re-parenting: the Ray a ``serve run``
starts outlives it for a while), stops it by waiting for every process of the tree to end, escalating
SIGINT (what a terminal's Ctrl-C sends) to SIGTERM to SIGKILL, and then waits for its port to be free.
When a bound strikes, the failure names the pid, command line and port still held.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import psutil

#: Set in the environment of every process a :class:`Tree` starts (children inherit it).
TREE_VAR = "NODE_INIT_TEST_TREE"
#: Set by ``tests/conftest.py`` for the whole session: every process the suite starts carries it.
SESSION_VAR = "NODE_INIT_TEST_SESSION"
#: This session's value of it (made once per process: this module is imported once, unlike a conftest).
SESSION_MARK = f"{os.getpid()}-{uuid.uuid4().hex}"

# Bounds, in seconds. By hand, ``serve run`` with a Ray of its own ends 8 s after Ctrl-C: 60 s leaves a
# loaded 2-core machine room. A signalled process that ignores SIGTERM for 20 s is killed; a killed one
# is gone within a second unless the kernel is stuck (10 s). A port is free as soon as its last holder
# ended; 30 s covers a holder that only now noticed its parent's end (a Ray worker's raylet check).
INTERRUPT_S = 60.0
TERM_S = 20.0
KILL_S = 10.0
PORT_S = 30.0
_POLL_S = 0.2

#: Ports the suite's servers listened on (8000 for Serve and each store server's), for the session's end.
opened_ports: set[int] = {8000}


def describe(proc: psutil.Process) -> str:
    """``pid N (command line)``, for a failure message."""
    try:
        cmd = " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        cmd = "?"
    return f"pid {proc.pid} ({cmd[:300]})"


def alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a zombie holds no port, file or lock: only its exit status)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def marked(var: str, value: str) -> list[psutil.Process]:
    """Every live process (of this user: others' environments are unreadable) whose environment sets
    ``var`` to ``value``, this process excepted."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(var) == value and alive(proc):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def descendants(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """``procs`` and every live descendant of them."""
    found: dict[int, psutil.Process] = {}
    for proc in procs:
        try:
            for p in [proc, *proc.children(recursive=True)]:
                if alive(p):
                    found[p.pid] = p
        except psutil.Error:
            continue
    return list(found.values())


def holders(port: int) -> list[tuple[int | None, str]]:
    """What listens on TCP ``port`` of this machine: (pid, ``pid N (command line) on ADDRESS``); the pid is
    ``None`` where the holder is another user's (or the table is refused: then a connect tells)."""
    held: list[tuple[int | None, str]] = []
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.Error:  # some systems refuse the whole table; fall back to a connect below
        conns = []
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            where = f"{conn.laddr.ip}:{port}"
            try:
                held.append((conn.pid, f"{describe(psutil.Process(conn.pid))} on {where}") if conn.pid
                            else (None, f"a process on {where}"))
            except psutil.Error:  # it ended meanwhile
                continue
    if not held:
        with socket.socket() as s:
            s.settimeout(2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                held.append((None, f"an unknown process on 127.0.0.1:{port}"))
    return held


def listeners(port: int) -> list[str]:
    """What listens on TCP ``port`` of this machine, each as ``pid N (command line) on ADDRESS``."""
    return [what for _, what in holders(port)]


def wait_port_free(port: int, bound_s: float = PORT_S) -> None:
    """Return once nothing listens on ``port``; past ``bound_s``, fail naming what still does."""
    deadline = time.monotonic() + bound_s
    while held := listeners(port):
        if time.monotonic() > deadline:
            raise AssertionError(f"port {port} still taken {bound_s:g}s on: " + "; ".join(held))
        time.sleep(_POLL_S)


def wait_gone(procs: Iterable[psutil.Process], bound_s: float) -> list[psutil.Process]:
    """Wait up to ``bound_s`` for ``procs`` (and any descendant they start meanwhile) to end; what is
    still alive then."""
    deadline = time.monotonic() + bound_s
    left = descendants(procs)
    while left and time.monotonic() < deadline:
        time.sleep(_POLL_S)
        left = descendants(left)
    return left


class Tree:
    """A command in a session (and so a process group) of its own, with every process it starts.

    Args:
        argv: The command.
        env: Its environment (default: this process's); the tree's mark is added.
        **popen: Further :class:`subprocess.Popen` arguments (``cwd``, ``stdout``, ...).
    """

    def __init__(self, argv: list[str], *, env: Mapping[str, str] | None = None, **popen: Any) -> None:
        self.mark = uuid.uuid4().hex
        self.proc = subprocess.Popen(argv, env={**(os.environ if env is None else env), TREE_VAR: self.mark},
                                     start_new_session=True, **popen)
        self._root = psutil.Process(self.proc.pid)
        self._seen: dict[int, psutil.Process] = {self.proc.pid: self._root}

    def members(self) -> list[psutil.Process]:
        """Every live process of the tree: the command, its process group, their descendants, and every
        process carrying the tree's mark (re-parented ones included)."""
        self.proc.poll()  # reap the command once it ends, so it does not linger as a zombie
        found = {p.pid: p for p in self._seen.values() if alive(p)}
        for proc in psutil.process_iter():
            try:
                if os.getpgid(proc.pid) == self.proc.pid or proc.environ().get(TREE_VAR) == self.mark:
                    found.setdefault(proc.pid, proc)
            except (psutil.Error, OSError):
                continue
        live = descendants(found.values())
        self._seen.update((p.pid, p) for p in live)
        return live

    def stop(self, *, interrupt_s: float = INTERRUPT_S, term_s: float = TERM_S, kill_s: float = KILL_S,
             port: int | None = None) -> None:
        """Ctrl-C the tree's process group, wait for every process of the tree to end; past a bound, SIGTERM
        then SIGKILL the group and every process left; then wait for ``port`` (if given) to be free.

        Raises:
            AssertionError: Processes of the tree outlived SIGKILL, or ``port`` stayed taken, naming them.
        """
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        left = self._wait(interrupt_s)
        for sig, bound in ((signal.SIGTERM, term_s), (signal.SIGKILL, kill_s)):
            if not left:
                break
            warnings.warn(f"{len(left)} process(es) of {self.proc.args!r} still running; sending "
                          f"{sig.name}: " + "; ".join(describe(p) for p in left), stacklevel=2)
            for target in [self.proc.pid, *(p.pid for p in left)]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    (os.killpg if target == self.proc.pid else os.kill)(target, sig)
            left = self._wait(bound)
        if left:
            raise AssertionError(f"still running {kill_s:g}s after SIGKILL: " + "; ".join(describe(p) for p in left))
        self.proc.wait(kill_s)
        if port is not None:
            wait_port_free(port)

    def _wait(self, bound_s: float) -> list[psutil.Process]:
        deadline = time.monotonic() + bound_s
        while (left := self.members()) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        return left

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run(argv: list[str], *, timeout: float, env: Mapping[str, str] | None = None,
        **popen: Any) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(argv, capture_output=True, text=True, timeout=timeout)`` as a :class:`Tree`: when
    it returns (or its bound strikes, raising ``subprocess.TimeoutExpired``), every process the command
    started has ended too, not only the command."""
    tree = Tree(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    try:
        out, err = tree.proc.communicate(timeout=timeout)
    finally:
        tree.stop()
    return subprocess.CompletedProcess(argv, tree.proc.returncode, out, err)
