"""iSCSI names (RFC 7143 section 4.2.7) and portal addresses, checked without ``re``."""
from __future__ import annotations

from .netaddr import Network

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-:")
_HEX = frozenset("0123456789abcdef")
MAX_NAME_BYTES = 223


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid iSCSI name, or None if it is."""
    if not name:
        return "it is empty"
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes"
    if name.startswith(("eui.", "naa.")):
        # RFC 3720 writes them with upper-case hex (eui.02004567A425678D); tgt
        # compares names exactly, so the name is kept as written.
        digits = name[4:]
        lengths = (16,) if name.startswith("eui.") else (16, 32)
        if len(digits) not in lengths or not set(digits.lower()) <= _HEX:
            return f"{name[:3]} names are {name[:3]}. followed by " + \
                   " or ".join(str(n) for n in lengths) + " hex digits"
        return None
    if name != name.lower():
        return "iqn. names are lower case (initiators normalise them; tgt compares exactly)"
    if not name.startswith("iqn."):
        return "it must start with iqn., eui. or naa."
    bad = sorted(set(name) - _NAME_CHARS)
    if bad:
        return f"it contains {''.join(bad)!r} (allowed: a-z 0-9 . - :)"
    date, _, rest = name[4:].partition(".")
    if not (len(date) == 7 and date[4] == "-" and date.isascii() and date[:4].isdigit()
            and date[5:].isdigit() and 1 <= int(date[5:]) <= 12):
        return "the date after iqn. must be yyyy-mm"
    authority = rest.partition(":")[0]
    if not authority or authority.startswith(".") or authority.endswith("."):
        return "a reversed domain name must follow the date (iqn.yyyy-mm.com.example[:id])"
    return None


def parse_portal(text: str) -> tuple[Network, int]:
    """``IP:port``, ``[IPv6]:port`` or a bare address (port 3260)."""
    host, port = text, "3260"
    if text.startswith("["):
        host, _, after = text[1:].partition("]")
        if after:
            if not after.startswith(":"):
                raise ValueError(f"{text!r}: expected [address]:port")
            port = after[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: bad port {port!r}")
    network = Network.parse(host)
    if network.prefixlen != (32 if network.family == 4 else 128):
        raise ValueError(f"{text!r}: a portal is one address, not a network")
    return network, int(port)


def sha256_hex(data: bytes) -> str:
    """SHA-256 without importing hashlib (~17 ms, on the monitor path)."""
    try:
        from _sha256 import sha256  # CPython's built-in implementation
    except ImportError:  # pragma: no cover - other builds
        from hashlib import sha256
    return sha256(data).hexdigest()
