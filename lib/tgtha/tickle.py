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


def tickle_tcp() -> str:
    return os.path.join(os.environ.get("HA_BIN", "/usr/libexec/heartbeat"), "tickle_tcp")


def checked_tickle_dir(value: str) -> str:
    """``value`` as a tickle_dir parameter: an absolute path to an existing directory
    (6 otherwise, 5 when it is missing on this node)."""
    if not os.path.isabs(value):
        raise ocf.OCFError(ocf.ERR_CONFIGURED, f"tickle_dir={value!r} must be an absolute path")
    if not os.path.isdir(value):
        raise ocf.OCFError(ocf.ERR_INSTALLED, f"tickle_dir {value} does not exist")
    return value


def recorded_connections(tickle_dir: str, address: str) -> bytes:
    """The connections recorded for ``address`` (b"" when there is no record)."""
    try:
        with open(os.path.join(tickle_dir, address), "rb") as record:
            return record.read()
    except OSError:
        return b""


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
