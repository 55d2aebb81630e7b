"""lib/tgtha/sockdiag.py against the running kernel, in a network namespace.

One dump request for both address families (the old TCPDIAG_GETSOCK) is what
every block, unblock and record uses; the per-family SOCK_DIAG_BY_FAMILY dumps
are its fallback on a kernel without it. Both must see the same sockets: IPv4,
IPv6, and IPv4 clients of an IPv6 listener (v4-mapped, as a dual-stack service
has them).
"""
from __future__ import annotations

import sys

from conftest import REPO, needs_root

pytestmark = needs_root

SOCKETS_SEEN = f"""
import socket, sys
sys.path.insert(0, {str(REPO / "lib")!r})
from tgtha import sockdiag
from tgtha.netaddr import Network, PortSet

def listen(family, address, port):
    s = socket.socket(family)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((address, port))
    s.listen()
    return s

kept = []
v4, v6 = listen(socket.AF_INET, "127.0.0.1", 3260), listen(socket.AF_INET6, "::", 3261)
for listener, address, port in ((v4, "127.0.0.1", 3260), (v6, "::1", 3261), (v6, "127.0.0.1", 3261)):
    kept.append(socket.create_connection((address, port)))
    kept.append(listener.accept()[0])

def seen(dump):
    sock = sockdiag._netlink_socket()
    try:
        return sorted((s.family, s.local_text, s.remote_text) for s in dump(sock, sockdiag.CONNECTED_STATES))
    finally:
        sock.close()

both, each = seen(sockdiag._dump_both_families), seen(sockdiag._dump_each_family)
print(len(both), both == each)
ours = sockdiag.list_sockets(Network.parse("127.0.0.1"), PortSet.parse("3261"))
print(sorted(s.remote_text.rsplit(":", 1)[0] for s in ours))
"""


def test_one_dump_for_both_families_sees_what_a_dump_per_family_sees(netns):
    netns.run("ip", "link", "set", "lo", "up")
    out = netns.run(sys.executable, "-c", SOCKETS_SEEN).stdout.split("\n")
    # 3 connections, both ends of each: 6 sockets, the same in both requests.
    assert out[0] == "6 True", out
    # The v4-mapped server side of the IPv4 client on the dual-stack port counts as 127.0.0.1.
    assert out[1] == "['127.0.0.1']", out
