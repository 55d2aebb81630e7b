"""Monitors never fail because another agent is half way through its work.

tgtuser's password change leaves its targets bound to the guard alone for a
moment; iSCSILogicalUnit's stop of a busy LUN sets its target offline for a
moment. A target monitor that runs then saw a failure (Pacemaker restarts the
target: an outage of every LUN on it). Here, for TGTHA_RACE_SECONDS (60 by
default; README gives a 10-minute run), password changes and LUN stop/starts
under I/O loop while every monitor runs once a second: 0 failures allowed.
"""
from __future__ import annotations

import os
import subprocess
import threading
import time


from conftest import needs_root

pytestmark = [needs_root]

SECONDS = float(os.environ.get("TGTHA_RACE_SECONDS", "60"))
SHARED_USER, OWN_USER, OWN_PASSWORD = "racer", "own-racer", "Own-Racer-Secret-1"
IQN = "iqn.2026-11.test.tgtha:race"


def target_params(n: int) -> dict[str, str]:
    if n == 1:      # the LUN-cycling target keeps its own account: its loader must log in again
        return {"iqn": f"{IQN}{n}", "incoming_username": OWN_USER, "incoming_password": OWN_PASSWORD}
    return {"iqn": f"{IQN}{n}", "incoming_username": SHARED_USER}


def test_reloads_and_lun_cycles_never_fail_a_monitor(iscsi_lab, report):
    lab = iscsi_lab
    passwords = ["Race-Secret-A-1", "Race-Secret-B-2"]
    account = {"username": SHARED_USER, "password": passwords[0]}
    assert lab.agent("tgtuser", "start", account).rc == 0
    luns = {}
    for n in (1, 2, 3):
        assert lab.agent("iSCSITarget", "start", target_params(n), instance=f"t{n}").rc == 0
        for lun in (1, 2):
            luns[(n, lun)] = {"target_iqn": f"{IQN}{n}", "lun": str(lun),
                              "path": str(lab.make_backing_file(f"race-{n}-{lun}.img", 16))}
            assert lab.agent("iSCSILogicalUnit", "start", luns[(n, lun)], instance=f"l{n}{lun}").rc == 0
    cycled = luns[(1, 1)]
    loader = subprocess.Popen(lab.client.exec_argv(
        "iscsi-perf", "-i", "iqn.2026-11.test.tgtha:race-loader", "-m", "32", "-b", "256", "-x", "-1",
        lab.url(f"{IQN}1", 1, OWN_USER, OWN_PASSWORD)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()
    failures: list[str] = []
    counts = {"reloads": 0, "lun cycles": 0, "busy lun stops": 0, "monitors": 0}

    def reloads() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            run = lab.agent("tgtuser", "reload", {**account, "password": passwords[i % 2]}, instance="acct")
            if run.rc != 0:
                failures.append(f"reload rc {run.rc}: {run.exit_reason}")
            counts["reloads"] += 1
            time.sleep(0.05)

    def lun_cycles() -> None:
        while not stop.is_set():
            time.sleep(0.3)         # let the loader reconnect and fill the queue
            run = lab.agent("iSCSILogicalUnit", "stop", cycled, instance="l11")
            if run.rc != 0:
                failures.append(f"LUN stop rc {run.rc}: {run.exit_reason}")
            counts["busy lun stops"] += "offline" in run.stderr or "still active" in run.stderr
            run = lab.agent("iSCSILogicalUnit", "start", cycled, instance="l11")
            if run.rc != 0:
                failures.append(f"LUN start rc {run.rc}: {run.exit_reason}")
            counts["lun cycles"] += 1

    def monitors() -> None:
        meta = {"interval": "1000"}
        while not stop.is_set():
            began = time.monotonic()
            checks = [("iSCSITarget", target_params(n), f"t{n}") for n in (1, 2, 3)]
            checks += [("iSCSILogicalUnit", p, f"l{n}{lun}") for (n, lun), p in luns.items() if (n, lun) != (1, 1)]
            for agent, params, instance in checks:
                run = lab.agent(agent, "monitor", params, instance=instance, meta=meta)
                counts["monitors"] += 1
                if run.rc != 0:
                    failures.append(f"{agent} {instance} monitor rc {run.rc}: {run.exit_reason}")
            stop.wait(max(0.0, 1.0 - (time.monotonic() - began)))

    threads = [threading.Thread(target=f) for f in (reloads, lun_cycles, monitors)]
    for thread in threads:
        thread.start()
    try:
        stop.wait(SECONDS)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        loader.kill()
        loader.wait()
    report(f"races over {SECONDS:.0f} s: {counts['reloads']} password changes, {counts['lun cycles']} LUN"
           f" stop/starts under I/O, {counts['monitors']} monitors at 1 s: {len(failures)} failures")
    assert counts["reloads"] > SECONDS and counts["lun cycles"] > SECONDS / 2
    assert failures == [], failures[:5]


def test_a_target_left_offline_by_a_killed_lun_stop_is_reopened_by_its_monitor(iscsi_lab):
    """What a LUN stop killed between "offline" and "ready" leaves: the target
    offline and the stop's mark naming a process that is gone. Before, the
    target stayed offline (every login refused) and its monitor failed."""
    lab = iscsi_lab
    params = {"iqn": f"{IQN}9"}
    assert lab.agent("iSCSITarget", "start", params).rc == 0
    tid = next(line.split()[1].rstrip(":") for line in lab.show().splitlines() if line.endswith(f"{IQN}9"))
    gone = subprocess.Popen(["true"])
    gone.wait()
    mark = lab.state / "tgtha" / f"tgtd{lab.tgtd.control_port}-offline-{tid}.{gone.pid}"
    mark.parent.mkdir(exist_ok=True)
    mark.touch()
    lab.tgtd.tgtadm("--op", "update", "--mode", "target", "--tid", tid, "--name", "state", "--value", "offline")
    run = lab.agent("iSCSITarget", "monitor", params, meta={"interval": "10000"})
    assert run.rc == 0 and "set ready again" in run.stderr, run
    assert "State: ready" in lab.show().split(f"{IQN}9", 1)[1].split("Target ", 1)[0]
    assert not mark.exists()
    # Negative control: offline without any mark is a failure, as before.
    lab.tgtd.tgtadm("--op", "update", "--mode", "target", "--tid", tid, "--name", "state", "--value", "offline")
    assert lab.agent("iSCSITarget", "monitor", params, meta={"interval": "10000"}).rc == 1
