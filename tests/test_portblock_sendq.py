"""Failover teardown under iSCSI load: the blocked target's connections really go away.

Real tgtd in one namespace, real libiscsi initiator (iscsi-perf, 64 x 1 MiB
reads in flight) in another, a veth between them. tgtd's send queue is kept
full either by a slow link (tbf on the target's veth) or by freezing the
initiator (SIGSTOP: zero window). Then the port gets blocked and the teardown
the iSCSILogicalUnit and iSCSITarget agents do (LUN delete, target delete) is
timed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from conftest import needs_root, run_agent, veth_pair

pytestmark = [needs_root, pytest.mark.skipif(not os.path.exists("/usr/bin/iscsi-perf"),
                                             reason="libiscsi-bin not installed")]

TGT_IP, INI_IP = "10.79.0.1", "10.79.0.2"
IQN = "iqn.2026-11.test.tgtha:sendq"
INI_IQN = "iqn.2026-11.test.tgtha:initiator"


class Lab:
    def __init__(self, make_netns, start_tgtd, tmp_path):
        self.tgt_ns, self.ini_ns = make_netns("tgt"), make_netns("ini")
        self.tgt_dev, _ = veth_pair(self.tgt_ns, self.ini_ns, f"{TGT_IP}/24", f"{INI_IP}/24")
        self.tgtd = start_tgtd(self.tgt_ns, TGT_IP)
        backing = tmp_path / "lun1.img"
        with open(backing, "wb") as f:
            f.truncate(512 << 20)
        self.tgtd.tgtadm("--op", "new", "--mode", "target", "--tid", "1", "-T", IQN)
        self.tgtd.tgtadm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", str(backing))
        self.tgtd.tgtadm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        self.perf_log = open(tmp_path / "iscsi-perf.log", "w")
        self.perf = subprocess.Popen(
            self.ini_ns.exec_argv("iscsi-perf", "-i", INI_IQN, "-m", "64", "-b", "2048", "-x", "-1",
                                  f"iscsi://{TGT_IP}/{IQN}/1"),
            stdout=self.perf_log, stderr=subprocess.STDOUT)

    def tgt_connections(self) -> list[str]:
        out = self.tgt_ns.run("ss", "-Htn", "( sport = :3260 )").stdout
        return [line for line in out.splitlines() if line.strip()]

    def max_send_q(self) -> int:
        return max((int(line.split()[2]) for line in self.tgt_connections()), default=0)

    def wait_for_full_send_q(self, minimum: int = 500_000, within: float = 20) -> int:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.max_send_q() >= minimum:
                return self.max_send_q()
            time.sleep(0.1)
        pytest.fail(f"tgtd's Send-Q never filled (max {self.max_send_q()})")

    def teardown_target(self, within: float) -> float | None:
        """Delete LUN 1 and target 1 as the agents do; seconds taken, or None if not within."""
        began = time.monotonic()
        lun_deleted = False
        while time.monotonic() - began < within:
            if not lun_deleted:
                lun_deleted = self.tgtd.tgtadm("--op", "delete", "--mode", "logicalunit", "--tid", "1",
                                               "--lun", "1", check=False).returncode == 0
            if lun_deleted and self.tgtd.tgtadm("--op", "delete", "--mode", "target", "--tid", "1",
                                                check=False).returncode == 0:
                return time.monotonic() - began
            time.sleep(0.02)
        return None

    def close(self):
        if self.perf.poll() is None:
            self.perf.send_signal(signal.SIGCONT)
            self.perf.kill()
            self.perf.wait()
        self.perf_log.close()


@pytest.fixture
def lab(make_netns, start_tgtd, tmp_path):
    lab = Lab(make_netns, start_tgtd, tmp_path)
    time.sleep(2)  # the initiator logs in and the reads flow
    assert lab.tgt_connections(), "the initiator did not connect"
    yield lab
    lab.close()


def slow_link(lab):
    lab.tgt_ns.run("tc", "qdisc", "add", "dev", lab.tgt_dev, "root", "tbf", "rate", "200mbit",
                   "burst", "256k", "latency", "50ms")


def tgtha_block(lab, state_dir, **extra):
    params = {"protocol": "tcp", "portno": "3260", "ip": TGT_IP, "action": "block", **extra}
    began = time.monotonic()
    run = run_agent("portblock", "start", params, ns=lab.tgt_ns, state=state_dir)
    assert run.rc == 0, run
    return time.monotonic() - began


@pytest.mark.parametrize("method, direction", [("reject", "out"), ("silent", "both")])
def test_a_rejecting_block_under_read_load_frees_the_target_within_one_second(lab, state_dir, report,
                                                                             method, direction):
    """method=silent keeps the clients uninformed, not tgtd's connections alive."""
    slow_link(lab)
    send_q = lab.wait_for_full_send_q()
    took_block = tgtha_block(lab, state_dir, method=method, direction=direction)
    took = lab.teardown_target(within=1.0)
    assert lab.tgt_connections() == []
    assert took is not None, "LUN and target delete did not succeed within 1 s"
    report(f"sendq tbf  tgtha {method}/{direction}: Send-Q {send_q} B; block {took_block:.3f} s;"
           f" connections 0; LUN+target deleted in {took:.3f} s")


