"""Just enough of an iSCSI initiator to send one SCSI command: MODE SENSE, MODE SELECT, or INQUIRY for a VPD page.

libiscsi's command-line tools print INQUIRY and VPD pages but no mode
pages, and this kernel has no iSCSI initiator to run sg_modes against. The
caching mode page is what tells an initiator whether the LUN's write cache
is on (WCE), so the tests read it with this (RFC 7143 login to the full
feature phase without authentication, one SCSI Command, its Data-In).
"""
from __future__ import annotations

import os
import socket
import struct

from iscsi_login import recv_exact

INITIATOR_NAME = "iqn.2026-11.org.tgtha:scsi-probe"


def _keys(**keys: str) -> bytes:
    data = b"".join(f"{k}={v}".encode() + b"\0" for k, v in keys.items())
    return data


def _pdu(header: bytes, data: bytes = b"") -> bytes:
    return header + data + b"\0" * (-len(data) % 4)


def _recv_pdu(sock: socket.socket) -> tuple[bytes, bytes]:
    header = recv_exact(sock, 48)
    length = int.from_bytes(header[5:8], "big")
    data = recv_exact(sock, length + (-length % 4))[:length]
    return header, data


class Session:
    def __init__(self, address: str, target_iqn: str, port: int = 3260, timeout: float = 10) -> None:
        self.sock = socket.create_connection((address, port), timeout=timeout)
        self.isid = b"\x80" + os.urandom(5)
        self.cmdsn, self.statsn, self.itt = 1, 0, 1
        tsih = self._login_stage(0, 1, 0, _keys(InitiatorName=INITIATOR_NAME, SessionType="Normal",
                                                 TargetName=target_iqn, AuthMethod="None"))
        self._login_stage(1, 3, tsih, _keys(HeaderDigest="None", DataDigest="None",
                                            MaxRecvDataSegmentLength="65536", InitialR2T="Yes",
                                            ImmediateData="No"))

    def _login_stage(self, csg: int, nsg: int, tsih: int, keys: bytes) -> int:
        header = struct.pack(">BBBBB3s6sHIHHII16x", 0x43, 0x80 | (csg << 2) | nsg, 0, 0, 0,
                             len(keys).to_bytes(3, "big"), self.isid, tsih, self.itt, 0, 0,
                             self.cmdsn, self.statsn + 1 if self.statsn else 0)
        self.sock.sendall(_pdu(header, keys))
        answer, _ = _recv_pdu(self.sock)
        self.itt += 1
        if answer[36] != 0:
            raise ConnectionError(f"login refused: status {answer[36]:#x}/{answer[37]:#x}")
        self.statsn = int.from_bytes(answer[24:28], "big")
        return int.from_bytes(answer[14:16], "big")

    def command(self, lun: int, cdb: bytes, expected_length: int) -> bytes:
        lun_field = struct.pack(">BB6x", 0, lun) if lun < 256 else struct.pack(">H6x", 0x4000 | lun)
        header = struct.pack(">BBHB3s8sIIII16s", 0x01, 0xC1, 0, 0, b"\0\0\0", lun_field, self.itt,
                             expected_length, self.cmdsn, self.statsn + 1, cdb.ljust(16, b"\0"))
        self.sock.sendall(header)
        self.cmdsn += 1
        self.itt += 1
        data = b""
        while True:
            answer, segment = _recv_pdu(self.sock)
            opcode = answer[0] & 0x3F
            if opcode == 0x25:  # Data-In
                data += segment
                if answer[1] & 0x01:  # S: carries the status
                    self.statsn = int.from_bytes(answer[24:28], "big")
                    if answer[3] != 0:
                        raise IOError(f"SCSI status {answer[3]:#x}")
                    return data
            elif opcode == 0x21:  # SCSI Response
                self.statsn = int.from_bytes(answer[24:28], "big")
                if answer[3] != 0:
                    raise IOError(f"SCSI status {answer[3]:#x}")
                return data
            # anything else (NOP-In, async message): ignore

    def write_command(self, lun: int, cdb: bytes, out: bytes) -> None:
        """A command with data to the target (no immediate data: wait for its R2T)."""
        lun_field = struct.pack(">BB6x", 0, lun) if lun < 256 else struct.pack(">H6x", 0x4000 | lun)
        itt = self.itt
        header = struct.pack(">BBHB3s8sIIII16s", 0x01, 0xA1, 0, 0, b"\0\0\0", lun_field, itt,
                             len(out), self.cmdsn, self.statsn + 1, cdb.ljust(16, b"\0"))
        self.sock.sendall(header)
        self.cmdsn += 1
        self.itt += 1
        while True:
            answer, _ = _recv_pdu(self.sock)
            opcode = answer[0] & 0x3F
            if opcode == 0x31:  # R2T: send what it asks for, as one final Data-Out
                ttt, offset, length = (int.from_bytes(answer[20:24], "big"), int.from_bytes(answer[40:44], "big"),
                                       int.from_bytes(answer[44:48], "big"))
                chunk = out[offset:offset + length]
                data_out = struct.pack(">BBHB3s8sIIIIIIII", 0x05, 0x80, 0, 0, len(chunk).to_bytes(3, "big"),
                                       lun_field, itt, ttt, 0, self.statsn + 1, 0, 0, offset, 0)
                self.sock.sendall(_pdu(data_out, chunk))
            elif opcode == 0x21:  # SCSI Response
                self.statsn = int.from_bytes(answer[24:28], "big")
                if answer[3] != 0:
                    raise IOError(f"SCSI status {answer[3]:#x}")
                return

    def close(self) -> None:
        self.sock.close()


