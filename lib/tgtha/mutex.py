"""The node-wide firewall mutex.

Every firewall read and write of every tgtha agent on a node happens while
holding ``flock(LOCK_EX)`` on one lock file. The kernel drops an flock when its
holder dies, even by kill -9, so a killed agent never leaves the node locked.

Why not the ``filelock`` package, which does exactly this (its UnixFileLock is
an flock on the file): importing it costs about 28 ms on the reference machine,
more than a whole stock portblock monitor. The lock is the same kernel object,
so a program that takes ``filelock.FileLock(FIREWALL_LOCK)`` excludes us and
we exclude it; a test keeps that true.
"""
from __future__ import annotations

import fcntl
import os
import time

from .ocf_runtime import ERR_GENERIC, OCFError


def state_dir() -> str:
    """Node-local runtime directory of tgtha (under the RA runtime dir)."""
    return os.path.join(os.environ.get("HA_RSCTMP", "/run/resource-agents"), "tgtha")


def firewall_lock_path() -> str:
    return os.path.join(state_dir(), "firewall.lock")


def xtables_lock_path() -> str:
    """iptables-legacy's own lock (libxtables honours XTABLES_LOCKFILE)."""
    return os.environ.get("XTABLES_LOCKFILE", "/run/xtables.lock")


class FileMutex:
    """``with FileMutex(path, deadline):`` holds an exclusive flock on ``path``.

    ``deadline`` is a ``time.monotonic()`` value; waiting past it raises
    OCFError naming the lock and the pid that holds it.
    """

    _POLL_S = 0.005

    def __init__(self, path: str, deadline: float) -> None:
        self.path = path
        self.deadline = deadline
        self._fd = -1

    def __enter__(self) -> FileMutex:
        os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= self.deadline:
                    holder = self._holder(fd)
                    os.close(fd)
                    raise OCFError(ERR_GENERIC, f"timed out waiting for the lock {self.path}"
                                                f" (held by pid {holder})") from None
                time.sleep(self._POLL_S)
        self._fd = fd
        # For the humans reading a timeout message: who holds it.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def __exit__(self, *exc_info) -> None:
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = -1

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            return os.pread(fd, 32, 0).decode().strip() or "unknown"
        except OSError:
            return "unknown"
