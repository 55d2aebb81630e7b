"""The tgtd management-socket client: what it parses, and that tgtd agrees with tgtadm."""
from __future__ import annotations

import time

import pytest

from conftest import needs_root
from tgtd_spin import errno_eagain_in_tgtd, tgtd_cpu_share, tgtd_sockets
from tgtha.iscsi_names import name_problem, parse_portal
from tgtha.tgtd import TgtdControl, TgtdError, TgtdUnreachable, parse_accounts, parse_targets

SHOW = """Target 1: iqn.2026-11.test:t1
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 5
            Initiator: iqn.2026-11.test:client alias: none
            Connection: 0
                IP Address: 10.82.0.2
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00010000
            SCSI SN: beaf10
            Backing store path: None
        LUN: 1
            Type: disk
            SCSI ID: id-1
            SCSI SN: sn-1
            Backing store path: /srv/lun1.img
    Account information:
        tgtha-guard
        shared
        out-user (outgoing)
    ACL information:
        ALL
        iqn.2026-11.test:client
Target 10: iqn.2026-11.test:t10
    System information:
        Driver: iscsi
        State: offline
    I_T nexus information:
    LUN information:
    Account information:
    ACL information:
"""


def test_target_show_is_parsed_section_by_section():
    t1, t10 = parse_targets(SHOW)
    assert (t1.tid, t1.iqn, t1.state) == (1, "iqn.2026-11.test:t1", "ready")
    assert [(n.sid, n.initiator, [(c.cid, c.address) for c in n.connections]) for n in t1.nexuses] == \
        [(5, "iqn.2026-11.test:client", [(0, "10.82.0.2")])]
    assert sorted(t1.luns) == [0, 1]
    assert (t1.luns[1].path, t1.luns[1].scsi_id, t1.luns[1].scsi_sn) == ("/srv/lun1.img", "id-1", "sn-1")
    assert t1.incoming == ["tgtha-guard", "shared"] and t1.outgoing == "out-user"
    assert t1.acls == ["ALL", "iqn.2026-11.test:client"]
    assert (t10.tid, t10.iqn, t10.state, t10.nexuses, t10.luns, t10.incoming, t10.acls) == \
        (10, "iqn.2026-11.test:t10", "offline", [], {}, [], [])


def test_account_show_is_parsed():
    assert parse_accounts("Account list:\n    a\n    b-2\n") == ["a", "b-2"]
    assert parse_accounts("") == []


@pytest.mark.parametrize("name", [
    "iqn.2026-11.org.example:storage.t1", "iqn.1994-05.com.redhat", "eui.0123456789abcdef",
    "naa.0123456789abcdef0123456789abcdef", "eui.02004567A425678D", "naa.52004567BA64678D"])
def test_valid_iscsi_names(name):
    assert name_problem(name) is None


@pytest.mark.parametrize("name", [
    "", "iqn.2026-13.org.example:t", "iqn.26-11.org.example", "iqn.2026-11.:t", "IQN.2026-11.org.x",
    "iqn.2026-11.org.ex ample", "iqn.2026-11.org.example:t,1", "eui.0123", "target1", "iqn." + "a" * 230,
    "iqn.\u0662\u0660\u0662\u0666-11.org.example", "eui.02004567A425678G"])
def test_invalid_iscsi_names_say_why(name):
    assert name_problem(name)


def test_portals():
    assert [str(n) for n, _ in [parse_portal("10.0.0.1:3260")]] == ["10.0.0.1/32"]
    assert parse_portal("[fd00::1]:3261")[1] == 3261
    assert parse_portal("10.0.0.1")[1] == 3260
    for bad in ("10.0.0.1:0", "10.0.0.0/24:3260", "host:3260", "[fd00::1]x"):
        with pytest.raises(ValueError):
            parse_portal(bad)


