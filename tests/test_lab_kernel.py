"""The lab with kernel initiators, short: one Linux guest (QEMU, TCG) running
open-iscsi with the shared CHAP account, ext4 and xfs on the LUNs, the lab's
writer proving every record; failovers that must cost a pause and nothing
else, and the negative control that shows the detectors firing.

The full run is ``make lab LAB_INITIATOR=kernel`` (or ``both``).
"""
from __future__ import annotations

import shutil

import pytest

from conftest import needs_root
from test_lab import assert_no_failover_hurt_an_initiator, run_lab

pytestmark = [needs_root, pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("qemu-system-x86_64", "iscsiadm", "busybox", "mkfs.xfs", "gcc")),
    reason="the kernel initiator's Debian packages are not installed (make deps)")]

SHORT = {"LAB_INITIATOR": "kernel", "LAB_GUESTS": "1", "LAB_TARGETS": "2", "LAB_LUNS": "1"}


def test_kernel_and_libiscsi_initiators_side_by_side_see_a_pause_never_an_error(tmp_path, report):
    """LAB_INITIATOR=both: LUN 1 of each target is the guest's, LUN 2 libiscsi's."""
    lab = run_lab(tmp_path, **{**SHORT, "LAB_INITIATOR": "both", "LAB_LUNS": "2"}, LAB_FAILOVERS="2",
                  LAB_SCENARIOS="move,standby,kill-tgtd,outage")
    assert_no_failover_hurt_an_initiator(lab)
    for scenario in lab["scenarios"]:
        assert scenario["initiator"] == "both"
        assert (scenario["kernel_io_errors"], scenario["ro_remounts"], scenario["sessions_not_back"],
                scenario["wwid_changes"]) == (0, 0, 0, 0), scenario["details"]
        assert all(scenario["by_initiator"][kind]["pause_max_s"] is not None for kind in ("kernel", "libiscsi"))
        for detail in scenario["details"]:     # the moved targets' LUNs: each with both kinds of writer
            assert {name.split("/")[1] for name in detail["pauses_s"]} == {"lun1", "lun2"}, detail["pauses_s"]
    dmesg = (tmp_path / "lab-out" / "run" / "guest-1.dmesg").read_text()
    assert "sd 2:0:0:1" in dmesg or "Attached SCSI disk" in dmesg
    for scenario in lab["scenarios"]:
        kernel, libiscsi = scenario["by_initiator"]["kernel"], scenario["by_initiator"]["libiscsi"]
        report(f"lab (kernel + libiscsi initiators) {scenario['name']}: pause max kernel {kernel['pause_max_s']}s, "
               f"libiscsi {libiscsi['pause_max_s']}s, kernel errors 0, read-only 0")


def assert_the_kernels_saw_nothing(report: dict) -> None:
    for scenario in report["scenarios"]:
        assert (scenario["kernel_io_errors"], scenario["ro_remounts"], scenario["verify_failures"],
                scenario["sessions_not_back"], scenario["wwid_changes"], scenario["wedged_messages"]) \
            == (0, 0, 0, 0, 0, 0), scenario["details"]


def test_static_portals_restarted_in_place_never_wedge_a_session(tmp_path, report):
    """LAB_PORTAL=static: the portal addresses are the nodes' own, so while a node's only target
    is stopped, its tgtd answers there: with the tgtd agent's placeholder target a login is
    refused "target not found" (and retried), never accepted and closed unanswered, the
    window that wedges open-iscsi 2.1.8 (the lab's LAB_PLACEHOLDER=0 run shows it)."""
    lab = run_lab(tmp_path, **SHORT, LAB_PORTAL="static", LAB_SCENARIOS="restart", LAB_FAILOVERS="2",
                  LAB_RESTART_GAPS="0,10")
    assert_no_failover_hurt_an_initiator(lab)
    assert_the_kernels_saw_nothing(lab)
    assert lab["portal"] == "static" and lab["placeholder_target"] is True
    restart = lab["scenarios"][0]
    report(f"lab (static portals, kernel initiator) restarts 0 and 10 s apart: pause max "
           f"{restart['pause_max_s']}s, 0 wedged sessions, 0 kernel errors")


def test_multipath_maps_keep_their_wwid_and_every_path_through_failovers(tmp_path, report):
    """LAB_MULTIPATH=1: two portals per target on two networks, dm-multipath in the guest.
    lose-network (the second network refuses everything) is the path check's negative
    control: I/O goes on over the first network and the report shows the paths down."""
    lab = run_lab(tmp_path, **SHORT, LAB_MULTIPATH="1", LAB_FAILOVERS="1",
                  LAB_SCENARIOS="move,standby,kill-tgtd,lose-network")
    assert_no_failover_hurt_an_initiator(lab)
    assert lab["multipath"] is True and lab["replacement_timeout_s"] == 5
    failovers = [s for s in lab["scenarios"] if s["name"] != "lose-network"]
    assert_the_kernels_saw_nothing({"scenarios": failovers})
    assert all(scenario["paths_not_back"] == 0 for scenario in failovers), failovers
    [lost] = [s for s in lab["scenarios"] if s["name"] == "lose-network"]
    assert lost["paths_not_back"] > 0 and lost["kernel_io_errors"] == 0 and lost["ro_remounts"] == 0, lost
    assert "Failing path" in (tmp_path / "lab-out" / "run" / "guest-1.dmesg").read_text()
    report("lab (dm-multipath, two portals) " + ", ".join(
        f"{s['name']} pause max {s['pause_max_s']}s" for s in failovers) + ": WWIDs and maps unchanged, "
        f"every path back; one network lost: {lost['paths_not_back']} paths down seen, I/O went on "
        f"(pause max {lost['pause_max_s']}s)")


def test_an_outage_past_replacement_timeout_is_seen_as_errors_and_read_only_file_systems(tmp_path, report):
    """Negative control: 20 s without the targets, replacement_timeout 10 s."""
    lab = run_lab(tmp_path, **SHORT, LAB_FAILOVERS="1", LAB_SCENARIOS="outage", LAB_OUTAGE_S="20",
                  LAB_REPLACEMENT_TIMEOUT="10")
    outage = lab["scenarios"][0]
    assert outage["kernel_io_errors"] > 0 and outage["ro_remounts"] > 0, outage["details"]
    assert outage["io_errors"] > 0
    report(f"negative control (20 s outage, replacement_timeout 10 s): {outage['kernel_io_errors']} kernel "
           f"I/O errors, {outage['ro_remounts']} read-only/shutdown events, {outage['io_errors']} writer errors")


def test_a_lun_made_again_with_another_identity_is_seen_as_a_wwid_change(tmp_path, report):
    """Negative control of the WWID check: the migrate scenario without the LUN identity
    tgtha-from-stock writes down (LAB_MIGRATE_CONTROL=no-identity), so tgtha's probes
    fail and Pacemaker makes every LUN again under its number with tgtha's default
    identity. The guest's kernel keeps a disk's first VPD page until it is rescanned."""
    lab = run_lab(tmp_path, **SHORT, LAB_SCENARIOS="migrate", LAB_MIGRATE_CONTROL="no-identity")
    migrate = lab["scenarios"][0]
    assert migrate["wwid_changes"] == lab["luns"], migrate["details"]
    assert len(migrate["details"][0]["migration"]["restarts"]) >= 2 * lab["luns"]
    report(f"negative control (migrate without the LUN identity): {migrate['wwid_changes']} of {lab['luns']} "
           f"WWIDs changed, {migrate['kernel_io_errors']} kernel I/O errors")
