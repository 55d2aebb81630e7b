"""Test helpers for tgtd's spinning management connections (see test_tgt_facts.py)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

HALF_LOGIN = """
import socket, sys
header = bytearray(48)
header[0], header[1] = 0x43, 0x87                  # Login Request, immediate, T, CSG 1 -> NSG 3
header[5:8] = (100).to_bytes(3, "big")             # DataSegmentLength: 100 bytes that never come
sock = socket.create_connection((sys.argv[1], 3260), timeout=5)
sock.sendall(bytes(header))
print("sent", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def errno_eagain_in_tgtd(lab):
    """Leave EAGAIN in tgtd's errno, as a tgtd serving initiators has it most of
    the time: a login header announcing data that never comes (tgtd reads the
    header, then finds nothing more to read). tgtd closes every connection at
    accept while it has no target: the test makes one first."""
    initiator = subprocess.Popen(lab.client.exec_argv("/usr/bin/python3", "-c", HALF_LOGIN, lab.TARGET_IP),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert initiator.stdout.readline().strip() == "sent"
        time.sleep(0.3)
        yield
    finally:
        initiator.stdin.close()
        initiator.wait(timeout=10)


def tgtd_sockets(lab) -> int:
    fd_dir = Path(f"/proc/{lab.tgtd.proc.pid}/fd")
    return sum(1 for fd in fd_dir.iterdir() if os.readlink(fd).startswith("socket:"))


def tgtd_cpu_share(lab, seconds: float = 1.0) -> float:
    def ticks() -> int:
        fields = Path(f"/proc/{lab.tgtd.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    before = ticks()
    time.sleep(seconds)
    return (ticks() - before) / os.sysconf("SC_CLK_TCK") / seconds


def connect_and_close(lab, times: int) -> None:
    for _ in range(times):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(f"/var/run/tgtd/socket.{lab.tgtd.control_port}")
        time.sleep(0.02)
