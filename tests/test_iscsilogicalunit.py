"""ocf:tgtha:iSCSILogicalUnit: stable identity, write cache off, exact monitor, bounded stop.

Real tgtd in a namespace; what initiators see is read with libiscsi's
iscsi-inq (INQUIRY, VPD 0x80 and 0x83) and tests/iscsi_scsi.py (MODE SENSE)
from another namespace; write load is QEMU's libiscsi driver (qemu-img bench -w).
"""
from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import needs_root

pytestmark = needs_root

TARGET = "iqn.2026-11.test.tgtha:luns"
TESTS = Path(__file__).parent


@pytest.fixture
def lab(iscsi_lab):
    """iscsi_lab with one open target (no CHAP: identity is the subject here)."""
    assert iscsi_lab.agent("iSCSITarget", "start", {"iqn": TARGET, "tid": "1"}).rc == 0
    return iscsi_lab


def lun_params(lab, lun: int, **extra: str) -> dict[str, str]:
    path = lab.tmp_path / f"lun{lun}.img"
    if not path.exists():
        lab.make_backing_file(path.name)
    return {"target_iqn": TARGET, "lun": str(lun), "path": str(path), **extra}


def inquiry(lab, lun: int, page: int | None = None) -> bytes:
    args = ["-e", "1", "-c", str(page)] if page is not None else []
    result = subprocess.run(lab.client.exec_argv("iscsi-inq", *args, lab.url(TARGET, lun)),
                            capture_output=True, check=True, timeout=30)
    return result.stdout


def identification(lab, lun: int) -> tuple[bytes, bytes, bytes]:
    return inquiry(lab, lun), inquiry(lab, lun, 0x80), inquiry(lab, lun, 0x83)


def write_cache(lab, lun: int) -> str:
    return lab.client.run(sys.executable, str(TESTS / "iscsi_scsi.py"), lab.TARGET_IP, TARGET,
                          str(lun)).stdout.strip()


def test_four_luns_show_their_identity_and_renaming_the_resource_changes_nothing(lab):
    configured = lun_params(lab, 1, vendor_id="TGTHA", product_id="HA-Disk", scsi_id="0123456789abcdef0123",
                            scsi_sn="SN-LUN-ONE")
    luns = {1: configured, **{n: lun_params(lab, n) for n in (2, 3, 4)}}
    for n, params in luns.items():
        assert lab.agent("iSCSILogicalUnit", "start", params, instance=f"lun{n}").rc == 0
    standard, serial, designators = identification(lab, 1)
    assert b"Vendor:TGTHA" in standard and b"Product:HA-Disk" in standard
    assert b"SN-LUN-ONE" in serial and b"T10_VENDORT_ID" in designators
    assert b"0123456789abcdef0123" in designators
    serials = {n: inquiry(lab, n, 0x80) for n in (2, 3, 4)}
    assert len(set(serials.values())) == 3  # derived identities differ per LUN
    before = {n: identification(lab, n) for n in luns}

    # The same LUNs under other resource names (a CIB rename): same identity.
    for n, params in luns.items():
        assert lab.agent("iSCSILogicalUnit", "stop", params, instance=f"lun{n}").rc == 0
        assert lab.agent("iSCSILogicalUnit", "start", params, instance=f"renamed-lun-{n}").rc == 0
        assert lab.agent("iSCSILogicalUnit", "monitor", params, instance=f"renamed-lun-{n}").rc == 0
    assert {n: identification(lab, n) for n in luns} == before
    listing = lab.client.run("iscsi-ls", "-s", f"iscsi://{lab.TARGET_IP}").stdout
    assert TARGET in listing


def test_write_cache_is_off_by_default_and_visible_to_the_initiator(lab):
    assert lab.agent("iSCSILogicalUnit", "start", lun_params(lab, 1)).rc == 0
    assert lab.agent("iSCSILogicalUnit", "start", lun_params(lab, 2, write_cache="1"), instance="l2").rc == 0
    assert (write_cache(lab, 1), write_cache(lab, 2)) == ("off", "on")


def set_write_cache(lab, lun: int, enabled: bool) -> str:
    return lab.client.run(sys.executable, str(TESTS / "iscsi_scsi.py"), lab.TARGET_IP, TARGET, str(lun),
                          "set-wce", "1" if enabled else "0").stdout.strip()


