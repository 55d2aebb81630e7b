"""Find and close local TCP sockets through the kernel's sock_diag netlink API.

``close_sockets`` does what ``ss -K`` does (SOCK_DESTROY): the kernel aborts
each socket, the owning process's next call fails and the peer gets a reset.
This is the only thing that frees a tgtd connection whose Send-Q is stuck
behind a silent or zero-window initiator: tgtadm's connection delete does
nothing then, and a REJECT rule acts only on the next send, which TCP's
backoff may delay by minutes.

Needs CAP_NET_ADMIN and a kernel with CONFIG_INET_DIAG_DESTROY; without it,
``SocketDestroyUnsupported`` is raised and the caller falls back.
"""
from __future__ import annotations

import _socket
import _struct
import os
import time

from .netaddr import Network, PortSet

NETLINK_SOCK_DIAG = 4
TCPDIAG_GETSOCK = 18                       # the v1 request: no family, both in one dump
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3

TCP_ESTABLISHED = 1
TCP_TIME_WAIT = 6
TCP_CLOSE = 7
TCP_LISTEN = 10
TCP_NEW_SYN_RECV = 12
STATE_NAMES = {1: "ESTABLISHED", 2: "SYN-SENT", 3: "SYN-RECV", 4: "FIN-WAIT-1", 5: "FIN-WAIT-2",
               6: "TIME-WAIT", 7: "CLOSE", 8: "CLOSE-WAIT", 9: "LAST-ACK", 10: "LISTEN",
               11: "CLOSING", 12: "NEW-SYN-RECV"}
# Every state that holds a connection and can be aborted: not LISTEN, not the
# TIME-WAIT/NEW-SYN-RECV mini sockets, not CLOSE.
CONNECTED_STATES = sum(1 << s for s in STATE_NAMES if s not in (TCP_LISTEN, TCP_TIME_WAIT, TCP_CLOSE,
                                                                TCP_NEW_SYN_RECV))

_NLMSGHDR = "=IHHII"                       # len, type, flags, seq, pid
_REQ_V2 = "=BBBxI"                         # family, protocol, ext, pad, states
_REQ_V1_HEAD = "=BBBB"                     # family, src_len, dst_len, ext (then id, states, dbs)
_SOCKID = "!HH16s16s"                      # sport, dport, src, dst (network order)
_SOCKID_TAIL = "=I8s"                      # interface, cookie (host order)
_DIAG_MSG_HEAD = "=BBBB"                   # family, state, timer, retrans
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


class SocketDestroyUnsupported(Exception):
    """The kernel cannot destroy sockets (no CONFIG_INET_DIAG_DESTROY) or we lack the right."""


class TcpSocket:
    __slots__ = ("family", "state", "local", "local_port", "remote", "remote_port",
                 "send_queue", "_sockid")

    def __init__(self, family: int, state: int, local: bytes, local_port: int, remote: bytes,
                 remote_port: int, send_queue: int, sockid: bytes) -> None:
        self.family = family
        self.state = state
        self.local = local
        self.local_port = local_port
        self.remote = remote
        self.remote_port = remote_port
        self.send_queue = send_queue
        self._sockid = sockid

    def _text(self, packed: bytes) -> str:
        af = _socket.AF_INET6 if len(packed) == 16 else _socket.AF_INET
        return _socket.inet_ntop(af, packed)

    @property
    def local_text(self) -> str:
        return f"{self._text(self.local)}:{self.local_port}"

    @property
    def remote_text(self) -> str:
        return f"{self._text(self.remote)}:{self.remote_port}"

    def __str__(self) -> str:
        return (f"{self.local_text} <-> {self.remote_text} {STATE_NAMES.get(self.state, self.state)}"
                f" send-q={self.send_queue}")


def _unmap(packed: bytes) -> bytes:
    """An IPv4-mapped IPv6 address as its IPv4 address; others unchanged."""
    return packed[12:] if packed[:12] == _V4_MAPPED else packed


def _request(family: int, states: int, sockid: bytes) -> bytes:
    return _struct.pack(_REQ_V2, family, _socket.IPPROTO_TCP, 0, states) + sockid


def _netlink_socket():
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    sock.settimeout(5.0)
    return sock


def _messages(data: bytes):
    """(type, payload) for each netlink message in one datagram."""
    offset = 0
    head = _struct.calcsize(_NLMSGHDR)
    while offset + head <= len(data):
        length, msg_type, _flags, _seq, _pid = _struct.unpack_from(_NLMSGHDR, data, offset)
        if length < head:
            break
        yield msg_type, data[offset + head:offset + length]
        offset += (length + 3) & ~3


