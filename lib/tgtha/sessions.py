"""Closing a tgt target's sessions, even the ones tgt itself cannot close.

tgt's own "delete connection" waits for the connection's send queue to drain,
which never happens behind a silent initiator (zero window, dead link). So
after asking tgt politely for a short while, the remaining TCP connections are
aborted in the kernel (SOCK_DESTROY), which tgt notices at once.
"""
from __future__ import annotations

import time

from . import ocf_runtime as ocf
from .netaddr import Network

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .tgtd import Target, TgtdControl

# How long tgt gets to close sessions politely before sockets are destroyed.
POLITE_CLOSE_S = 0.3


def close_sessions(ctl: TgtdControl, target: Target, portals: list[tuple[Network, int]],
                   deadline: float) -> None:
    """Close every session of ``target``; return when none is left or at ``deadline``.

    ``portals`` are the (address, port) pairs initiators reach the target at.
    A specific address selects exactly this target's connections (each target
    has its own service IP); a wildcard one selects every connection from the
    target's initiator hosts to that port, which resets their sessions to
    other targets too (they reconnect).
    """
    if not target.nexuses:
        return
    for nexus in target.nexuses:
        for connection in nexus.connections:
            ctl.delete_connection(target.tid, nexus.sid, connection.cid)
    current = _wait_for_no_sessions(ctl, target, min(time.monotonic() + POLITE_CLOSE_S, deadline))
    if current is None or not current.nexuses:
        return
    from .netaddr import PortSet
    from .sockdiag import SocketDestroyUnsupported, close_sockets
    peers = [Network.parse(c.address) for n in current.nexuses for c in n.connections if c.address]
    for portal, port in portals or [(Network.parse("0.0.0.0"), 3260)]:
        specific = portal.packed.strip(b"\0") != b""
        local = portal if specific else Network.parse("::/0" if portal.family == 6 else "0.0.0.0/0")
        try:
            close_sockets(local, PortSet.parse(str(port)), deadline, peers=None if specific else peers)
        except SocketDestroyUnsupported as err:
            ocf.log_warning(f"cannot destroy connections of {target.iqn}: {err}")
        if not specific and peers:
            ocf.log_info(f"closed every connection from {', '.join(sorted({str(p) for p in peers}))} "
                         f"to port {port}: with a wildcard portal, sessions to other targets "
                         "from those hosts reconnect too (set portals to the target's address)")
    _wait_for_no_sessions(ctl, target, deadline)


def _wait_for_no_sessions(ctl: TgtdControl, target: Target, until: float) -> Target | None:
    current: Target | None = target
    while current is not None and current.nexuses and time.monotonic() < until:
        time.sleep(0.02)
        current = ctl.target_by_iqn(target.iqn)
    return current
