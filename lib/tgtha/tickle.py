"""Tickle ACKs: tell a failed-over service's clients that their connection is gone.

portblock's unblock (with ``tickle_dir``) records the established connections
of an address in ``<tickle_dir>/<address>`` (one "local<TAB>remote" line each),
on the shared storage. When the address comes up on another node, an ACK with a
wrong sequence number sent to each client ("tickle", resource-agents'
``tickle_tcp``) makes the client answer with its own ACK; the new node, which
has no such connection, answers that with a reset, and the client reconnects at
once instead of waiting for its next retransmission (seconds away after a
power-off: TCP doubles the wait each time).

A client answers at most one such ACK per ``tcp_invalid_ratelimit`` (500 ms)
per connection, and before the gratuitous ARP reaches it, its answer goes to
the old node's MAC address: so the tickles are sent again a little later.
"""
from __future__ import annotations

import os

from . import ocf_runtime as ocf

TICKLE_AGAIN_AFTER_S = 0.6
# How long an action waits for its record to be written: a tickle_dir on shared
# storage that hangs (an NFS server away, a frozen filesystem) must not hold a
# stop or a monitor past its timeout; the record is worth less than the node.
RECORD_WRITE_WAIT_S = 2.0
# A read is on a start's path (the failover's): a hung record costs it this much at most.
RECORD_READ_WAIT_S = 1.0


def tickle_tcp() -> str:
    return os.path.join(os.environ.get("HA_BIN", "/usr/libexec/heartbeat"), "tickle_tcp")


def checked_tickle_dir(value: str) -> str:
    """``value`` as a tickle_dir parameter: an absolute path to an existing directory
    (6 otherwise, 5 when it is missing on this node). One that does not answer
    (hung storage) is taken as it is, with a warning: tickles are worth less than
    the start."""
    from .proc import run_bounded
    if not os.path.isabs(value):
        raise ocf.OCFError(ocf.ERR_CONFIGURED, f"tickle_dir={value!r} must be an absolute path")
    try:
        result = run_bounded(["/usr/bin/test", "-d", value], RECORD_READ_WAIT_S)
    except OSError as err:
        ocf.log_warning(f"cannot check tickle_dir {value}: {err}")
        return value
    if result is None:
        ocf.log_warning(f"tickle_dir {value} does not answer within {RECORD_READ_WAIT_S:.0f} s: going on without it")
    elif result[0] != 0:
        raise ocf.OCFError(ocf.ERR_INSTALLED, f"tickle_dir {value} does not exist")
    return value


def recorded_connections(tickle_dir: str, address: str) -> bytes:
    """The connections recorded for ``address`` (b"" when there is no record, or it
    cannot be read within RECORD_READ_WAIT_S)."""
    from .proc import run_bounded
    path = os.path.join(tickle_dir, address)
    try:
        result = run_bounded(["/bin/cat", path], RECORD_READ_WAIT_S)
    except OSError as err:
        ocf.log_warning(f"cannot read {path}: {err}")
        return b""
    if result is None:
        ocf.log_warning(f"reading {path} did not finish in {RECORD_READ_WAIT_S:.0f} s: no tickles")
        return b""
    return result[1] if result[0] == 0 else b""


def tickle_now(data: bytes, deadline: float) -> bool:
    """Send the tickles and wait for tickle_tcp; False (with a warning) when it could not."""
    from .proc import run
    try:
        result = run([tickle_tcp(), "-n", "3"], deadline, stdin=data)
    except ocf.OCFError as err:
        ocf.log_warning(f"tickle: {err.reason}")
        return False
    if not result.ok:
        ocf.log_warning(f"tickle_tcp failed: {result.err.strip()}")
        return False
    return True


def tickle_later(data: bytes, delays_s: tuple[float, ...] = (TICKLE_AGAIN_AFTER_S,)) -> None:
    """Send the tickles after each delay (seconds from now) from one detached
    process: the action does not wait for them."""
    script, slept = [], 0.0
    for delay in delays_s:
        # Each tickle_tcp reads the list from its start: the memfd (fd 4) opened anew.
        script.append(f"sleep {max(0.0, delay - slept):.2f}; \"$0\" -n 3 </proc/self/fd/4")
        slept = delay
    try:
        # memfd, not tempfile: importing tempfile (shutil, re, random ...)
        # cost more than the rest of a start on the failover's path.
        with open(os.memfd_create("tickles"), "w+b") as copy, open(os.devnull, "wb") as null:
            copy.write(data)
            copy.flush()
            os.posix_spawn("/bin/sh", ["sh", "-c", "; ".join(script), tickle_tcp()],
                           dict(os.environ, LC_ALL="C"), setsid=True, file_actions=[
                               (os.POSIX_SPAWN_DUP2, copy.fileno(), 4),
                               (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                               (os.POSIX_SPAWN_DUP2, null.fileno(), 1),
                               (os.POSIX_SPAWN_DUP2, null.fileno(), 2)])
    except OSError as err:
        ocf.log_warning(f"tickle: cannot tickle again: {err}")


def write_record(tickle_dir: str, address: str, text: str, durable: bool, wait_s: float) -> str | None:
    """Replace the record of ``address`` with ``text``; None when done, else why not.

    A child process writes it (``durable``: synced to disk first), waited for at
    most ``wait_s`` (``proc.run_bounded``).
    """
    from .proc import run_bounded
    final = os.path.join(tickle_dir, address)
    temporary = f"{final}.{os.getpid()}.new"    # a monitor and a delayed record may write at once
    script = f'dd of="$1" status=none{" conv=fsync" if durable else ""} && mv -f "$1" "$2"'
    try:
        result = run_bounded(["/bin/sh", "-c", script, "sh", temporary, final], wait_s, stdin=text.encode())
    except OSError as err:
        return f"cannot write {final}: {err}"
    if result is None:
        return f"writing {final} did not finish in {wait_s:.1f} s (the filesystem hangs?); left to finish"
    return None if result[0] == 0 else f"cannot write {final} (rc {result[0]})"