def test_an_initiator_cannot_turn_the_write_cache_back_on(lab):
    """write_cache=0 is a promise: tgt lets initiators change WCE with MODE SELECT
    (sdparm --set WCE) on a LUN it made, but not once the agent has set the caching page."""
    assert lab.agent("iSCSILogicalUnit", "start", lun_params(lab, 1)).rc == 0
    assert set_write_cache(lab, 1, True) == "refused"
    assert write_cache(lab, 1) == "off"
    assert lab.agent("iSCSILogicalUnit", "monitor", lun_params(lab, 1)).rc == 0
    # Negative control: a LUN made by hand keeps tgt's own caching page, whose WCE is changeable.
    lab.tgtd.tgtadm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "9",
                    "-b", str(lab.make_backing_file("by-hand.img")))
    assert write_cache(lab, 9) == "on"
    assert set_write_cache(lab, 9, False) == "accepted"
    assert write_cache(lab, 9) == "off"


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-utils not installed")
def test_stop_with_writes_in_flight_is_bounded_twenty_times_in_a_row(lab, report):
    params = lun_params(lab, 1)
    timeout_s = 20  # the advertised stop timeout
    took = []
    for _ in range(20):
        assert lab.agent("iSCSILogicalUnit", "start", params).rc == 0
        log = open(lab.tmp_path / "writer.log", "a")
        # libiscsi's iscsi-perf only reads; QEMU's iSCSI driver (libiscsi too) writes.
        perf = subprocess.Popen(lab.client.exec_argv(
            "qemu-img", "bench", "-w", "-c", "100000000", "-d", "32", "-s", "65536", "-f", "raw",
            lab.url(TARGET, 1)), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while "I_T nexus: " not in lab.show() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            began = time.monotonic()
            stop = lab.agent("iSCSILogicalUnit", "stop", params, meta={"timeout": str(timeout_s * 1000)})
            took.append(time.monotonic() - began)
            assert stop.rc == 0, stop
            assert "LUN: 1\n" not in lab.show()
            assert "State: ready" in lab.show()  # the target serves its other LUNs again
        finally:
            os.kill(perf.pid, signal.SIGKILL)
            perf.wait()
            log.close()
    report(f"iSCSILogicalUnit stop with qemu-img bench -w (32 x 64 KiB writes) in flight, 20 runs: median {statistics.median(took):.2f} s, "
           f"max {max(took):.2f} s (stop timeout {timeout_s} s; stock: 1-15 s)")
    assert max(took) < timeout_s
    assert lab.agent("iSCSITarget", "monitor", {"iqn": TARGET, "tid": "1"}).rc == 0


def test_monitor_is_exact(lab):
    params = lun_params(lab, 1)
    assert lab.agent("iSCSILogicalUnit", "monitor", params).rc == 7  # never created: not running
    assert lab.agent("iSCSILogicalUnit", "start", params).rc == 0
    moved = lab.agent("iSCSILogicalUnit", "monitor", {**params, "path": str(lab.tmp_path / "other.img")})
    assert moved.rc == 1 and "backing store" in moved.exit_reason
    other_id = lab.agent("iSCSILogicalUnit", "monitor", {**params, "scsi_id": "feedface"})
    assert other_id.rc == 1 and "scsi_id" in other_id.exit_reason
    assert lab.agent("iSCSILogicalUnit", "monitor", lun_params(lab, 2)).rc == 7
    assert lab.agent("iSCSILogicalUnit", "monitor", {**params, "target_iqn": TARGET + "x"}).rc == 7


def test_stock_lio_only_parameters_are_accepted_ignored_and_warned_about_on_start(lab):
    stock = lab.agent("iSCSILogicalUnit", "start",
                      lun_params(lab, 4, lio_iblock="3", liot_bstype="fileio", allowed_initiators="iqn.2026-12.x:i"))
    assert stock.rc == 0 and "allowed_initiators, lio_iblock, liot_bstype: only used by LIO" in stock.stderr
    plain = lab.agent("iSCSILogicalUnit", "start", lun_params(lab, 5))
    assert plain.rc == 0 and "only used by LIO" not in plain.stderr
    assert "LUN: 4" in lab.show()


def test_start_and_stop_are_idempotent(lab):
    params = lun_params(lab, 3)
    assert lab.agent("iSCSILogicalUnit", "stop", params).rc == 0
    for _ in range(2):
        assert lab.agent("iSCSILogicalUnit", "start", params).rc == 0
    for _ in range(2):
        assert lab.agent("iSCSILogicalUnit", "stop", params).rc == 0
    assert "LUN: 3" not in lab.show()


@pytest.mark.parametrize("change, rc, reason", [
    ({"path": "/nonexistent/lun.img"}, 5, "does not exist"),
    ({"path": "relative.img"}, 6, "absolute"),
    ({"lun": "0"}, 6, "controller"),
    ({"lun": "x"}, 6, "lun"),
    ({"scsi_id": "x" * 37}, 6, "scsi_id"),
    ({"scsi_id": "lun-x-data"}, 6, "hex digits"),         # tgt: the same WWID as "lun-y-data"
    ({"scsi_id": "a" * 33}, 6, "hex digits"),             # tgt drops the front
    ({"scsi_sn": "has space"}, 6, "scsi_sn"),
    ({"vendor_id": "TOOLONGVENDOR"}, 6, "vendor_id"),
    ({"product_id": "a,b"}, 6, "product_id"),
    ({"target_iqn": "not-an-iqn"}, 6, "target_iqn"),
    ({"target_iqn": TARGET + "-missing"}, 1, "does not exist on this node"),
    ({"path": "/tmp"}, 5, "is a directory on this node"),
    ({"tgt_device_type": "floppy"}, 6, "tgt_device_type"),
    ({"tgt_bsoflags": "fast"}, 6, "tgt_bsoflags"),
    ({"emulate_3pc": "1"}, 6, "EXTENDED COPY"),
    ({"write_cache": "maybe"}, 6, "write_cache"),
    ({"implementation": "lio-t"}, 6, "tgt only"),
    ({"additional_parameters": "no_such_lu_param=1"}, 1, "no_such_lu_param"),
])
def test_bad_input_is_refused_with_a_reason_and_leaves_nothing(lab, change, rc, reason):
    before = lab.show()
    start = lab.agent("iSCSILogicalUnit", "start", {**lun_params(lab, 1), **change})
    assert (start.rc, reason in start.exit_reason) == (rc, True), start
    assert lab.show() == before


# ---------------------------------------------------------------- WWIDs

sys.path.insert(0, str(TESTS.parent / "lib"))
from tgtha.iscsilogicalunit import derived_identity, naa6_value  # noqa: E402

sys.path.insert(0, str(TESTS))
from iscsi_scsi import naa_designators  # noqa: E402


def wwid(lab, lun: int, target: str = TARGET) -> int:
    """The NAA-6 designator of VPD page 0x83, read from the client namespace."""
    page = lab.client.run(sys.executable, str(TESTS / "iscsi_scsi.py"), lab.TARGET_IP, target, str(lun),
                          "vpd", "0x83").stdout.strip()
    return naa_designators(bytes.fromhex(page))[6]


def test_the_wwid_model_is_tgts_and_derived_ids_give_distinct_wwids(lab):
    """What an initiator reads in VPD 0x83 is naa6_value(scsi_id), for derived and configured ids."""
    for lun in (1, 2, 3):
        assert lab.agent("iSCSILogicalUnit", "start", lun_params(lab, lun)).rc == 0
    configured = "00c0ffee"
    assert lab.agent("iSCSILogicalUnit", "start", lun_params(lab, 4, scsi_id=configured)).rc == 0
    read = {lun: wwid(lab, lun) for lun in (1, 2, 3, 4)}
    for lun in (1, 2, 3):
        assert read[lun] == naa6_value(derived_identity(TARGET, lun)[0])
    assert read[4] == naa6_value(configured) == 0xC0FFEE
    assert len(set(read.values())) == 4


def test_a_scsi_id_giving_another_luns_wwid_is_refused(lab):
    first, second = "1" + "a" * 31, "2" + "a" * 31          # tgt keeps the last 31 digits
    assert lab.agent("iSCSILogicalUnit", "start", lun_params(lab, 1, scsi_id=first)).rc == 0
    # What tgt does with the second id (made by hand): the same WWID, a disk multipath would merge.
    lab.tgtd.tgtadm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "9",
                    "-b", str(lab.make_backing_file("hand.img")))
    lab.tgtd.tgtadm("--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", "9",
                    "--params", f"scsi_id={second}")
    assert wwid(lab, 9) == wwid(lab, 1)
    lab.tgtd.tgtadm("--op", "delete", "--mode", "logicalunit", "--tid", "1", "--lun", "9")
    before = lab.show()
    refused = lab.agent("iSCSILogicalUnit", "start", lun_params(lab, 2, scsi_id=second))
    assert refused.rc == 6 and "WWID of LUN 1" in refused.exit_reason, refused
    assert lab.show() == before


