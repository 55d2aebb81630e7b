"""Moving a running cluster from the stock agents to tgtha's: nothing restarts, nothing changes identity.

What the stock agents (resource-agents 4.12, run here for real against a real
tgtd) made is recognised by tgtha's probes as running: a target bound to its
own account alone, LUNs with the stock agent's default identity once
tgtha-from-stock has written it into the configuration. The first recurring
monitor takes the account over, the initiator's session stays, and tgtha's own
stop and start afterwards leave the same WWID. tgtha-from-stock rewrites a
stock CIB (loaded with crmsh) into one crm_verify accepts. The whole procedure
under load, in a cluster: the lab's migrate scenario (tests/test_lab.py).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import OCF_ROOT, REPO, needs_root

TESTS = Path(__file__).parent
STOCK = Path("/usr/lib/ocf/resource.d/heartbeat")
TOOL = REPO / "tools" / "tgtha-from-stock"
sys.path.insert(0, str(REPO / "lib"))
from tgtha.iscsilogicalunit import naa6_value, same_wwid_in_hex, stock_identity  # noqa: E402

sys.path.insert(0, str(TESTS))
from iscsi_scsi import naa_designators  # noqa: E402

IQN = "iqn.2026-11.test.tgtha:stock"
CHAP_IQN = "iqn.2026-11.test.tgtha:stockchap"
USER, PASSWORD = "stockuser", "Stock-Secret-0123"


def stock(lab, agent: str, action: str, params: dict[str, str], instance: str) -> subprocess.CompletedProcess:
    """The stock agent itself, on the lab's node; its tgtadm reaches the lab's tgtd (a
    wrapper adds the control port, which the stock agent cannot be told)."""
    shim = lab.tmp_path / "stock-bin"
    if not shim.exists():
        shim.mkdir()
        (shim / "tgtadm").write_text(f"#!/bin/sh\nexec /usr/sbin/tgtadm -C {lab.tgtd.control_port} \"$@\"\n")
        (shim / "tgtadm").chmod(0o755)
    env = {"PATH": f"{shim}:/usr/sbin:/usr/bin:/sbin:/bin", "OCF_ROOT": OCF_ROOT, "HA_RSCTMP": str(lab.state),
           "OCF_RESOURCE_INSTANCE": instance, **{f"OCF_RESKEY_{k}": v for k, v in params.items()}}
    return subprocess.run(lab.node.exec_argv(str(STOCK / agent), action), env=env, capture_output=True,
                          text=True, timeout=60)


def nexuses(lab, iqn: str) -> list[str]:
    block = lab.show().split(f": {iqn}\n", 1)[1].split("\nTarget ", 1)[0]
    return re.findall(r"I_T nexus: (\d+)", block)


def naa(lab, iqn: str, lun: int) -> dict[int, int]:
    page = lab.client.run(sys.executable, str(TESTS / "iscsi_scsi.py"), lab.TARGET_IP, iqn, str(lun),
                          "vpd", "0x83").stdout.strip()
    return naa_designators(bytes.fromhex(page))


@contextmanager
def reading(lab, iqn: str):
    """iscsi-perf reading LUN 1 with the stock target's account until the block ends."""
    log = open(lab.tmp_path / "perf.log", "w")
    proc = subprocess.Popen(lab.client.exec_argv("iscsi-perf", "-i", "iqn.2026-11.test.tgtha:reader", "-m", "8",
                                                 "-b", "256", "-x", "-1", lab.url(iqn, 1, USER, PASSWORD)),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        log.close()


@pytest.fixture
def stock_lab(iscsi_lab):
    if not (STOCK / "iSCSITarget").exists():
        pytest.skip("resource-agents not installed")
    return iscsi_lab


@needs_root
def test_a_target_and_luns_the_stock_agents_made_are_running_for_tgthas_probes(stock_lab):
    lab = stock_lab
    # The stock agent's default ACL is empty (its "ALL" fallback never applies): tgt lets no one in.
    target = {"implementation": "tgt", "iqn": IQN, "tid": "3", "allowed_initiators": lab.CLIENT_IP}
    assert stock(lab, "iSCSITarget", "start", target, "p_target").returncode == 0
    path = lab.make_backing_file("stock.img")
    lun = {"implementation": "tgt", "target_iqn": IQN, "lun": "1", "path": str(path)}
    made = stock(lab, "iSCSILogicalUnit", "start", lun, "p_lun_stock_1")
    assert made.returncode == 0, made.stderr
    before = naa(lab, IQN, 1)
    assert before[6] == naa6_value("p_lun_stock_1")

    # Without the identity written down, tgtha's probe says what to write, and changes nothing.
    probe = lab.agent("iSCSILogicalUnit", "monitor", lun, instance="p_lun_stock_1")
    scsi_id, scsi_sn = stock_identity("p_lun_stock_1")
    assert probe.rc == 1
    assert f"scsi_id={same_wwid_in_hex(scsi_id)} scsi_sn={scsi_sn}" in probe.exit_reason
    # tgtha-from-stock's parameters: running, for the probe and the recurring monitor.
    pinned = {**lun, "scsi_id": same_wwid_in_hex(scsi_id), "scsi_sn": scsi_sn}
    assert lab.agent("iSCSITarget", "monitor", target, instance="p_target").rc == 0
    assert lab.agent("iSCSILogicalUnit", "monitor", pinned, instance="p_lun_stock_1").rc == 0
    assert lab.agent("iSCSILogicalUnit", "monitor", pinned, instance="p_lun_stock_1",
                     meta={"interval": "10000"}).rc == 0

    # tgtha's own stop and start (the next failover): the same WWID, the same serial.
    assert lab.agent("iSCSILogicalUnit", "stop", pinned, instance="p_lun_stock_1").rc == 0
    assert lab.agent("iSCSITarget", "stop", target, instance="p_target").rc == 0
    assert "Target" not in lab.show()
    assert lab.agent("iSCSITarget", "start", target, instance="p_target").rc == 0
    assert lab.agent("iSCSILogicalUnit", "start", pinned, instance="p_lun_stock_1").rc == 0
    assert naa(lab, IQN, 1) == before
    assert f"SCSI SN: {scsi_sn}" in lab.show()


def chap_target(lab) -> dict[str, str]:
    """A target with its own account, as stock users run them (stock cannot share one)."""
    return {"implementation": "tgt", "iqn": CHAP_IQN, "tid": "4", "incoming_username": USER,
            "incoming_password": PASSWORD, "allowed_initiators": lab.CLIENT_IP}


@needs_root
def test_a_stock_target_keeps_its_session_and_its_account_becomes_tgthas(stock_lab):
    lab = stock_lab
    target = chap_target(lab)
    assert stock(lab, "iSCSITarget", "start", target, "p_target").returncode == 0
    path = lab.make_backing_file("chap.img")
    lun = {"implementation": "tgt", "target_iqn": CHAP_IQN, "lun": "1", "path": str(path)}
    assert stock(lab, "iSCSILogicalUnit", "start", lun, "p_lun").returncode == 0
    with reading(lab, CHAP_IQN):
        deadline = time.monotonic() + 20
        while not nexuses(lab, CHAP_IQN) and time.monotonic() < deadline:
            time.sleep(0.1)
        sessions = nexuses(lab, CHAP_IQN)
        assert sessions
        probe = lab.agent("iSCSITarget", "monitor", target, instance="p_target")
        assert probe.rc == 0 and "taken as" not in probe.stderr      # a probe only looks
        monitor = lab.agent("iSCSITarget", "monitor", target, instance="p_target", meta={"interval": "10000"})
        assert monitor.rc == 0 and "is taken as this resource's own" in monitor.stderr
        assert PASSWORD not in monitor.stderr + monitor.stdout
        assert lab.agent("iSCSITarget", "monitor", target, instance="p_target",
                         meta={"interval": "10000"}).stderr.count("taken as") == 0
        assert nexuses(lab, CHAP_IQN) == sessions
        assert lab.login(CHAP_IQN, USER, PASSWORD) and not lab.login(CHAP_IQN)
    # Its stop deletes the account, as the stock agent's would; a start then makes
    # the target in tgtha's form (the guard first), with no account left over to refuse.
    assert lab.agent("iSCSITarget", "stop", target, instance="p_target").rc == 0
    assert lab.accounts() == []
    assert lab.agent("iSCSITarget", "start", target, instance="p_target").rc == 0
    assert sorted(lab.accounts()) == sorted(["tgtha-guard", USER])
    assert lab.login(CHAP_IQN, USER, PASSWORD) and not lab.login(CHAP_IQN)


@needs_root
def test_a_stock_target_stopped_before_any_monitor_leaves_no_account_behind(stock_lab):
    lab = stock_lab
    target = chap_target(lab)
    assert stock(lab, "iSCSITarget", "start", target, "p_target").returncode == 0
    assert lab.agent("iSCSITarget", "monitor", target, instance="p_target").rc == 0
    assert lab.agent("iSCSITarget", "stop", target, instance="p_target").rc == 0
    assert lab.accounts() == []
    assert lab.agent("iSCSITarget", "start", target, instance="p_target").rc == 0


# ---------------------------------------------------------------- the CIB rewrite

STOCK_CONFIGURATION = """\
primitive p_tgtd lsb:tgt op monitor interval=10s
clone cl_tgtd p_tgtd meta interleave=true
primitive p_vip_t1 ocf:heartbeat:IPaddr2 params ip=192.0.2.101 cidr_netmask=24
primitive p_target_t1 ocf:heartbeat:iSCSITarget params implementation=tgt iqn=iqn.2026-11.com.example:t1 \
    tid=1 incoming_username=t1user incoming_password=T1-Secret-0123 op monitor interval=10s
primitive p_lun_t1_1 ocf:heartbeat:iSCSILogicalUnit params implementation=tgt \
    target_iqn=iqn.2026-11.com.example:t1 lun=1 path=/dev/drbd1 op monitor interval=10s
primitive p_lun_t1_2 ocf:heartbeat:iSCSILogicalUnit params implementation=tgt \
    target_iqn=iqn.2026-11.com.example:t1 lun=2 path=/dev/drbd2 scsi_id=disk-two scsi_sn=cafe0002
group g_t1 p_vip_t1 p_target_t1 p_lun_t1_1 p_lun_t1_2
order o_t1 Mandatory: cl_tgtd g_t1
colocation c_t1 inf: g_t1 cl_tgtd
primitive p_webvip ocf:heartbeat:IPaddr2 params ip=192.0.2.80 cidr_netmask=24
"""


def crm_loaded(tmp_path, configuration: str) -> Path:
    cib = tmp_path / "cib.xml"
    cib.write_text(subprocess.run(["cibadmin", "--empty"], capture_output=True, text=True, check=True).stdout)
    source = tmp_path / "stock.crm"
    source.write_text(configuration)
    env = {**os.environ, "CIB_file": str(cib)}
    subprocess.run(["crm", "-F", "configure", "load", "update", str(source)], env=env, capture_output=True,
                   check=True, timeout=120)
    subprocess.run(["crm_attribute", "-t", "crm_config", "-n", "stonith-enabled", "-v", "false"], env=env,
                   check=True, capture_output=True)
    return cib


def primitives(cib: Path) -> dict[str, ET.Element]:
    return {p.get("id"): p for p in ET.parse(cib).getroot().iter("primitive")}


def params(primitive: ET.Element) -> dict[str, str]:
    return {n.get("name"): n.get("value") for n in primitive.iter("nvpair")}


needs_cluster_tools = pytest.mark.skipif(not all(shutil.which(t) for t in ("crm", "cibadmin", "crm_verify")),
                                         reason="crmsh or pacemaker-cli-utils not installed")


@needs_cluster_tools
def test_tgtha_from_stock_moves_every_tgt_resource_and_writes_down_the_lun_identity(tmp_path, agents_installed):
    cib = crm_loaded(tmp_path, STOCK_CONFIGURATION)
    result = subprocess.run([str(TOOL), "--ipaddr2", str(cib)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    after = primitives(cib)
    agent = {rid: f"{p.get('class')}:{p.get('provider') or ''}:{p.get('type')}" for rid, p in after.items()}
    assert agent == {"p_tgtd": "ocf:tgtha:tgtd", "p_vip_t1": "ocf:tgtha:IPaddr2",
                     "p_target_t1": "ocf:tgtha:iSCSITarget", "p_lun_t1_1": "ocf:tgtha:iSCSILogicalUnit",
                     "p_lun_t1_2": "ocf:tgtha:iSCSILogicalUnit",
                     "p_webvip": "ocf:heartbeat:IPaddr2"}       # not a portal: someone else's
    scsi_id, scsi_sn = stock_identity("p_lun_t1_1")
    assert params(after["p_lun_t1_1"])["scsi_id"] == same_wwid_in_hex(scsi_id) == "0000000101"
    assert params(after["p_lun_t1_1"])["scsi_sn"] == scsi_sn
    # A configured id keeps its WWID in hex; a configured serial is kept as it is.
    assert params(after["p_lun_t1_2"])["scsi_id"] == "d0000000"
    assert naa6_value("disk-two") == naa6_value("d0000000")
    assert params(after["p_lun_t1_2"])["scsi_sn"] == "cafe0002"
    assert params(after["p_target_t1"])["incoming_password"] == "T1-Secret-0123"
    assert "T1-Secret-0123" not in result.stdout
    verify = subprocess.run(["crm_verify", "-V", "-x", str(cib)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # Run again: nothing stock is left.
    again = subprocess.run([str(TOOL), str(cib)], capture_output=True, text=True)
    assert again.returncode == 1 and "no stock tgt resource" in again.stdout


@needs_cluster_tools
def test_tgtha_from_stock_refuses_lio_and_changes_nothing(tmp_path, agents_installed):
    cib = crm_loaded(tmp_path, STOCK_CONFIGURATION.replace("implementation=tgt iqn", "implementation=lio-t iqn"))
    before = cib.read_bytes()
    result = subprocess.run([str(TOOL), str(cib)], capture_output=True, text=True)
    assert result.returncode == 2 and "p_target_t1: implementation=lio-t" in result.stdout
    assert cib.read_bytes() == before
