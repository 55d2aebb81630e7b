"""Interface addresses through rtnetlink: list, add, delete, without a process.

``ip addr`` costs about 8 ms per call on the lab's nodes (a process, its
libraries, its own netlink round trip); a monitor that asks once and a start
that asks, adds and checks again pay that three or four times. The kernel
answers the same questions in well under a millisecond.
"""
from __future__ import annotations

import _socket
import _struct
import os

NETLINK_ROUTE = 0
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLM_F_DUMP = 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST, IFA_FLAGS = 1, 2, 4, 8
IFA_F_NODAD, IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x02, 0x08, 0x40

_NLMSGHDR = "=IHHII"          # len, type, flags, seq, pid
_IFADDRMSG = "=BBBBI"         # family, prefixlen, flags, scope, index
_RTATTR = "=HH"               # len, type


class Address:
    __slots__ = ("family", "packed", "prefixlen", "index", "flags")

    def __init__(self, family: int, packed: bytes, prefixlen: int, index: int, flags: int) -> None:
        self.family = family          # 4 or 6
        self.packed = packed
        self.prefixlen = prefixlen
        self.index = index            # interface index
        self.flags = flags            # IFA_F_*

    @property
    def interface(self) -> str:
        try:
            return _socket.if_indextoname(self.index)
        except OSError:
            return f"#{self.index}"

    @property
    def tentative(self) -> bool:
        return bool(self.flags & IFA_F_TENTATIVE)

    @property
    def dad_failed(self) -> bool:
        return bool(self.flags & IFA_F_DADFAILED)


def _af(family: int) -> int:
    return _socket.AF_INET6 if family == 6 else _socket.AF_INET


def _attr(kind: int, value: bytes) -> bytes:
    length = _struct.calcsize(_RTATTR) + len(value)
    return _struct.pack(_RTATTR, length, kind) + value + b"\0" * ((4 - length % 4) % 4)


def _attrs(data: bytes, offset: int):
    head = _struct.calcsize(_RTATTR)
    while offset + head <= len(data):
        length, kind = _struct.unpack_from(_RTATTR, data, offset)
        if length < head:
            return
        yield kind, data[offset + head:offset + length]
        offset += (length + 3) & ~3


def _talk(msg_type: int, flags: int, payload: bytes, timeout_s: float):
    """Send one request; yield (type, body) of every reply message until done."""
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_DGRAM, NETLINK_ROUTE)
    try:
        sock.settimeout(timeout_s)
        head = _struct.calcsize(_NLMSGHDR)
        sock.send(_struct.pack(_NLMSGHDR, head + len(payload), msg_type, flags, 1, 0) + payload)
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + head <= len(data):
                length, kind, _flags, _seq, _pid = _struct.unpack_from(_NLMSGHDR, data, offset)
                if length < head:
                    return
                body = data[offset + head:offset + length]
                offset += (length + 3) & ~3
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    errno = -_struct.unpack_from("=i", body)[0]
                    if errno:
                        raise OSError(errno, os.strerror(errno))
                    return        # the acknowledgement of a change
                yield kind, body
    finally:
        sock.close()


def addresses(family: int, timeout_s: float = 5.0) -> list[Address]:
    """Every address of ``family`` (4 or 6) on every interface of this network namespace."""
    found = []
    request = _struct.pack(_IFADDRMSG, _af(family), 0, 0, 0, 0)
    for kind, body in _talk(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, request, timeout_s):
        if kind != RTM_NEWADDR:
            continue
        _family, prefixlen, flags, _scope, index = _struct.unpack_from(_IFADDRMSG, body)
        local = address = None
        for attr, value in _attrs(body, _struct.calcsize(_IFADDRMSG)):
            if attr == IFA_LOCAL:
                local = value
            elif attr == IFA_ADDRESS:
                address = value
            elif attr == IFA_FLAGS and len(value) >= 4:
                flags = _struct.unpack_from("=I", value)[0]
        packed = local or address          # IPv4: IFA_LOCAL is the address (IFA_ADDRESS the peer)
        if packed is not None:
            found.append(Address(family, packed, prefixlen, index, flags))
    return found


def _change(msg_type: int, flags: int, family: int, packed: bytes, prefixlen: int, index: int,
            broadcast: bytes | None, address_flags: int, timeout_s: float) -> None:
    request = _struct.pack(_IFADDRMSG, _af(family), prefixlen, address_flags & 0xFF, 0, index)
    request += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
    if broadcast is not None:
        request += _attr(IFA_BROADCAST, broadcast)
    if address_flags:
        request += _attr(IFA_FLAGS, _struct.pack("=I", address_flags))
    for _reply in _talk(msg_type, flags, request, timeout_s):
        pass


def add(family: int, packed: bytes, prefixlen: int, index: int, broadcast: bytes | None = None,
        nodad: bool = False, timeout_s: float = 5.0) -> None:
    """Add the address; OSError (EEXIST if it is there) on failure."""
    _change(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, family, packed, prefixlen,
            index, broadcast, IFA_F_NODAD if nodad else 0, timeout_s)


def delete(family: int, packed: bytes, prefixlen: int, index: int, timeout_s: float = 5.0) -> None:
    _change(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, family, packed, prefixlen, index, None, 0, timeout_s)