@needs_root
def test_waiting_for_tgtd_and_the_agents_monitors_leave_no_connection_in_tgtd(iscsi_lab):
    """A busy tgtd keeps a management connection closed before its request, and
    spins on it (test_tgt_facts): every probe of ours is a whole request."""
    ctl = TgtdControl(iscsi_lab.tgtd.control_port, time.monotonic() + 30)
    ctl.create_target(1, "iqn.2026-11.test:busy")        # tgtd keeps the half login only with a target
    account = {"username": "spinner", "password": "not-logged-anywhere"}
    time.sleep(0.2)                                       # tgtd closes its side after answering
    baseline = tgtd_sockets(iscsi_lab)
    with errno_eagain_in_tgtd(iscsi_lab):
        for _ in range(5):
            TgtdControl(iscsi_lab.tgtd.control_port, time.monotonic() + 5, patience=1).accounts()
        assert iscsi_lab.agent("tgtuser", "start", account).rc == 0
        for _ in range(3):
            assert iscsi_lab.agent("tgtuser", "monitor", account, meta={"interval": "10000"}).rc == 0
        assert iscsi_lab.agent("tgtuser", "stop", account).rc == 0
    time.sleep(0.3)
    assert tgtd_sockets(iscsi_lab) == baseline
    assert tgtd_cpu_share(iscsi_lab) < 0.2


@needs_root
def test_requests_over_the_socket_are_what_tgtadm_sees(iscsi_lab):
    ctl = TgtdControl(iscsi_lab.tgtd.control_port, time.monotonic() + 10)
    ctl.create_target(3, "iqn.2026-11.test:wire")
    ctl.create_account("wire", "pass, with=commas and spaces")
    ctl.bind_account(3, "wire")
    ctl.bind_initiator(3, "10.82.0.0/24")
    ctl.bind_initiator(3, "iqn.2026-11.test.tgtha:client")
    shown = iscsi_lab.show()
    assert "Target 3: iqn.2026-11.test:wire" in shown
    assert "        wire\n" in shown and "10.82.0.0/24" in shown
    assert iscsi_lab.accounts() == ["wire"]
    # The password survives commas, '=' and spaces intact: tgt's CHAP accepts it.
    assert iscsi_lab.login("iqn.2026-11.test:wire", "wire", "pass, with=commas and spaces")
    assert not iscsi_lab.login("iqn.2026-11.test:wire", "wire", "pass")
    with pytest.raises(TgtdError, match="this target already exists"):
        ctl.create_target(3, "iqn.2026-11.test:other")
    ctl.delete_target(3)
    ctl.delete_target(3)  # already gone: fine
    assert "Target 3" not in iscsi_lab.show()


def test_no_tgtd_is_unreachable_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TGT_IPC_SOCKET", str(tmp_path / "socket"))
    with pytest.raises(TgtdUnreachable, match="not running"):
        TgtdControl(0, time.monotonic() + 1).targets()


class MisbehavingTgtd:
    """A unix socket that answers a management request the way a failing tgtd might."""

    def __init__(self, tmp_path, behaviour: str) -> None:
        import socket
        import threading
        self.path = str(tmp_path / "socket.7")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(4)
        self.behaviour = behaviour
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import struct
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        conn.recv(4096)
        if self.behaviour == "eof":
            conn.close()
        elif self.behaviour == "short header":
            conn.sendall(b"\0\0\0")
            conn.close()
        elif self.behaviour == "short body":
            conn.sendall(struct.pack("=II", 0, 8 + 1000) + b"Target 1: iqn.2026-11.test:t1\n")
            conn.close()
        elif self.behaviour == "huge length":
            conn.sendall(struct.pack("=II", 0, 1 << 31) + b"Target 1: iqn.2026-11.test:t1\n")
            time.sleep(3)
            conn.close()
        elif self.behaviour == "silent":
            time.sleep(3)
            conn.close()

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize("behaviour", ["eof", "short header", "short body", "huge length", "silent"])
def test_a_failing_tgtd_is_a_clear_bounded_error_never_a_hang_or_a_half_answer(tmp_path, monkeypatch, behaviour):
    monkeypatch.setenv("TGT_IPC_SOCKET", str(tmp_path / "socket"))
    peer = MisbehavingTgtd(tmp_path, behaviour)
    try:
        began = time.monotonic()
        with pytest.raises(TgtdUnreachable) as raised:
            TgtdControl(7, time.monotonic() + 1.0).targets()
        assert time.monotonic() - began < 1.5
        assert ("in time" in str(raised.value)) == (behaviour in ("silent", "huge length")), raised.value
    finally:
        peer.close()
