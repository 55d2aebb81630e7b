"""Negative controls for the lab's detectors: the I/O error and data mismatch
counters fire when the initiator really sees an error or wrong data.

The lab reports 0 errors and 0 mismatches; that proves something only if the
same initiator code, against a real tgtd, counts them when they happen.
"""
from __future__ import annotations

import os
import shutil
import sys
import time

import pytest

from conftest import REPO, needs_root

pytestmark = [needs_root, pytest.mark.skipif(shutil.which("qemu-io") is None, reason="qemu-utils not installed")]

sys.path.insert(0, str(REPO / "lab"))
from initiators import BLOCK, BLOCKS, Lun, LunInitiator  # noqa: E402

IQN = "iqn.2026-11.test.tgtha:detectors"
USER, PASSWORD = "detector", "Detector-Secret-1"


@pytest.fixture
def initiator(iscsi_lab, tmp_path):
    lab = iscsi_lab
    backing = lab.make_backing_file("detector.img")
    assert lab.agent("tgtuser", "start", {"username": USER, "password": PASSWORD}).rc == 0
    assert lab.agent("iSCSITarget", "start", {"iqn": IQN, "incoming_username": USER}).rc == 0
    assert lab.agent("iSCSILogicalUnit", "start", {"target_iqn": IQN, "lun": "1", "path": str(backing)}).rc == 0
    secret = tmp_path / "chap.secret"
    secret.write_text(PASSWORD)
    os.chmod(secret, 0o600)
    io = LunInitiator(Lun("t", IQN, lab.TARGET_IP, 1), lab.client.name, USER, secret, gap_s=0.02, seed=7)
    io.start()
    wait_until(lambda: len(io.log.completions) >= 20, "no I/O completed")
    yield lab, io, backing
    io.stop()


def wait_until(condition, failure: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(failure)


def test_data_changed_behind_the_initiators_back_is_a_mismatch(initiator):
    lab, io, backing = initiator
    assert io.log.mismatches == [] and io.log.errors == []
    with open(backing, "r+b") as disk:                  # tgt reads through the page cache
        disk.write(b"\x5a" * (BLOCK * BLOCKS))
    wait_until(lambda: io.log.mismatches, "a corrupted block was read back without a mismatch")


def test_a_lun_that_disappears_is_an_io_error(initiator):
    lab, io, backing = initiator
    assert io.log.errors == []
    assert lab.agent("iSCSILogicalUnit", "stop", {"target_iqn": IQN, "lun": "1", "path": str(backing)}).rc == 0
    wait_until(lambda: io.log.errors, "I/O to a deleted LUN was not counted as an error")