def flushes_per_backing_file(lab, writes_by_lun: dict[int, int]) -> dict[str, int]:
    """fdatasync/fsync calls tgtd makes, per backing file, while qemu-io writes
    ``writes`` 4 KiB blocks and then flushes (SYNCHRONIZE CACHE) on each LUN."""
    trace = lab.tmp_path / "flushes.strace"
    tracer = subprocess.Popen(["strace", "-f", "-y", "-e", "trace=fdatasync,fsync", "-o", str(trace),
                               "-p", str(lab.tgtd.proc.pid)], stderr=subprocess.PIPE, text=True)
    try:
        assert "attached" in tracer.stderr.readline()
        time.sleep(0.5)                                     # every thread attached
        for lun, writes in writes_by_lun.items():
            commands = [arg for n in range(writes) for arg in ("-c", f"write -P 0x5a {n * 4096} 4k")]
            lab.client.run("qemu-io", "-f", "raw", *commands, "-c", "flush", lab.url(TARGET, lun), timeout=60)
    finally:
        tracer.terminate()
        tracer.wait(timeout=10)
    calls = [line for line in trace.read_text().splitlines() if "fdatasync(" in line or "fsync(" in line]
    return {name: sum(1 for line in calls if f"/{name}>" in line)
            for name in (f"lun{lun}.img" for lun in writes_by_lun)}