def _dump(sock, msg_type: int, payload: bytes) -> list[TcpSocket]:
    """Send one dump request, read every socket it answers with."""
    header = _struct.pack(_NLMSGHDR, _struct.calcsize(_NLMSGHDR) + len(payload), msg_type,
                          NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    sock.send(header + payload)
    found = []
    id_len = _struct.calcsize(_SOCKID) + _struct.calcsize(_SOCKID_TAIL)
    while True:
        for reply_type, body in _messages(sock.recv(1 << 16)):
            if reply_type == NLMSG_DONE:
                return found
            if reply_type == NLMSG_ERROR:
                code = -_struct.unpack_from("=i", body)[0]
                raise OSError(code, f"sock_diag dump: {os.strerror(code)}")
            if reply_type != msg_type:
                continue
            fam, state, _timer, _retrans = _struct.unpack_from(_DIAG_MSG_HEAD, body)
            addr_len = 4 if fam == _socket.AF_INET else 16
            sockid = body[4:4 + id_len]
            sport, dport, src, dst = _struct.unpack_from(_SOCKID, sockid)
            _expires, _rqueue, wqueue = _struct.unpack_from("=III", body, 4 + id_len)
            found.append(TcpSocket(fam, state, _unmap(src[:addr_len]), sport, _unmap(dst[:addr_len]),
                                   dport, wqueue, sockid))


_EMPTY_ID = _struct.pack(_SOCKID, 0, 0, b"", b"") + _struct.pack(_SOCKID_TAIL, 0, b"")


def _dump_both_families(sock, states: int) -> list[TcpSocket]:
    """Every TCP socket in ``states``, IPv4 and IPv6, from one walk of the kernel's
    table: the old TCPDIAG_GETSOCK request asks for no family (the kernel's
    inet_diag_dump_compat). A dump per family walks the whole established hash
    twice (262,144 buckets here: ~2 ms a walk, on a failover's path at every
    block, unblock and record)."""
    payload = _struct.pack(_REQ_V1_HEAD, _socket.AF_INET, 0, 0, 0) + _EMPTY_ID + _struct.pack("=II", states, 0)
    return _dump(sock, TCPDIAG_GETSOCK, payload)


def _dump_each_family(sock, states: int) -> list[TcpSocket]:
    """The same, one SOCK_DIAG_BY_FAMILY dump per family (a kernel without the old request)."""
    return [found for family in (_socket.AF_INET, _socket.AF_INET6)
            for found in _dump(sock, SOCK_DIAG_BY_FAMILY, _request(family, states, _EMPTY_ID))]


def list_sockets(network: Network, ports: PortSet, states: int = CONNECTED_STATES,
                 peers: list[Network] | None = None) -> list[TcpSocket]:
    """Local TCP sockets in ``states`` whose local end is in ``network`` and
    ``ports`` (and, given ``peers``, whose remote end is in one of them)."""
    sock = _netlink_socket()
    try:
        try:
            candidates = _dump_both_families(sock, states)
        except OSError as err:
            if err.errno not in (22, 95, 2):    # EINVAL, EOPNOTSUPP, ENOENT: no such request here
                raise
            candidates = _dump_each_family(sock, states)
    finally:
        sock.close()
    return [s for s in candidates
            if ports.contains(s.local_port) and network.contains(s.local)
            and (peers is None or any(peer.contains(s.remote) for peer in peers))]


def _destroy(sock, victim: TcpSocket) -> int:
    """SOCK_DESTROY one socket; returns the kernel's errno (0 = done)."""
    payload = _request(victim.family, 0xFFFFFFFF, victim._sockid)
    header = _struct.pack(_NLMSGHDR, _struct.calcsize(_NLMSGHDR) + len(payload), SOCK_DESTROY,
                          NLM_F_REQUEST | NLM_F_ACK, 2, 0)
    sock.send(header + payload)
    for msg_type, body in _messages(sock.recv(1 << 16)):
        if msg_type == NLMSG_ERROR:
            return -_struct.unpack_from("=i", body)[0]
    return 0


def close_sockets(network: Network, ports: PortSet, deadline: float,
                  peers: list[Network] | None = None) -> tuple[int, list[TcpSocket]]:
    """Abort every connected TCP socket on ``network``/``ports`` until none
    remain or ``deadline`` (monotonic) passes.

    Returns (how many were destroyed, the ones still there at the end).
    Raises SocketDestroyUnsupported when the kernel refuses SOCK_DESTROY.
    """
    destroyed = 0
    while True:
        remaining = list_sockets(network, ports, peers=peers)
        if not remaining or time.monotonic() >= deadline:
            return destroyed, remaining
        for errno in _destroy_each(remaining):
            if errno in (0, 2):  # ENOENT: it closed by itself meanwhile
                destroyed += errno == 0
            elif errno in (1, 13, 95):  # EPERM, EACCES, EOPNOTSUPP
                raise SocketDestroyUnsupported(os.strerror(errno))
        time.sleep(0.005)


def _destroy_each(victims: list[TcpSocket]):
    """SOCK_DESTROY each socket over one netlink socket; yields the kernel's errno for each."""
    sock = _netlink_socket()
    try:
        for victim in victims:
            yield _destroy(sock, victim)
    finally:
        sock.close()


def forget_time_wait(network: Network, ports: PortSet) -> tuple[int, int]:
    """Drop the TIME-WAIT sockets on ``network``/``ports``, one pass; returns
    (dropped, left). A TIME-WAIT socket answers a segment of a newer connection
    with the same addresses with an ACK where a node without it would answer
    with a reset. That newer connection is an initiator's connection to the
    node that held the address meanwhile: while the TIME-WAIT lasts (60 s), the
    initiator is never reset, and waits out its own timeouts. Kernels that
    cannot destroy TIME-WAIT sockets leave them (counted as left)."""
    found = list_sockets(network, ports, states=1 << TCP_TIME_WAIT)
    if not found:
        return 0, 0
    for _ in _destroy_each(found):
        pass                        # what is left is counted below, whatever the errno
    left = len(list_sockets(network, ports, states=1 << TCP_TIME_WAIT))
    return max(0, len(found) - left), left
