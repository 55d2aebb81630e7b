"""IP addresses, networks and port lists as the agents' parameters spell them.

Built on the C ``_socket`` module, not ``ipaddress``: that import costs ~7 ms,
and monitors parse their parameters too.
"""
from __future__ import annotations

import _socket


class Network:
    """An IPv4 or IPv6 network with its host bits cleared ("10.0.0.1" is 10.0.0.1/32)."""

    __slots__ = ("family", "packed", "prefixlen")

    def __init__(self, family: int, packed: bytes, prefixlen: int) -> None:
        self.family = family      # 4 or 6
        self.packed = packed      # network address, host bits zero
        self.prefixlen = prefixlen

    @classmethod
    def parse(cls, text: str) -> Network:
        """Parse "ADDR" or "ADDR/PREFIX"; ValueError with a readable message otherwise."""
        address, slash, prefix = text.strip().partition("/")
        family, af = (6, _socket.AF_INET6) if ":" in address else (4, _socket.AF_INET)
        try:
            packed = _socket.inet_pton(af, address)
        except OSError:
            raise ValueError(f"{text!r} is not an IPv{family} address") from None
        bits = len(packed) * 8
        if slash:
            if not prefix.isdigit() or int(prefix) > bits:
                raise ValueError(f"{text!r} has an invalid prefix length (0-{bits})")
            prefixlen = int(prefix)
        else:
            prefixlen = bits
        mask = ((1 << bits) - 1) ^ ((1 << (bits - prefixlen)) - 1)
        network = int.from_bytes(packed, "big") & mask
        return cls(family, network.to_bytes(len(packed), "big"), prefixlen)

    @property
    def address(self) -> str:
        af = _socket.AF_INET6 if self.family == 6 else _socket.AF_INET
        return _socket.inet_ntop(af, self.packed)

    @property
    def is_any(self) -> bool:
        return self.prefixlen == 0

    def contains(self, packed: bytes) -> bool:
        """True if the packed address (same family) lies in this network."""
        if len(packed) != len(self.packed):
            return False
        bits = len(packed) * 8
        shift = bits - self.prefixlen
        return (int.from_bytes(packed, "big") >> shift) == (int.from_bytes(self.packed, "big") >> shift)

    def __str__(self) -> str:
        return f"{self.address}/{self.prefixlen}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Network) and (self.packed, self.prefixlen) == (other.packed, other.prefixlen)

    def __hash__(self) -> int:
        return hash((self.packed, self.prefixlen))


class PortSet:
    """A port list in iptables multiport syntax: "3260", "3260,3262:3270"."""

    __slots__ = ("ranges",)

    # iptables' multiport match takes at most 15 ports, a range counting as two.
    MULTIPORT_SLOTS = 15

    def __init__(self, ranges: tuple[tuple[int, int], ...]) -> None:
        self.ranges = ranges

    @classmethod
    def parse(cls, text: str) -> PortSet:
        ranges = []
        for item in text.replace(" ", "").split(","):
            low, colon, high = item.partition(":")
            if not (low.isascii() and low.isdigit()) or (colon and not (high.isascii() and high.isdigit())):
                raise ValueError(f"{text!r} is not a port list (e.g. 3260 or 3260,3262:3270)")
            first, last = int(low), int(high) if colon else int(low)
            if not (1 <= first <= 65535 and 1 <= last <= 65535) or first > last:
                raise ValueError(f"{text!r}: ports are 1-65535 and ranges run low:high")
            ranges.append((first, last))
        slots = sum(1 if a == b else 2 for a, b in ranges)
        if slots > cls.MULTIPORT_SLOTS:
            raise ValueError(f"{text!r}: at most {cls.MULTIPORT_SLOTS} ports (a range counts as two)")
        return cls(tuple(ranges))

    def contains(self, port: int) -> bool:
        return any(low <= port <= high for low, high in self.ranges)

    def iptables(self) -> str:
        return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in self.ranges)

    def nft(self) -> str:
        return "{ " + ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in self.ranges) + " }"

    def __str__(self) -> str:
        return self.iptables()