@pytest.mark.skipif(shutil.which("qemu-io") is None or shutil.which("strace") is None,
                    reason="qemu-utils or strace not installed")
def test_write_through_flushes_every_write_and_tgts_aio_store_never_flushes_so_it_is_refused(lab, report):
    from tgtha.iscsilogicalunit import CACHING_PAGE_WCE_OFF
    assert lab.agent("iSCSILogicalUnit", "start", lun_params(lab, 1)).rc == 0        # tgt's rdwr store
    # The measurement behind the refusal: the same LUN by hand on tgt's aio store.
    aio = lab.make_backing_file("lun2.img")
    lab.tgtd.tgtadm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "2", "-b", str(aio),
                    "--bstype", "aio")
    lab.tgtd.tgtadm("--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", "2",
                    "--params", f"mode_page={CACHING_PAGE_WCE_OFF}")
    assert write_cache(lab, 2) == "off"
    flushes = flushes_per_backing_file(lab, {1: 20, 2: 20})
    report(f"fdatasync by tgtd for 20 write-through writes + 1 flush: rdwr {flushes['lun1.img']}, "
           f"aio {flushes['lun2.img']}")
    assert flushes["lun1.img"] >= 21 and flushes["lun2.img"] == 0

    refused = lab.agent("iSCSILogicalUnit", "start", lun_params(lab, 3, tgt_bstype="aio"), instance="l3")
    assert refused.rc == 6 and "aio" in refused.exit_reason and "never flushes" in refused.exit_reason
    assert lab.agent("iSCSILogicalUnit", "validate-all", lun_params(lab, 3, tgt_bstype="aio")).rc == 6
    assert "LUN: 3" not in lab.show()
    # With write_cache=1 the initiator is told there is a cache; the agent says flushes go nowhere.
    accepted = lab.agent("iSCSILogicalUnit", "start", lun_params(lab, 3, tgt_bstype="aio", write_cache="1"),
                         instance="l3")
    assert accepted.rc == 0 and "ignores SYNCHRONIZE CACHE" in accepted.stderr
