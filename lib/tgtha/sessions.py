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
    from .tgtd import Nexus, Target, TgtdControl

# How long tgt gets to close sessions politely before sockets are destroyed.
POLITE_CLOSE_S = 0.3


def close_sessions(ctl: TgtdControl, target: Target, portals: list[tuple[Network, int]],
                   deadline: float, only: list[Nexus] | None = None) -> None:
    """Close every session of ``target`` (or ``only`` those); return when none (of
    them) is left or at ``deadline``.

    ``portals`` are the (address, port) pairs initiators reach the target at,
    when the agent knows them (iSCSITarget's ``portals``); otherwise tgtd's own
    portals are used, so the port and address family are right (IPv6, a port
    other than 3260). A specific address selects exactly this target's
    connections (each target has its own service IP); a wildcard one selects
    every connection from the target's initiator hosts to that port, in both
    address families, which resets their sessions to other targets too (they
    reconnect).
    """
    closing = target.nexuses if only is None else only
    if not closing:
        return
    sids = {n.sid for n in closing}
    for nexus in closing:
        for connection in nexus.connections:
            ctl.delete_connection(target.tid, nexus.sid, connection.cid)
    current = _wait_for_no_sessions(ctl, target, min(time.monotonic() + POLITE_CLOSE_S, deadline), sids)
    # tgt may stop listing a session whose socket still holds a full send queue
    # (its close waits for it), so the kernel decides what is left, not tgt's list.
    from .netaddr import PortSet
    from .sockdiag import SocketDestroyUnsupported, close_sockets
    sessions = closing + ([n for n in current.nexuses if n.sid in sids] if current is not None else [])
    peers = {peer for n in sessions for c in n.connections if (peer := peer_address(c.address)) is not None}
    if only is not None:
        # A host with a session that stays keeps its sockets: tgt's close must do.
        kept = {peer for n in target.nexuses if n.sid not in sids for c in n.connections
                if (peer := peer_address(c.address)) is not None}
        peers -= kept
        if not peers:
            _wait_for_no_sessions(ctl, target, deadline, sids)
            return
    peers = sorted(peers, key=str)
    # The target's own addresses select exactly its connections; tgtd's portals
    # serve every target, so there only its initiators' connections are taken.
    own = [(portal, port) for portal, port in portals if not _wildcard(portal)]
    shared = [] if own else [(Network.parse(address), port) for address, port in ctl.portals()] \
        or [(Network.parse("0.0.0.0"), 3260)]
    selections = [(portal, port, None) for portal, port in own]
    for portal, port in shared:
        if peers:
            selections += [(Network.parse("0.0.0.0/0" if portal.family == 4 else "::/0"), port, peers)]
            if _wildcard(portal):   # tgt's wildcard listeners take both families
                selections += [(Network.parse("::/0" if portal.family == 4 else "0.0.0.0/0"), port, peers)]
    closed, left = 0, []
    for local, port, only_peers in selections:
        try:
            count, remaining = close_sockets(local, PortSet.parse(str(port)), deadline, peers=only_peers)
        except SocketDestroyUnsupported as err:
            ocf.log_warning(f"cannot destroy connections of {target.iqn}: {err}")
            continue
        closed += count
        left += remaining
    if closed:
        wildcard = "" if own else " (no own portal known: sessions to other targets from those hosts" \
                                  " reconnect too; set portals to the target's address)"
        ocf.log_info(f"{target.iqn}: closed {closed} connection(s) from "
                     f"{', '.join(str(p.address) for p in peers) or 'its initiators'}{wildcard}")
    if left:
        ocf.log_warning(f"{target.iqn}: {len(left)} connection(s) still open: "
                        + ", ".join(str(s) for s in left[:5]))
    _wait_for_no_sessions(ctl, target, deadline, sids)


def _wildcard(portal: Network) -> bool:
    return not portal.packed.strip(b"\0")


def peer_address(address: str) -> Network | None:
    """An initiator's address as tgt shows it (IPv6 possibly bracketed or with a %scope)."""
    text = address.strip().strip("[]").split("%", 1)[0]
    try:
        return Network.parse(text) if text else None
    except ValueError:
        return None


def _wait_for_no_sessions(ctl: TgtdControl, target: Target, until: float, sids: set[int]) -> Target | None:
    """Wait until none of sessions ``sids`` is listed; the target as last read."""
    current: Target | None = target
    while current is not None and any(n.sid in sids for n in current.nexuses) and time.monotonic() < until:
        time.sleep(0.02)
        current = ctl.target_by_iqn(target.iqn)
    return current