def asked_again(session: Session, lun: int, cdb: bytes, length: int) -> bytes:
    """A command, asked again after the UNIT ATTENTION (power on/reset) that a new I_T nexus gets first."""
    for attempt in range(3):
        try:
            return session.command(lun, cdb, length)
        except IOError:
            if attempt == 2:
                raise
    return b""


def caching_page(session: Session, lun: int) -> bytes:
    """MODE SENSE(6), caching page (0x08), current values: the page with its 2-byte header."""
    data = asked_again(session, lun, bytes([0x1A, 0x08, 0x08, 0, 0xFF, 0]), 0xFF)
    block_descriptors = data[3]
    page = data[4 + block_descriptors:]
    if page[0] & 0x3F != 0x08:
        raise IOError(f"expected the caching page, got page {page[0] & 0x3F:#x}")
    return page[:2 + page[1]]


def write_cache_enabled(address: str, target_iqn: str, lun: int) -> bool:
    """The WCE bit of the caching page."""
    session = Session(address, target_iqn)
    try:
        return bool(caching_page(session, lun)[2] & 0x04)
    finally:
        session.close()


def set_write_cache(address: str, target_iqn: str, lun: int, enabled: bool) -> str:
    """MODE SELECT(6) of the caching page with WCE changed, as an initiator
    (sdparm --set WCE) does: "accepted" or "refused"."""
    session = Session(address, target_iqn)
    try:
        page = bytearray(caching_page(session, lun))
        page[0] &= 0x3F                                  # PS bit must be zero in MODE SELECT
        page[2] = (page[2] | 0x04) if enabled else (page[2] & ~0x04)
        parameters = bytes([0, 0, 0, 0]) + bytes(page)   # header without block descriptors
        try:
            session.write_command(lun, bytes([0x15, 0x10, 0, 0, len(parameters), 0]), parameters)
        except IOError:
            return "refused"
        return "accepted"
    finally:
        session.close()


def vpd_page(address: str, target_iqn: str, lun: int, page: int) -> bytes:
    """INQUIRY with EVPD: the raw page (libiscsi's iscsi-inq cuts binary designators at a zero byte)."""
    session = Session(address, target_iqn)
    try:
        return asked_again(session, lun, bytes([0x12, 0x01, page, 0x00, 0xFF, 0]), 0xFF)
    finally:
        session.close()


def naa_designators(page83: bytes) -> dict[int, int]:
    """NAA type -> the designator's value with the type nibble cleared (VPD 0x83 as read)."""
    found, offset = {}, 4
    end = 4 + int.from_bytes(page83[2:4], "big")
    while offset + 4 <= min(end, len(page83)):
        kind, length = page83[offset + 1] & 0x0F, page83[offset + 3]
        body = page83[offset + 4:offset + 4 + length]
        if kind == 3 and body:                 # designator type NAA
            value = int.from_bytes(body, "big")
            found[body[0] >> 4] = value & ((1 << (8 * len(body) - 4)) - 1)
        offset += 4 + length
    return found


if __name__ == "__main__":
    # ADDRESS IQN LUN: the write cache ("on"/"off"); ADDRESS IQN LUN vpd PAGE: the page in hex.
    import sys
    if len(sys.argv) > 5 and sys.argv[4] == "vpd":
        print(vpd_page(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[5], 0)).hex())
    elif len(sys.argv) > 5 and sys.argv[4] == "set-wce":
        print(set_write_cache(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[5] == "1"))
    else:
        print("on" if write_cache_enabled(sys.argv[1], sys.argv[2], int(sys.argv[3])) else "off")
