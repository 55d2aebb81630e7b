"""A minimal iSCSI initiator that only tries to log in without credentials.

The question a prober asks is "does this target let me past the security
stage without authenticating?" libiscsi's tools answer it too, but a process
per attempt limits a loop to a few dozen attempts a second; one login PDU
over a socket answers it in well under a millisecond (RFC 7143, 11.12-11.13).
"""
from __future__ import annotations

import os
import socket
import struct

GOT_IN = "got-in"               # security stage passed without credentials
AUTH_REFUSED = "auth-refused"    # status 0x0201: authentication failure
NOT_FOUND = "not-found"          # 0x0203 (no such target, or ACL says no)
TARGET_ERROR = "target-error"    # class 3 (e.g. the target is offline)
OTHER_REFUSAL = "other-refusal"
NO_CONNECTION = "no-connection"  # refused, reset, timed out, closed early

INITIATOR_NAME = "iqn.2026-11.org.tgtha:prober"


def _text(**keys: str) -> bytes:
    data = b"".join(f"{k}={v}".encode() + b"\0" for k, v in keys.items())
    return data + b"\0" * (-len(data) % 4)


def login_request(target_iqn: str, itt: int) -> bytes:
    data = _text(InitiatorName=INITIATOR_NAME, SessionType="Normal",
                 TargetName=target_iqn, AuthMethod="None")
    isid = b"\x80" + os.urandom(5)  # random-qualifier ISID format
    header = struct.pack(
        ">BBBBB3s6sHIHHII16x",
        0x43,                 # immediate | Login Request
        0x80 | (0 << 2) | 1,  # Transit, CSG=security, NSG=operational
        0, 0,                 # version max/min
        0, len(data).to_bytes(3, "big"),  # no AHS; data segment length
        isid, 0, itt, 0, 0, 0, 0)
    return header + data


def recv_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def try_login(address: str, target_iqn: str, port: int = 3260, timeout: float = 2.0) -> str:
    """Offer AuthMethod=None to ``target_iqn``; classify the answer."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect((address, port))
            sock.sendall(login_request(target_iqn, itt=1))
            header = recv_exact(sock, 48)
    except OSError:
        return NO_CONNECTION
    if header[0] & 0x3F != 0x23:
        return OTHER_REFUSAL
    transit = bool(header[1] & 0x80)
    status_class, status_detail = header[36], header[37]
    if status_class == 0:
        # With no account bound, tgt moves on past the security stage at once.
        return GOT_IN if transit else OTHER_REFUSAL
    if status_class == 2 and status_detail == 1:
        return AUTH_REFUSED
    if status_class == 2 and status_detail == 3:
        return NOT_FOUND
    if status_class == 3:
        return TARGET_ERROR
    return OTHER_REFUSAL


def probe_until(address: str, iqns: list[str], stop_file: str, out_file: str) -> None:
    """Try every target in turn, as fast as possible, until ``stop_file`` exists;
    write the outcome counts (and the first successes) to ``out_file`` as JSON."""
    import json
    counts: dict[str, int] = {}
    got_in: list[str] = []
    with open(out_file + ".ready", "w"):
        pass
    while not os.path.exists(stop_file):
        for iqn in iqns:
            outcome = try_login(address, iqn, timeout=1.0)
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome == GOT_IN and len(got_in) < 20:
                got_in.append(iqn)
    with open(out_file, "w") as out:
        json.dump({"counts": counts, "got_in": got_in}, out)


if __name__ == "__main__":
    import sys
    # iscsi_login.py ADDRESS STOP_FILE OUT_FILE IQN...
    probe_until(sys.argv[1], sys.argv[4:], sys.argv[2], sys.argv[3])
