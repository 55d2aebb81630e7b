"""The lab, short: a real two-node Pacemaker + Corosync cluster in namespaces, with
fencing, running the tgtha stack (tgtd clone, tgtuser clone, target groups with
portblock, IPaddr2, iSCSITarget, iSCSILogicalUnit), QEMU's libiscsi initiator
writing and verifying data on every LUN, and every failover scenario.

The full lab (6 targets, 12 LUNs, 10 failovers per scenario) is ``make lab``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, needs_root

pytestmark = [needs_root, pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("pacemakerd", "corosync", "crm", "pcs", "tini", "qemu-io",
                                            "tgtd", "iscsi-inq")),
    reason="the lab's Debian packages are not installed (make deps)")]

PREFIX = "tgthalabt"


def run_lab(tmp_path, **knobs: str) -> dict:
    subprocess.run(["make", "-C", str(REPO), "install"], check=True, capture_output=True)
    out = tmp_path / "lab-out"
    env = {**os.environ, "LAB_OUT": str(out), "LAB_PREFIX": PREFIX, "LAB_NODES": "2", **knobs}
    result = subprocess.run(["/usr/bin/python3", str(REPO / "lab" / "lab.py")], env=env,
                            capture_output=True, text=True, timeout=1500)
    sys.stdout.write(result.stdout[-6000:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_nothing_left_behind()
    report = json.loads((out / "report.json").read_text())
    assert (out / "timeline.png").stat().st_size > 10_000
    return report


def assert_nothing_left_behind() -> None:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert PREFIX not in namespaces
    for comm in ("qemu-io", "corosync", "pacemakerd", "tgtd"):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
                except OSError:
                    continue
                assert not (comm.encode() in cmdline and PREFIX.encode() in cmdline), cmdline


def assert_no_failover_hurt_an_initiator(report: dict) -> None:
    for scenario in report["scenarios"]:
        name = scenario["name"]
        assert scenario["settled"] == scenario["failovers"], (name, scenario["details"])
        assert scenario["io_errors"] == 0, (name, report["first_errors"])
        assert scenario["mismatches"] == 0, (name, report["first_mismatches"])
        assert scenario["unauth_logins"] == 0, name
        assert scenario["failed_actions"] == 0, (name, scenario["details"])
        assert scenario["stalled_initiators"] == 0, (name, scenario["details"])
    assert report["total_io_errors"] == 0 and report["total_mismatches"] == 0
    assert report["prober_attempts"] > 0 and report["unauth_logins_total"] == 0
    assert report["total_io_completed"] > 1000


def test_every_failover_is_a_pause_never_an_error(tmp_path, report):
    lab = run_lab(tmp_path, LAB_TARGETS="2", LAB_LUNS="2", LAB_FAILOVERS="2")
    assert lab["all_started"] and not lab["start_failed_actions"]
    assert [s["name"] for s in lab["scenarios"]] == ["move", "standby", "power-off", "kill-tgtd"]
    assert_no_failover_hurt_an_initiator(lab)
    pauses = {s["name"]: s for s in lab["scenarios"]}
    assert pauses["move"]["pause_p99_s"] < 5 and pauses["standby"]["pause_p99_s"] < 5
    # The node really was powered off and fenced back on, and tgtd really died.
    assert any("reboot" in line or "off" in line for line in lab["fence_log"])
    assert pauses["kill-tgtd"]["injected_failures"] >= 2
    for s in lab["scenarios"]:
        report(f"lab (crmsh, 2 targets, 4 LUNs) {s['name']}: pause p50 {s['pause_p50_s']}s "
               f"max {s['pause_max_s']}s, errors {s['io_errors']}, mismatches {s['mismatches']}")


def test_the_same_topology_configured_with_pcs(tmp_path, report):
    lab = run_lab(tmp_path, LAB_CONFIG="pcs", LAB_TARGETS="2", LAB_LUNS="1", LAB_FAILOVERS="2",
                  LAB_SCENARIOS="move")
    assert lab["config_tool"] == "pcs" and lab["all_started"] and not lab["start_failed_actions"]
    assert_no_failover_hurt_an_initiator(lab)
    report(f"lab (pcs) move: pause max {lab['scenarios'][0]['pause_max_s']}s")
