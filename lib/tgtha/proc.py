"""Run a command and collect its output, cheaply.

The ``subprocess`` module costs about 19 ms to import on the reference
machine; agents run a handful of short commands per action, so this module
uses ``os.posix_spawn`` and ``select.poll`` (both built in) instead.
"""
from __future__ import annotations

import os
import select
import sys
import time

from .ocf_runtime import ERR_GENERIC, ERR_INSTALLED, OCFError


class Result:
    __slots__ = ("argv", "rc", "out", "err")

    def __init__(self, argv: list[str], rc: int, out: str, err: str) -> None:
        self.argv = argv
        self.rc = rc
        self.out = out
        self.err = err

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def __repr__(self) -> str:
        return f"Result({self.argv!r}, rc={self.rc})"


def find_binary(name: str) -> str | None:
    """Absolute path of ``name`` on PATH (plus the sbin dirs pcs leaves out)."""
    if "/" in name:
        return name if os.access(name, os.X_OK) else None
    path = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    for directory in path.split(":") + ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def run(argv: list[str], deadline: float, stdin: bytes = b"") -> Result:
    """Run ``argv`` to completion (killed at ``deadline``, a monotonic time).

    A missing program is OCFError(ERR_INSTALLED); a timeout is
    OCFError(ERR_GENERIC). A non-zero exit is returned, not raised.
    """
    program = find_binary(argv[0])
    if program is None:
        raise OCFError(ERR_INSTALLED, f"{argv[0]} not found")
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    env = dict(os.environ, LC_ALL="C")
    try:
        pid = os.posix_spawn(program, argv, env, file_actions=[
            (os.POSIX_SPAWN_DUP2, in_r, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
        ])
    finally:
        os.close(in_r)
        os.close(out_w)
        os.close(err_w)
    if stdin:
        os.write(in_w, stdin)  # small inputs only: fits in the pipe buffer
    os.close(in_w)
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    poller = select.poll()
    poller.register(out_r, select.POLLIN)
    poller.register(err_r, select.POLLIN)
    open_fds = 2
    try:
        while open_fds:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise OCFError(ERR_GENERIC, f"{argv[0]} {argv[1] if len(argv) > 1 else ''}"
                                            " did not finish in time")
            for fd, _event in poller.poll(left_ms):
                data = os.read(fd, 65536)
                if data:
                    chunks[fd].append(data)
                else:
                    poller.unregister(fd)
                    open_fds -= 1
    finally:
        os.close(out_r)
        os.close(err_r)
    _, status = os.waitpid(pid, 0)
    return Result(argv, os.waitstatus_to_exitcode(status),
                  b"".join(chunks[out_r]).decode(errors="replace"),
                  b"".join(chunks[err_r]).decode(errors="replace"))


def spawn_detached(argv: list[str], fds: dict[int, int]) -> int:
    """Start ``argv`` in a session of its own, outliving the action, holding exactly
    ``fds`` (its descriptor number -> ours) of what we hold: pacemaker-execd waits
    for the end of the pipes it gave the agent, so none may live on in it."""
    for fd in map(int, os.listdir("/proc/self/fd")):
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass
    return os.posix_spawn(argv[0], argv, dict(os.environ), setsid=True, setsigmask=(),
                          file_actions=[(os.POSIX_SPAWN_DUP2, ours, theirs) for theirs, ours in fds.items()])


def python_call(module: str, function: str) -> list[str]:
    """The argv that runs ``function()`` of ``module`` (of this package) in an
    interpreter of its own, started as the agents are (-I -S), from wherever the
    package is installed; the caller appends the arguments it reads from sys.argv."""
    lib_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"import sys; sys.path.insert(0, {lib_dir!r}); from {module} import {function}; {function}()"
    return [sys.executable, "-IS", "-c", code]


def run_bounded(argv: list[str], wait_s: float, stdin: bytes = b"") -> tuple[int, bytes] | None:
    """Run ``argv`` (an absolute path) on ``stdin``: (its exit code, its output), or
    None when it has not ended within ``wait_s``.

    For commands on storage that may hang (a shared filesystem whose server is
    away): a process asleep uninterruptibly can be neither killed nor waited for,
    so it is left, in a session of its own and holding none of our pipes, to end
    when its storage answers. Its output goes to a memfd, not a pipe, for that.
    """
    with open(os.memfd_create("stdin"), "w+b") as given, open(os.memfd_create("stdout"), "w+b") as out, \
            open(os.devnull, "wb") as null:
        given.write(stdin)
        given.flush()
        given.seek(0)
        pid = spawn_detached(argv, {0: given.fileno(), 1: out.fileno(), 2: null.fileno()})
        pidfd = os.pidfd_open(pid)
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            if not poller.poll(max(0, int(wait_s * 1000))):
                return None
        finally:
            os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        return os.waitstatus_to_exitcode(status), out.read()


def split_words(value: str) -> list[str]:
    """``value`` split as a shell would (shlex.split; ValueError if unparsable).
    Plain words skip shlex: importing it (with re and enum) cost more CPU than
    the rest of a tgtd start, and for printable ASCII without quotes or
    backslashes the two splits are the same."""
    if value.isascii() and value.isprintable() and not any(c in value for c in "'\"\\"):
        return value.split()
    import shlex
    return shlex.split(value)