def test_stock_input_drop_leaves_the_connection_stuck(lab, state_dir, report):
    """The contrast: the stock agent's INPUT DROP rule does not touch tgtd's stuck connection."""
    slow_link(lab)
    send_q = lab.wait_for_full_send_q()
    params = {"OCF_RESKEY_protocol": "tcp", "OCF_RESKEY_portno": "3260", "OCF_RESKEY_ip": TGT_IP,
              "OCF_RESKEY_action": "block", "OCF_ROOT": "/usr/lib/ocf", "OCF_RESOURCE_INSTANCE": "stock-pb",
              "HA_RSCTMP": str(state_dir), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    stock = lab.tgt_ns.exec_argv("/usr/lib/ocf/resource.d/heartbeat/portblock", "start")
    assert subprocess.run(stock, env=params, capture_output=True).returncode == 0
    observed = 10.0
    took = lab.teardown_target(within=observed)
    stuck = [line for line in lab.tgt_connections() if line.startswith("ESTAB")]
    assert took is None and stuck, "expected the stock rule to leave tgtd stuck"
    report(f"sendq tbf  stock INPUT DROP: Send-Q {send_q} B; after {observed:.0f} s still"
           f" {len(stuck)} ESTABLISHED, Send-Q {lab.max_send_q()} B; LUN/target delete failing")
    lab.tgt_ns.run("iptables", "-F", "INPUT")


def freeze_initiator(lab, seconds: float) -> int:
    lab.perf.send_signal(signal.SIGSTOP)
    time.sleep(seconds)
    return lab.max_send_q()


def test_frozen_initiator_connection_gone_and_teardown_within_half_a_second(lab, state_dir, report):
    send_q = freeze_initiator(lab, 20)
    assert send_q > 0, "the frozen initiator should leave data in tgtd's Send-Q"
    began = time.monotonic()
    tgtha_block(lab, state_dir)  # defaults: INPUT drop + close the connections
    took = lab.teardown_target(within=0.5)
    total = time.monotonic() - began
    assert lab.tgt_connections() == []
    assert took is not None, "teardown did not finish within 0.5 s of the block"
    report(f"sendq stop tgtha drop/in + socket destroy: Send-Q {send_q} B after 20 s frozen;"
           f" block+teardown {total:.3f} s")


def test_frozen_initiator_a_reject_rule_alone_waits_for_the_zero_window_probe(lab, state_dir, report):
    """Why the agent destroys sockets: REJECT acts only on tgtd's next send."""
    send_q = freeze_initiator(lab, 20)
    tgtha_block(lab, state_dir, method="reject", direction="out", close_connections="false")
    observed = 6.0
    took = lab.teardown_target(within=observed)
    report(f"sendq stop tgtha reject/out WITHOUT socket destroy: Send-Q {send_q} B;"
           + (f" teardown after {took:.2f} s" if took is not None else
              f" still {len(lab.tgt_connections())} connection(s) after {observed:.0f} s"))
    assert took is None or took > 1.0

