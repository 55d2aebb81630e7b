"""resource-agents' ocf-tester passes for every portblock flavour and leaves no rule behind."""
from __future__ import annotations

import os
import shutil

import pytest

from conftest import needs_root, ocf_tester, run_agent

pytestmark = [needs_root, pytest.mark.skipif(shutil.which("ocf-tester") is None, reason="no ocf-tester")]


@pytest.mark.parametrize("options", [
    {"action": "block"},
    {"action": "unblock"},
    {"action": "block", "method": "reject", "direction": "out"},
    {"action": "unblock", "direction": "both", "firewall": "nft", "status_check": "rule"},
    {"action": "block", "ip": "fd00:77::1", "firewall": "iptables"},
])
def test_ocf_tester_passes(netns, state_dir, options):
    params = {"protocol": "tcp", "portno": "3260", "ip": "10.77.0.1", **options}
    result = ocf_tester(netns, state_dir, "portblock", params)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed all tests" in result.stdout
    family = 6 if ":" in params["ip"] else 4
    if params["action"] == "unblock":
        # A stopped unblock instance is a blocked port, by definition; its block
        # partner's stop (last in the group) removes the rule.
        rules = [line for line in netns.iptables_save(family).splitlines() if "tgtha-portblock:" in line]
        assert len(rules) == (2 if params.get("direction") == "both" else 1)
        partner = {**params, "action": "block"}
        assert run_agent("portblock", "stop", partner, ns=netns, state=state_dir).rc == 0
    assert "tgtha-portblock:" not in netns.iptables_save(family)


def test_ocf_tester_passes_for_tgtuser_and_leaves_no_account(iscsi_lab):
    port = str(iscsi_lab.tgtd.control_port)
    result = ocf_tester(iscsi_lab.node, iscsi_lab.state, "tgtuser",
                        {"username": "tester", "password": "Tester-Secret-1", "control_port": port})
    assert result.returncode == 0 and "passed all tests" in result.stdout, result.stdout + result.stderr
    assert "Tester-Secret-1" not in result.stdout + result.stderr
    assert iscsi_lab.accounts() == []


@pytest.mark.parametrize("mode", ["shared-account", "own-account", "no-account"])
def test_ocf_tester_passes_for_iscsitarget_and_leaves_nothing(iscsi_lab, mode):
    port = str(iscsi_lab.tgtd.control_port)
    params = {"iqn": "iqn.2026-11.test.tgtha:tester", "control_port": port,
              "portals": f"{iscsi_lab.TARGET_IP}:3260", "allowed_initiators": "10.82.0.0/24"}
    account = {"username": "tester", "password": "Tester-Secret-1", "control_port": port}
    if mode == "shared-account":
        assert iscsi_lab.agent("tgtuser", "start", account).rc == 0
        params["incoming_username"] = "tester"
    elif mode == "own-account":
        params.update(incoming_username="owner", incoming_password="Owner-Secret-1")
    result = ocf_tester(iscsi_lab.node, iscsi_lab.state, "iSCSITarget", params)
    assert result.returncode == 0 and "passed all tests" in result.stdout, result.stdout + result.stderr
    assert "Target" not in iscsi_lab.show()
    assert iscsi_lab.accounts() == (["tester"] if mode == "shared-account" else [])
    if mode == "shared-account":
        assert iscsi_lab.agent("tgtuser", "stop", account).rc == 0
        assert iscsi_lab.accounts() == []


def test_ocf_tester_passes_for_iscsilogicalunit_and_leaves_nothing(iscsi_lab):
    port = str(iscsi_lab.tgtd.control_port)
    target = {"iqn": "iqn.2026-11.test.tgtha:tester", "control_port": port}
    assert iscsi_lab.agent("iSCSITarget", "start", target).rc == 0
    backing = iscsi_lab.make_backing_file("tester.img")
    result = ocf_tester(iscsi_lab.node, iscsi_lab.state, "iSCSILogicalUnit",
                        {"target_iqn": target["iqn"], "lun": "1", "path": str(backing), "control_port": port})
    assert result.returncode == 0 and "passed all tests" in result.stdout, result.stdout + result.stderr
    assert "LUN: 1\n" not in iscsi_lab.show()
    assert iscsi_lab.agent("iSCSITarget", "stop", target).rc == 0
    assert "Target" not in iscsi_lab.show()


def test_ocf_tester_passes_for_tgtd_and_leaves_no_tgtd(netns, state_dir, tmp_path):
    port = str(20000 + os.getpid() % 5000)
    result = ocf_tester(netns, state_dir, "tgtd", {"control_port": port, "log_file": str(tmp_path / "tgtd.log")})
    assert result.returncode == 0 and "passed all tests" in result.stdout, result.stdout + result.stderr
    assert not os.path.exists(f"/var/run/tgtd/socket.{port}")
    assert not os.path.exists(f"/var/run/tgtd/socket.{port}.lock")
