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
import signal
import subprocess
import sys

import pytest

from conftest import REPO, needs_root

pytestmark = [needs_root, pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("pacemakerd", "corosync", "crm", "pcs", "tini", "qemu-io",
                                            "tgtd", "iscsi-inq")),
    reason="the lab's Debian packages are not installed (make deps)")]

PREFIX = "tgthalabt"


def lab_env(tmp_path, **knobs: str) -> dict[str, str]:
    subprocess.run(["make", "-C", str(REPO), "install"], check=True, capture_output=True)
    return {**os.environ, "LAB_OUT": str(tmp_path / "lab-out"), "LAB_PREFIX": PREFIX, "LAB_NODES": "2",
            "LAB_INITIATOR": "libiscsi", **knobs}


def run_lab(tmp_path, **knobs: str) -> dict:
    env = lab_env(tmp_path, **knobs)
    result = subprocess.run(["/usr/bin/python3", str(REPO / "lab" / "lab.py")], env=env,
                            capture_output=True, text=True, timeout=1500)
    sys.stdout.write(result.stdout[-6000:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_nothing_left_behind()
    out = tmp_path / "lab-out"
    report = json.loads((out / "report.json").read_text())
    assert (out / "timeline.png").stat().st_size > 10_000
    # The migrate scenario begins on the stock agents.
    tgtd = ('type="tgt"', "lsb:tgt") if knobs.get("LAB_SCENARIOS") == "migrate" else ('type="tgtd"', "ocf:tgtha:tgtd")
    if knobs.get("LAB_CONFIG") == "pcs":
        assert tgtd[0] in (out / "run" / "cluster-pcs.xml").read_text()
    else:
        assert tgtd[1] in (out / "run" / "cluster.crm").read_text()
    return report


def assert_nothing_left_behind() -> None:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert PREFIX not in namespaces
    for comm in ("qemu-io", "qemu-system", "corosync", "pacemakerd", "tgtd"):
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
    assert report["total_io_completed"] > 100 * report["luns"]   # a round per LUN every ~0.1-0.2 s


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
    # Each death was reported by tgtd's exit watcher (crm_resource --fail: "asyncmon"),
    # whether or not tgtd's 1 s monitor also saw it.
    for failover in pauses["kill-tgtd"]["details"]:
        assert "asyncmon" in failover["cluster"]["detected_by"], failover["cluster"]
    for s in lab["scenarios"]:
        for failover in s["details"]:
            # The cluster side, read from Pacemaker's logs, is there and inside the pause.
            assert failover["cluster_s"] is not None and 0 < failover["cluster_s"] < 30, failover
    for s in lab["scenarios"]:
        report(f"lab (crmsh, 2 targets, 4 LUNs) {s['name']}: pause p50 {s['pause_p50_s']}s "
               f"max {s['pause_max_s']}s, errors {s['io_errors']}, mismatches {s['mismatches']}")


def test_the_same_topology_configured_with_pcs(tmp_path, report):
    """pcs: the "sets" layout's colocations and ordered sets (two LUNs in parallel)."""
    lab = run_lab(tmp_path, LAB_CONFIG="pcs", LAB_TARGETS="2", LAB_LUNS="2", LAB_FAILOVERS="2",
                  LAB_SCENARIOS="move")
    assert lab["config_tool"] == "pcs" and lab["layout"] == "sets"
    assert lab["all_started"] and not lab["start_failed_actions"]
    assert_no_failover_hurt_an_initiator(lab)
    report(f"lab (pcs) move: pause max {lab['scenarios'][0]['pause_max_s']}s")


@pytest.mark.parametrize("tool", ["crm", "pcs"])
def test_a_stock_cluster_moves_to_tgtha_under_load_without_a_restart_or_a_dropped_session(tmp_path, report, tool):
    """README's procedure (maintenance-mode, tgtha-from-stock, refresh) on a running stock stack."""
    lab = run_lab(tmp_path, LAB_SCENARIOS="migrate", LAB_CONFIG=tool, LAB_TARGETS="2", LAB_LUNS="2")
    assert lab["all_started"] and not lab["start_failed_actions"]
    assert_no_failover_hurt_an_initiator(lab)
    migration = lab["scenarios"][0]["details"][0]["migration"]
    assert all(step["rc"] == 0 for step in migration["steps"]), migration["steps"]
    assert [step["step"] for step in migration["steps"]] == [
        "maintenance-mode=true", "read the CIB", "tgtha-from-stock", "write the CIB", "refresh",
        "maintenance-mode=false"]
    assert migration["probed_s"] is not None
    assert migration["not_tgtha"] == [] and migration["restarts"] == [] and migration["tgtd_restarted"] == []
    assert migration["sessions_before"] == 4 and migration["sessions_dropped"] == []
    assert migration["accounts_not_taken_over"] == []
    report(f"lab migrate ({tool}): 0 restarts, 0 of 4 sessions dropped, worst pause "
           f"{lab['scenarios'][0]['pause_max_s']}s")


def test_the_migration_without_its_refresh_is_seen_restarting_everything(tmp_path):
    """The negative control of the migrate scenario's detectors: Pacemaker, holding the
    stock agents' history, stops every resource with them and starts it with tgtha's."""
    lab = run_lab(tmp_path, LAB_SCENARIOS="migrate", LAB_MIGRATE_CONTROL="no-refresh", LAB_TARGETS="2",
                  LAB_LUNS="2")
    migration = lab["scenarios"][0]["details"][0]["migration"]
    assert migration["control"] == "no-refresh" and "refresh" not in [s["step"] for s in migration["steps"]]
    assert len(migration["restarts"]) >= 8 and migration["tgtd_restarted"]
    assert len(migration["sessions_dropped"]) == 4
    assert lab["scenarios"][0]["io_errors"] > 0 or lab["scenarios"][0]["pause_max_s"] > 5


def test_an_unsettled_failover_is_recorded_and_recovered_and_an_interrupted_run_still_reports(tmp_path):
    """A failover whose LUN start fails on every node (injected) does not stall the lab:
    its state is kept, the cluster is brought back, the next failover settles. Then
    SIGTERM mid-run: the report of what completed is written, marked interrupted,
    and everything is torn down. (With the "group" layout: moved as a group.)"""
    env = lab_env(tmp_path, LAB_TARGETS="2", LAB_LUNS="1", LAB_FAILOVERS="4", LAB_SCENARIOS="move",
                  LAB_LAYOUT="group",
                  LAB_INJECT="move:1", LAB_SETTLE_TIMEOUT="30")
    lab = subprocess.Popen(["/usr/bin/python3", str(REPO / "lab" / "lab.py")], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    try:
        for line in lab.stdout:
            output.append(line)
            if line.split("]", 1)[-1].strip().startswith("move 2/4"):
                lab.send_signal(signal.SIGTERM)
                break
        output += lab.stdout.readlines()
        assert lab.wait(timeout=300) == 130, "".join(output)
    finally:
        if lab.poll() is None:
            lab.kill()
            lab.wait()
    sys.stdout.write("".join(output)[-4000:])
    assert_nothing_left_behind()
    out = tmp_path / "lab-out"
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] is True
    [move] = report["scenarios"]
    first, second = move["details"][:2]
    assert first["settled_s"] is None and first["unsettled"]["recovered"] is True, first
    assert any("does not exist" in text for text in first["injected_failures"]), first
    assert (out / "run" / first["unsettled"]["crm_mon"]).read_text().startswith("<")
    assert second["settled_s"] is not None and second["failed_actions"] == [], second
    assert move["io_errors"] == 0 and move["mismatches"] == 0 and move["failed_actions"] == 0
    assert (out / "timeline.png").stat().st_size > 10_000
