"""ocf:tgtha:iSCSITarget with ocf:tgtha:tgtuser: many targets, one CHAP account, CHAP never off.

Real tgtd in a namespace, real libiscsi logins (iscsi-inq, iscsi-perf) from
another namespace, and a prober that offers AuthMethod=None to every target
in a tight loop (tests/iscsi_login.py).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import AGENTS, Tgtd, agent_env, needs_root
from iscsi_login import GOT_IN

pytestmark = needs_root

USER, PASSWORD = "cluster", "Shared-Secret-0123"
BASE_IQN = "iqn.2026-11.test.tgtha:target"
TESTS = Path(__file__).parent


def iqn(n: int) -> str:
    return f"{BASE_IQN}{n}"


def shared_target(n: int, **extra: str) -> dict[str, str]:
    return {"iqn": iqn(n), "incoming_username": USER, **extra}


def account(password: str = PASSWORD) -> dict[str, str]:
    return {"username": USER, "password": password}


@contextmanager
def prober(lab, iqns: list[str]):
    """Unauthenticated login attempts against every target until the block ends."""
    stop_file, out_file = lab.tmp_path / "probe.stop", lab.tmp_path / "probe.json"
    proc = subprocess.Popen(lab.client.exec_argv(sys.executable, str(TESTS / "iscsi_login.py"),
                                                 lab.TARGET_IP, str(stop_file), str(out_file), *iqns))
    result: dict = {}
    try:
        deadline = time.monotonic() + 10
        while not Path(str(out_file) + ".ready").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        yield result
    finally:
        stop_file.touch()
        proc.wait(timeout=30)
        result.update(json.loads(out_file.read_text()))


LOADER = "iqn.2026-11.test.tgtha:loader"


@contextmanager
def loaded(lab, target_iqn: str, lun: int = 1, password: str = PASSWORD, initiator: str = LOADER):
    """iscsi-perf reading from a LUN with CHAP, reconnecting whenever it is cut off."""
    log = open(lab.tmp_path / f"perf-{time.monotonic_ns()}.log", "w")
    proc = subprocess.Popen(lab.client.exec_argv(
        "iscsi-perf", "-i", initiator, "-m", "32", "-b", "256", "-x", "-1",
        lab.url(target_iqn, lun, USER, password)), stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()
        log.close()


def add_lun(lab, tid: int, lun: int = 1) -> None:
    backing = lab.make_backing_file(f"t{tid}-lun{lun}.img")
    lab.tgtd.tgtadm("--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", str(lun),
                    "-b", str(backing))


def tid_of(lab, target_iqn: str) -> int:
    match = re.search(rf"^Target (\d+): {re.escape(target_iqn)}$", lab.show(), re.M)
    assert match, f"{target_iqn} not in tgtd"
    return int(match.group(1))


def wait_for_sessions(lab, target_iqn: str, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        block = lab.show().split(f": {target_iqn}\n", 1)[1].split("\nTarget ", 1)[0]
        if "I_T nexus: " in block:
            return
        time.sleep(0.1)
    pytest.fail(f"no initiator session reached {target_iqn}")


# ---------------------------------------------------------------- the shared account

def test_six_targets_share_one_account_and_refuse_everyone_else(iscsi_lab):
    lab = iscsi_lab
    assert lab.agent("tgtuser", "start", account()).rc == 0
    for n in range(1, 7):
        assert lab.agent("iSCSITarget", "start", shared_target(n), instance=f"t{n}").rc == 0
    for n in range(1, 7):
        assert lab.login(iqn(n), USER, PASSWORD), f"CHAP login to target {n}"
        assert not lab.login(iqn(n), USER, "wrong-password-99")
        assert not lab.login(iqn(n))

    # Stop one, then all but one: the rest keep working and keep refusing.
    assert lab.agent("iSCSITarget", "stop", shared_target(3), instance="t3").rc == 0
    assert USER in lab.accounts()
    for n in (1, 2, 4, 5, 6):
        assert lab.login(iqn(n), USER, PASSWORD) and not lab.login(iqn(n))
    for n in (1, 2, 4, 5):
        assert lab.agent("iSCSITarget", "stop", shared_target(n), instance=f"t{n}").rc == 0
    assert lab.login(iqn(6), USER, PASSWORD) and not lab.login(iqn(6))
    assert lab.agent("iSCSITarget", "monitor", shared_target(6), instance="t6").rc == 0
    assert lab.agent("iSCSITarget", "stop", shared_target(6), instance="t6").rc == 0
    assert lab.agent("tgtuser", "stop", account()).rc == 0
    assert lab.accounts() == [] and "Target" not in lab.show()


def test_no_unauthenticated_login_gets_in_through_starts_stops_kills_reloads_and_loaded_stops(
        iscsi_lab, report):
    lab = iscsi_lab
    targets = list(range(1, 7))
    password = PASSWORD
    with prober(lab, [iqn(n) for n in targets]) as probed:
        assert lab.agent("tgtuser", "start", account()).rc == 0
        for n in targets:
            assert lab.agent("iSCSITarget", "start", shared_target(n), instance=f"t{n}").rc == 0
        for n in targets[:5]:
            assert lab.agent("iSCSITarget", "stop", shared_target(n), instance=f"t{n}").rc == 0
            assert lab.agent("iSCSITarget", "start", shared_target(n), instance=f"t{n}").rc == 0

        # kill -9 in the middle of a start, then what Pacemaker does: stop, start.
        env = agent_env(lab.state, "t6", {"control_port": str(lab.tgtd.control_port), **shared_target(6)})
        for delay in (0.0, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.045, 0.06, 0.1):
            assert lab.agent("iSCSITarget", "stop", shared_target(6), instance="t6").rc == 0
            start = subprocess.Popen(lab.node.exec_argv(str(AGENTS / "iSCSITarget"), "start"), env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(delay)
            start.kill()
            start.wait()
            assert lab.agent("iSCSITarget", "stop", shared_target(6), instance="t6").rc == 0
            assert lab.agent("iSCSITarget", "start", shared_target(6), instance="t6").rc == 0

        # New passwords, applied by reload while the targets run.
        for round_ in range(3):
            password = f"Rotated-Secret-{round_}"
            assert lab.agent("tgtuser", "reload", account(password)).rc == 0
            assert lab.login(iqn(1), USER, password) and not lab.login(iqn(1), USER, PASSWORD)

        # Stops under load, the initiator reconnecting all the while.
        add_lun(lab, tid_of(lab, iqn(1)))
        for _ in range(3):
            with loaded(lab, iqn(1), password=password):
                wait_for_sessions(lab, iqn(1))
                assert lab.agent("iSCSITarget", "stop", shared_target(1), instance="t1").rc == 0
                assert lab.agent("iSCSITarget", "start", shared_target(1), instance="t1").rc == 0
                add_lun(lab, tid_of(lab, iqn(1)))
                time.sleep(0.5)
        for n in targets:
            assert lab.agent("iSCSITarget", "monitor", shared_target(n), instance=f"t{n}").rc == 0
    attempts = sum(probed["counts"].values())
    report(f"unauthenticated prober: {attempts} login attempts over 6 targets, outcomes "
           f"{probed['counts']}, got in: {probed['counts'].get(GOT_IN, 0)}")
    assert attempts > 1000
    assert probed["counts"].get(GOT_IN, 0) == 0, probed["got_in"]


@pytest.mark.parametrize("portals", ["10.82.0.1:3260", "0.0.0.0:3260"])
@pytest.mark.parametrize("initiator", ["reconnecting", "frozen"])
def test_target_stop_under_load_takes_under_two_seconds(iscsi_lab, report, portals, initiator):
    lab = iscsi_lab
    params = shared_target(1, portals=portals)
    assert lab.agent("tgtuser", "start", account()).rc == 0
    took = []
    for _ in range(3):
        assert lab.agent("iSCSITarget", "start", params).rc == 0
        add_lun(lab, tid_of(lab, iqn(1)))
        with loaded(lab, iqn(1)) as perf:
            wait_for_sessions(lab, iqn(1))
            time.sleep(1.0)
            if initiator == "frozen":
                os.kill(perf.pid, signal.SIGSTOP)  # zero window: tgtd's send queue stays full
                time.sleep(1.0)
            began = time.monotonic()
            stop = lab.agent("iSCSITarget", "stop", params)
            took.append(time.monotonic() - began)
            assert stop.rc == 0, stop
            assert iqn(1) not in lab.show()
    report(f"iSCSITarget stop under iscsi-perf load ({initiator}, portals={portals}): "
           + ", ".join(f"{t:.2f}" for t in took) + " s")
    assert max(took) < 2.0


# ---------------------------------------------------------------- accounts

def test_tgtuser_reload_changes_the_password_without_touching_sessions(iscsi_lab):
    lab = iscsi_lab
    assert lab.agent("tgtuser", "start", account()).rc == 0
    assert lab.agent("iSCSITarget", "start", shared_target(1)).rc == 0
    add_lun(lab, tid_of(lab, iqn(1)))
    with loaded(lab, iqn(1)) as perf:
        wait_for_sessions(lab, iqn(1))
        sessions_before = re.findall(r"I_T nexus: \d+", lab.show())
        assert lab.agent("tgtuser", "reload", account("Brand-New-Secret")).rc == 0
        time.sleep(1)
        assert re.findall(r"I_T nexus: \d+", lab.show()) == sessions_before
        assert perf.poll() is None
    assert lab.login(iqn(1), USER, "Brand-New-Secret")
    assert not lab.login(iqn(1), USER, PASSWORD)
    assert lab.agent("iSCSITarget", "monitor", shared_target(1)).rc == 0
    assert lab.agent("tgtuser", "monitor", account("Brand-New-Secret")).rc == 0


def sessions_by_initiator(lab, target_iqn: str) -> dict[str, str]:
    """initiator name -> I_T nexus number, of the target's sessions now."""
    block = lab.show().split(f": {target_iqn}\n", 1)[1].split("\nTarget ", 1)[0]
    return {name: nexus for nexus, name in re.findall(r"I_T nexus: (\d+)\n\s+Initiator: (\S+)", block)}


def test_reload_of_allowed_initiators_keeps_admitted_sessions_and_enforces_the_new_acl(iscsi_lab):
    """reload-agent (allowed_initiators is reloadable): the loader, admitted before
    and after, keeps its session under load; an initiator taken off the list loses
    its session and cannot log in again; one put on it can log in."""
    lab = iscsi_lab
    other, client = "iqn.2026-11.test.tgtha:other", "iqn.2026-11.test.tgtha:client"   # lab.login's name
    before = shared_target(1, allowed_initiators=f"{LOADER} {other}")
    after = shared_target(1, allowed_initiators=f"{LOADER} {client}")
    assert lab.agent("tgtuser", "start", account()).rc == 0
    assert lab.agent("iSCSITarget", "start", before).rc == 0
    add_lun(lab, tid_of(lab, iqn(1)))
    assert not lab.login(iqn(1), USER, PASSWORD), "the client is not admitted yet (the check's control)"
    with loaded(lab, iqn(1)) as perf, loaded(lab, iqn(1), initiator=other):
        deadline = time.monotonic() + 20
        while len(sessions_by_initiator(lab, iqn(1))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        sessions = sessions_by_initiator(lab, iqn(1))
        assert set(sessions) == {LOADER, other}
        assert lab.agent("iSCSITarget", "reload-agent", after).rc == 0
        time.sleep(2)                       # iscsi-perf retries a lost session at once
        assert sessions_by_initiator(lab, iqn(1)) == {LOADER: sessions[LOADER]}
        assert perf.poll() is None
    assert lab.login(iqn(1), USER, PASSWORD), "the client is admitted now"
    assert lab.agent("iSCSITarget", "monitor", after).rc == 0
    assert lab.agent("iSCSITarget", "monitor", before).rc == 1, "the monitor compares the ACL"


def test_reload_by_address_keeps_a_session_its_network_still_admits(iscsi_lab):
    lab = iscsi_lab
    before = shared_target(1, allowed_initiators=lab.CLIENT_IP)
    after = shared_target(1, allowed_initiators="10.82.0.0/24 192.0.2.7")
    assert lab.agent("tgtuser", "start", account()).rc == 0
    assert lab.agent("iSCSITarget", "start", before).rc == 0
    add_lun(lab, tid_of(lab, iqn(1)))
    with loaded(lab, iqn(1)) as perf:
        wait_for_sessions(lab, iqn(1))
        sessions = sessions_by_initiator(lab, iqn(1))
        assert lab.agent("iSCSITarget", "reload-agent", after).rc == 0
        time.sleep(1)
        assert sessions_by_initiator(lab, iqn(1)) == sessions and perf.poll() is None
        # Narrowed to an address that is not the client's: its session goes.
        assert lab.agent("iSCSITarget", "reload-agent", shared_target(1, allowed_initiators="192.0.2.7")).rc == 0
        time.sleep(1)
        assert sessions_by_initiator(lab, iqn(1)) == {}
    assert not lab.login(iqn(1), USER, PASSWORD)


def test_reload_applies_additional_parameters_to_the_running_target(iscsi_lab):
    lab = iscsi_lab
    assert lab.agent("tgtuser", "start", account()).rc == 0
    assert lab.agent("iSCSITarget", "start", shared_target(1)).rc == 0
    tid = tid_of(lab, iqn(1))
    changed = shared_target(1, additional_parameters="MaxRecvDataSegmentLength=65536 DefaultTime2Wait=0")
    assert lab.agent("iSCSITarget", "reload-agent", changed).rc == 0
    shown = lab.tgtd.tgtadm("--mode", "target", "--op", "show", "--tid", str(tid)).stdout
    assert "MaxRecvDataSegmentLength=65536" in shown and "DefaultTime2Wait=0" in shown
    assert lab.agent("iSCSITarget", "monitor", changed).rc == 0


def test_reload_of_a_stopped_target_starts_nothing_and_bad_input_changes_nothing(iscsi_lab):
    lab = iscsi_lab
    assert lab.agent("tgtuser", "start", account()).rc == 0
    assert lab.agent("iSCSITarget", "reload-agent", shared_target(1)).rc == 0
    assert f": {iqn(1)}" not in lab.show()
    assert lab.agent("iSCSITarget", "start", shared_target(1, allowed_initiators=lab.CLIENT_IP)).rc == 0
    bad = lab.agent("iSCSITarget", "reload-agent", shared_target(1, allowed_initiators="not-an-address"))
    assert bad.rc == 6 and "allowed_initiators" in bad.exit_reason
    assert lab.agent("iSCSITarget", "monitor", shared_target(1, allowed_initiators=lab.CLIENT_IP)).rc == 0


# ---------------------------------------------------------------- mutual CHAP

TARGET_USER, TARGET_PASSWORD = "target-side", "Target-Side-Secret-9"


def mutual_login(lab, target_iqn: str, target_password: str = TARGET_PASSWORD) -> bool:
    """An initiator that also checks the target's credentials (libiscsi's mutual CHAP:
    it refuses a target whose answer to its own challenge is wrong or missing)."""
    env = dict(os.environ, LIBISCSI_CHAP_USERNAME=USER, LIBISCSI_CHAP_PASSWORD=PASSWORD,
               LIBISCSI_CHAP_TARGET_USERNAME=TARGET_USER, LIBISCSI_CHAP_TARGET_PASSWORD=target_password)
    return lab.client.run("iscsi-inq", "-i", "iqn.2026-11.test.tgtha:client", lab.url(target_iqn, 0),
                          check=False, timeout=30, env=env).returncode == 0


OUTGOING = {"username": TARGET_USER, "password": TARGET_PASSWORD}
MUTUAL = shared_target(1, outgoing_username=TARGET_USER)


@pytest.fixture
def mutual_lab(iscsi_lab):
    """Two tgtuser accounts (the initiators', the target's) and target 1 using both."""
    assert iscsi_lab.agent("tgtuser", "start", account()).rc == 0
    assert iscsi_lab.agent("tgtuser", "start", OUTGOING, instance="out").rc == 0
    assert iscsi_lab.agent("iSCSITarget", "start", MUTUAL).rc == 0
    return iscsi_lab


def test_mutual_chap_lets_the_initiator_check_the_targets_credentials(mutual_lab):
    lab, mutual, outgoing = mutual_lab, MUTUAL, OUTGOING
    assert lab.agent("iSCSITarget", "start", shared_target(2)).rc == 0
    assert mutual_login(lab, iqn(1))
    assert not mutual_login(lab, iqn(1), "Not-The-Target-Secret"), "wrong target credentials: refused"
    # The control: a target without an outgoing account cannot prove itself, though
    # a one-way login to it works.
    assert not mutual_login(lab, iqn(2)) and lab.login(iqn(2), USER, PASSWORD)
    assert lab.agent("iSCSITarget", "monitor", mutual).rc == 0
    # A new password for the target's account (tgtuser reload) keeps it bound.
    new = {**outgoing, "password": "Target-Side-Secret-10"}
    assert lab.agent("tgtuser", "reload", new, instance="out").rc == 0
    assert mutual_login(lab, iqn(1), "Target-Side-Secret-10")
    assert lab.agent("iSCSITarget", "monitor", mutual).rc == 0
    # Stop only unbinds: the account is tgtuser's.
    assert lab.agent("iSCSITarget", "stop", mutual).rc == 0
    assert TARGET_USER in lab.accounts()


def test_mutual_chap_monitor_fails_when_the_outgoing_account_is_gone(mutual_lab):
    lab, mutual = mutual_lab, MUTUAL
    assert lab.agent("tgtuser", "stop", OUTGOING, instance="out").rc == 0
    monitor = lab.agent("iSCSITarget", "monitor", mutual)
    assert monitor.rc == 1 and "outgoing account" in monitor.exit_reason
    assert lab.agent("iSCSITarget", "stop", mutual).rc == 0
    missing = lab.agent("iSCSITarget", "start", mutual)
    assert missing.rc == 5 and TARGET_USER in missing.exit_reason
    assert f": {iqn(1)}" not in lab.show()


@pytest.mark.parametrize("params, reason", [
    ({"outgoing_username": USER}, "another account"),
    ({"incoming_username": "", "outgoing_username": TARGET_USER}, "needs incoming_username"),
    ({"outgoing_username": "bad name"}, "outgoing_username"),
])
def test_mutual_chap_bad_input_is_a_configuration_error(iscsi_lab, params, reason):
    result = iscsi_lab.agent("iSCSITarget", "validate-all", {**shared_target(1), **params})
    assert result.rc == 6 and reason in result.exit_reason


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_a_reload_killed_half_way_is_finished_by_the_next_monitor(iscsi_lab):
    """kill -9 (an op timeout) between deleting the account and creating it
    again: targets stay closed (guard only), and the next tgtuser monitor
    finishes the change instead of reporting the account gone (which would
    restart the account and every target on it)."""
    lab = iscsi_lab
    assert lab.agent("tgtuser", "start", account()).rc == 0
    assert lab.agent("iSCSITarget", "start", shared_target(1)).rc == 0
    params = {"control_port": str(lab.tgtd.control_port), **account("Killed-Midway-1")}
    # The 5th management request of this reload is the first after the account's delete
    # (a change in how many requests come before it moves it: the next assertion says so).
    argv = lab.node.exec_argv("strace", "-f", "-o", "/dev/null", "-e", "trace=connect",
                              "-e", "inject=connect:signal=SIGKILL:when=5", str(AGENTS / "tgtuser"), "reload")
    killed = subprocess.run(argv, env=agent_env(lab.state, "rsc", params), capture_output=True, text=True)
    assert killed.returncode != 0 and USER not in lab.accounts(), "the kill did not land between delete and create"
    assert not lab.login(iqn(1), USER, "Killed-Midway-1") and not lab.login(iqn(1))      # closed, not open
    assert lab.agent("tgtuser", "monitor", account("Killed-Midway-1"), meta={"interval": "10000"}).rc == 0
    assert lab.login(iqn(1), USER, "Killed-Midway-1")
    assert lab.agent("iSCSITarget", "monitor", shared_target(1)).rc == 0


def test_tgtuser_stop_before_its_targets_locks_them_instead_of_opening_them(iscsi_lab):
    lab = iscsi_lab
    assert lab.agent("tgtuser", "start", account()).rc == 0
    for n in (1, 2):
        assert lab.agent("iSCSITarget", "start", shared_target(n), instance=f"t{n}").rc == 0
    stop = lab.agent("tgtuser", "stop", account())
    assert stop.rc == 0
    assert "still bound to target(s)" in stop.stderr and "Missing constraint" in stop.stderr
    for n in (1, 2):
        assert not lab.login(iqn(n)) and not lab.login(iqn(n), USER, PASSWORD)
        monitor = lab.agent("iSCSITarget", "monitor", shared_target(n), instance=f"t{n}")
        assert monitor.rc == 1 and "no longer bound" in monitor.exit_reason
    for n in (1, 2):
        assert lab.agent("iSCSITarget", "stop", shared_target(n), instance=f"t{n}").rc == 0
    assert lab.accounts() == []  # the guard goes with the last target that held it


def test_tgtuser_stop_closes_a_target_bound_by_hand_without_the_guard(iscsi_lab):
    lab = iscsi_lab
    assert lab.agent("tgtuser", "start", account()).rc == 0
    lab.tgtd.tgtadm("--op", "new", "--mode", "target", "--tid", "9", "-T", iqn(9))
    lab.tgtd.tgtadm("--op", "bind", "--mode", "target", "--tid", "9", "-I", "ALL")
    lab.tgtd.tgtadm("--mode", "account", "--op", "bind", "--tid", "9", "--user", USER)
    assert lab.agent("tgtuser", "stop", account()).rc == 0
    assert "State: offline" in lab.show()
    assert not lab.login(iqn(9))


def test_own_account_targets_share_it_and_the_last_one_deletes_it(iscsi_lab):
    lab = iscsi_lab
    own = {"incoming_username": "own", "incoming_password": "Own-Secret-000"}
    for n in (1, 2):
        assert lab.agent("iSCSITarget", "start", {"iqn": iqn(n), **own}, instance=f"t{n}").rc == 0
    assert lab.login(iqn(2), "own", "Own-Secret-000") and not lab.login(iqn(2))
    assert lab.agent("iSCSITarget", "stop", {"iqn": iqn(1), **own}, instance="t1").rc == 0
    assert "own" in lab.accounts() and lab.login(iqn(2), "own", "Own-Secret-000")
    assert lab.agent("iSCSITarget", "stop", {"iqn": iqn(2), **own}, instance="t2").rc == 0
    assert lab.accounts() == []


def test_own_account_mode_never_deletes_tgtusers_account(iscsi_lab):
    lab = iscsi_lab
    assert lab.agent("tgtuser", "start", account()).rc == 0
    params = {"iqn": iqn(1), "incoming_username": USER, "incoming_password": PASSWORD}
    assert lab.agent("iSCSITarget", "start", params).rc == 0
    assert lab.agent("iSCSITarget", "stop", params).rc == 0
    assert USER in lab.accounts()


def test_own_account_with_another_password_than_the_existing_one_is_refused(iscsi_lab):
    lab = iscsi_lab
    assert lab.agent("tgtuser", "start", account()).rc == 0
    params = {"iqn": iqn(1), "incoming_username": USER, "incoming_password": "Not-The-Same-1"}
    start = lab.agent("iSCSITarget", "start", params)
    assert start.rc == 1 and "already exists on this node with another password" in start.exit_reason
    assert "Not-The-Same-1" not in start.stderr + start.stdout
    assert "Target" not in lab.show()


# ---------------------------------------------------------------- OCF behaviour

def test_start_and_stop_are_idempotent_and_probes_say_not_running(iscsi_lab):
    lab = iscsi_lab
    params = {"iqn": iqn(1)}
    assert lab.agent("iSCSITarget", "monitor", params).rc == 7
    assert lab.agent("iSCSITarget", "stop", params).rc == 0
    assert lab.agent("iSCSITarget", "start", params).rc == 0
    assert lab.agent("iSCSITarget", "start", params).rc == 0
    assert lab.agent("iSCSITarget", "monitor", params, meta={"interval": "10000"}).rc == 0
    assert lab.login(iqn(1))  # no account configured: open, as asked, and ACL ALL by default
    assert lab.agent("iSCSITarget", "stop", params).rc == 0
    assert lab.agent("iSCSITarget", "stop", params).rc == 0
    assert lab.agent("tgtuser", "monitor", account()).rc == 7
    assert lab.agent("tgtuser", "reload", account()).rc == 7  # reload never starts it
    assert lab.agent("tgtuser", "stop", account()).rc == 0
    assert lab.accounts() == []


@pytest.mark.parametrize("tid", ["999999999", "1000000000", "2147483646"])
def test_every_tid_the_parameter_takes_is_served_up_to_ten_digits(iscsi_lab, tid):
    """Ten-digit tids were once not read back from tgtd's show (start failed: 'ACL is []')."""
    lab = iscsi_lab
    params = {"iqn": iqn(3), "tid": tid}
    assert lab.agent("iSCSITarget", "start", params).rc == 0
    assert tid_of(lab, iqn(3)) == int(tid)
    assert lab.agent("iSCSITarget", "monitor", params, meta={"interval": "10000"}).rc == 0
    assert lab.agent("iSCSITarget", "stop", params).rc == 0
    assert lab.agent("iSCSITarget", "monitor", params).rc == 7


def test_tids_are_allocated_without_collisions_even_in_parallel(iscsi_lab):
    lab = iscsi_lab
    lab.tgtd.tgtadm("--op", "new", "--mode", "target", "--tid", "2", "-T", "iqn.2026-11.test:someone-else")
    threads = [threading.Thread(target=lab.agent, args=("iSCSITarget", "start", {"iqn": iqn(n)}),
                                kwargs={"instance": f"t{n}"}) for n in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(run.rc == 0 for run in lab.agent_runs), lab.agent_runs
    tids = {n: tid_of(lab, iqn(n)) for n in range(1, 9)}
    assert len(set(tids.values()) | {2}) == 9
    # Derived from the IQN: the same tid again after a stop (and on another node).
    for n in (1, 5):
        assert lab.agent("iSCSITarget", "stop", {"iqn": iqn(n)}).rc == 0
        assert lab.agent("iSCSITarget", "start", {"iqn": iqn(n)}).rc == 0
        assert tid_of(lab, iqn(n)) == tids[n]


sys.path.insert(0, str(AGENTS.parent / "lib"))
from tgtha.iscsitarget import AUTO_TID_SPAN, automatic_tid  # noqa: E402


def colliding_iqns() -> tuple[str, str]:
    """Two IQNs with the same automatic tid (found by search: ~2**14.5 names)."""
    seen: dict[int, str] = {}
    n = 0
    while True:
        name = f"{BASE_IQN}collide{n}"
        tid = automatic_tid(name)
        if tid in seen:
            return seen[tid], name
        seen[tid] = name
        n += 1


def test_an_automatic_tid_is_a_function_of_the_iqn_alone_whatever_the_start_order(iscsi_lab):
    lab = iscsi_lab
    names = [iqn(n) for n in range(1, 7)]
    for order in (names, names[::-1]):
        for name in order:
            assert lab.agent("iSCSITarget", "start", {"iqn": name}).rc == 0
        assert {name: tid_of(lab, name) for name in names} == {name: automatic_tid(name) for name in names}
        for name in order:
            assert lab.agent("iSCSITarget", "stop", {"iqn": name}).rc == 0
    assert all(1 <= automatic_tid(name) <= AUTO_TID_SPAN < 2**28 for name in names)


def test_two_hundred_targets_without_a_tid_get_two_hundred_distinct_tids(iscsi_lab):
    """180 started one after another, then 20 at once."""
    lab = iscsi_lab
    names = [f"{BASE_IQN}many{n}" for n in range(200)]
    for name in names[:180]:
        assert lab.agent("iSCSITarget", "start", {"iqn": name}, instance=name.rsplit(":", 1)[1]).rc == 0
    threads = [threading.Thread(target=lab.agent, args=("iSCSITarget", "start", {"iqn": name}),
                                kwargs={"instance": name.rsplit(":", 1)[1]}) for name in names[180:]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(run.rc == 0 for run in lab.agent_runs), [r for r in lab.agent_runs if r.rc]
    shown = dict(re.findall(r"^Target (\d+): (\S+)$", lab.show(), re.M))
    assert len(shown) == 200 and sorted(shown.values()) == sorted(names)
    assert all(int(tid) == automatic_tid(name) for tid, name in shown.items())


def test_two_iqns_with_one_automatic_tid_are_refused_not_renumbered(iscsi_lab):
    """Before: the second took the next tid, so which target had which tid (and
    its LUNs which NAA-3 designator) depended on the start order on each node."""
    lab = iscsi_lab
    first, second = colliding_iqns()
    assert lab.agent("iSCSITarget", "start", {"iqn": first}).rc == 0
    before = lab.show()
    refused = lab.agent("iSCSITarget", "start", {"iqn": second})
    assert refused.rc == 6 and "the same automatic tid" in refused.exit_reason, refused
    assert lab.show() == before
    # A tid held by a target made by hand on this node only: this node's problem (1).
    assert lab.agent("iSCSITarget", "stop", {"iqn": first}).rc == 0
    lab.tgtd.tgtadm("--op", "new", "--mode", "target", "--tid", str(automatic_tid(first)),
                    "-T", "iqn.2026-11.test:by-hand")
    local = lab.agent("iSCSITarget", "start", {"iqn": first})
    assert local.rc == 1 and "used by target iqn.2026-11.test:by-hand" in local.exit_reason, local


def test_monitor_is_exact(iscsi_lab):
    lab = iscsi_lab
    assert lab.agent("tgtuser", "start", account()).rc == 0
    assert lab.agent("iSCSITarget", "start", shared_target(10, tid="10")).rc == 0
    # The stock agent's unanchored match would call ...target1 running here.
    assert lab.agent("iSCSITarget", "monitor", shared_target(1)).rc == 7
    wrong_tid = lab.agent("iSCSITarget", "monitor", shared_target(10, tid="11"))
    assert wrong_tid.rc == 1 and "tid 10" in wrong_tid.exit_reason
    other_acl = lab.agent("iSCSITarget", "monitor", shared_target(10, tid="10", allowed_initiators="10.82.0.2"))
    assert other_acl.rc == 1 and "ACL" in other_acl.exit_reason
    no_chap = lab.agent("iSCSITarget", "monitor", {"iqn": iqn(10), "tid": "10"})
    assert no_chap.rc == 1 and "incoming accounts" in no_chap.exit_reason
    lab.tgtd.tgtadm("--mode", "account", "--op", "unbind", "--tid", "10", "--user", USER)
    lost = lab.agent("iSCSITarget", "monitor", shared_target(10, tid="10"))
    assert lost.rc == 1 and "no longer bound" in lost.exit_reason
    # A start repairs it (rebuilds the target), after which it is exact again.
    assert lab.agent("iSCSITarget", "start", shared_target(10, tid="10")).rc == 0
    assert lab.agent("iSCSITarget", "monitor", shared_target(10, tid="10")).rc == 0


@pytest.mark.parametrize("params, rc, reason", [
    ({"iqn": "iqn.2026-11.Test:Upper"}, 6, "lower case"),
    ({"iqn": "target1"}, 6, "iqn., eui. or naa."),
    ({"iqn": iqn(1), "tid": "0"}, 6, "tid"),
    ({"iqn": iqn(1), "tid": "x"}, 6, "tid"),
    ({"iqn": iqn(1), "tid": "2147483647"}, 6, "placeholder"),
    ({"iqn": iqn(1), "portals": "10.82.0.1:99999"}, 6, "portals"),
    ({"iqn": iqn(1), "allowed_initiators": "10.82.0.300"}, 6, "allowed_initiators"),
    ({"iqn": iqn(1), "implementation": "lio"}, 6, "tgt only"),
    ({"iqn": iqn(1), "iser_portals": "10.82.0.1"}, 6, "iser"),
    ({"iqn": iqn(1), "incoming_password": "Lonely-Password-1"}, 6, "without incoming_username"),
    ({"iqn": iqn(1), "incoming_username": "a,b"}, 6, "commas"),
    ({"iqn": iqn(1), "incoming_username": "nobody-made-me"}, 5, "does not exist on this node"),
    ({"iqn": iqn(1), "additional_parameters": "novalue"}, 6, "name=value"),
    ({"iqn": iqn(1), "additional_parameters": "NoSuchTgtParameter=1"}, 1, "NoSuchTgtParameter"),
    ({"iqn": iqn(1), "tid": "5"}, 1, "already used by target iqn.2026-11.test:holder"),
])
def test_bad_input_is_refused_with_a_reason_and_leaves_nothing(iscsi_lab, params, rc, reason):
    lab = iscsi_lab
    lab.tgtd.tgtadm("--op", "new", "--mode", "target", "--tid", "5", "-T", "iqn.2026-11.test:holder")
    before = (lab.show(), lab.accounts())
    start = lab.agent("iSCSITarget", "start", params)
    assert (start.rc, reason in start.exit_reason) == (rc, True), start
    assert (lab.show(), lab.accounts()) == before
    assert "Lonely-Password-1" not in start.stderr
    # validate-all judges the parameters alone: 6 bans a resource on every node.
    validate = lab.agent("iSCSITarget", "validate-all", params)
    assert validate.rc == (rc if rc == 6 else 0), validate


def test_tgtd_not_running_and_not_installed(iscsi_lab):
    lab = iscsi_lab
    lab.tgtd.stop()
    start = lab.agent("iSCSITarget", "start", {"iqn": iqn(1)})
    assert start.rc == 1 and "tgtd is not running" in start.exit_reason
    assert lab.agent("iSCSITarget", "monitor", {"iqn": iqn(1)}).rc == 7
    assert lab.agent("iSCSITarget", "stop", {"iqn": iqn(1)}).rc == 0
    assert lab.agent("tgtuser", "stop", account()).rc == 0
    # Without the tgt package (tgtd hidden in a private mount namespace):
    hide = ["unshare", "--mount", "sh", "-c", 'mount --bind /dev/null "$(command -v tgtd)" && exec "$@"', "-"]
    for agent, params in (("iSCSITarget", {"iqn": iqn(1)}), ("tgtuser", account())):
        env = agent_env(lab.state, "rsc", params)
        proc = subprocess.run(hide + [str(AGENTS / agent), "start"], env=env, capture_output=True, text=True)
        assert proc.returncode == 5 and "tgtd is not installed" in proc.stderr


def test_start_ordered_right_after_tgtd_waits_for_it_to_listen(iscsi_lab, tmp_path):
    """tgt's init script returns once tgtd is forked, before it listens: the
    starts ordered after it (the account, a target) wait a few seconds instead of failing."""
    lab = iscsi_lab
    port = lab.tgtd.control_port
    lab.tgtd.stop()
    starts = []
    starters = [threading.Thread(target=lambda a=agent, p=params: starts.append(lab.agent(a, "start", p)))
                for agent, params in (("tgtuser", account()), ("iSCSITarget", {"iqn": iqn(1)}))]
    for starter in starters:
        starter.start()
    time.sleep(1.0)
    lab.tgtd = Tgtd(lab.node, port, f"{lab.TARGET_IP}:3260", tmp_path / "tgtd-late.log")
    try:
        for starter in starters:
            starter.join(timeout=30)
        assert [run.rc for run in starts] == [0, 0], starts
        assert lab.agent("tgtuser", "monitor", account()).rc == 0
        assert lab.agent("iSCSITarget", "monitor", {"iqn": iqn(1)}).rc == 0
    finally:
        lab.tgtd.stop()


def test_the_password_never_reaches_a_command_line_a_log_or_a_trace(iscsi_lab, report):
    lab = iscsi_lab
    secret = "Very-Secret-Chap-4711"
    samples, seen = 0, []
    stop = threading.Event()

    def sample_cmdlines() -> None:
        nonlocal samples
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            if secret.encode() in f.read():
                                seen.append(pid)
                    except OSError:
                        pass
            samples += 1

    sampler = threading.Thread(target=sample_cmdlines)
    sampler.start()
    trace = {"OCF_TRACE_RA": "1", "HA_debug": "1"}
    try:
        for _ in range(5):
            assert lab.agent("tgtuser", "start", account(secret), env=trace).rc == 0
            for n in (1, 2):
                own = {"iqn": iqn(n + 2), "incoming_username": "own", "incoming_password": secret}
                assert lab.agent("iSCSITarget", "start", own, env=trace, instance=f"o{n}").rc == 0
                assert lab.agent("iSCSITarget", "start", shared_target(n), env=trace, instance=f"t{n}").rc == 0
            assert lab.agent("tgtuser", "reload", account(secret + "x"), env=trace).rc == 0
            assert lab.agent("tgtuser", "reload", account(secret), env=trace).rc == 0
            # Failures print reasons: none of them may carry the secret.
            lab.agent("iSCSITarget", "start", {"iqn": iqn(7), "incoming_username": USER,
                                               "incoming_password": secret + "-other"}, env=trace)
            lab.agent("tgtuser", "start", {"username": "bad,name", "password": secret}, env=trace)
            for n in (1, 2):
                own = {"iqn": iqn(n + 2), "incoming_username": "own", "incoming_password": secret}
                assert lab.agent("iSCSITarget", "stop", own, env=trace, instance=f"o{n}").rc == 0
                assert lab.agent("iSCSITarget", "stop", shared_target(n), env=trace, instance=f"t{n}").rc == 0
            assert lab.agent("tgtuser", "stop", account(secret), env=trace).rc == 0
    finally:
        stop.set()
        sampler.join()
    report(f"password on a command line: sampled /proc/*/cmdline {samples} times during "
           f"{len(lab.agent_runs)} agent runs, found {len(seen)}")
    assert samples > 20 and seen == []
    outputs = "".join(run.stdout + run.stderr for run in lab.agent_runs)
    assert secret not in outputs
    assert secret not in Path(lab.tgtd.log.name).read_text()


def test_tgtds_debug_output_never_gets_the_password_from_our_agents(iscsi_lab):
    """tgtd -d 1 (or debug=on) logs every management request's parameters."""
    lab = iscsi_lab
    secret = "Debug-Secret-Chap-0815"
    log = Path(lab.tgtd.log.name)
    lab.tgtd.tgtadm("--mode", "system", "--op", "update", "--name", "debug", "--value", "on")
    # Negative control: an account made with tgtadm lands in the log, password and all.
    lab.tgtd.tgtadm("--mode", "account", "--op", "new", "--user", "by-hand", "--password", secret + "-hand")
    deadline = time.monotonic() + 5
    while secret + "-hand" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert secret + "-hand" in log.read_text()
    assert lab.agent("tgtuser", "start", account(secret)).rc == 0
    assert lab.agent("tgtuser", "reload", account(secret + "x")).rc == 0
    own = {"iqn": iqn(3), "incoming_username": "own", "incoming_password": secret}
    assert lab.agent("iSCSITarget", "start", own).rc == 0
    assert lab.agent("iSCSITarget", "stop", own).rc == 0
    assert lab.agent("tgtuser", "stop", account(secret + "x")).rc == 0
    time.sleep(0.5)
    assert secret not in log.read_text().replace(secret + "-hand", "")
    assert "debug: on" in lab.tgtd.tgtadm("--mode", "system", "--op", "show").stdout


def test_a_recurring_monitor_gives_tgtds_own_monitor_time_to_see_it_dead_first(iscsi_lab):
    """Without tgtd, a probe answers at once, but a recurring monitor of a resource
    above tgtd waits a few seconds: tgtd's own (shorter) monitor must report first,
    so that Pacemaker recovers tgtd with everything above it instead of restarting
    the account or target alone on a dead tgtd (a start that fails bans it from the node)."""
    lab = iscsi_lab
    assert lab.agent("tgtuser", "start", account()).rc == 0
    lab.tgtd.stop()
    for agent, params in (("tgtuser", account()), ("iSCSITarget", {"iqn": iqn(1)})):
        began = time.monotonic()
        assert lab.agent(agent, "monitor", params, meta={"interval": "0"}).rc == 7
        assert time.monotonic() - began < 2.0
        began = time.monotonic()
        assert lab.agent(agent, "monitor", params, meta={"interval": "10000"}).rc == 7
        assert time.monotonic() - began >= 4.5


@pytest.mark.parametrize("length", [118, 200, 255])
def test_long_chap_usernames_work_through_every_action(iscsi_lab, length):
    """Up to our limit (255; tgt itself takes more), a user name is just a name:
    the agents' own records of it must not depend on its length."""
    lab = iscsi_lab
    user = ("u" * length)[:length]
    shared = {"username": user, "password": PASSWORD}
    target = {"iqn": iqn(1), "incoming_username": user}
    own = {"iqn": iqn(2), "incoming_username": user[:-1] + "o", "incoming_password": "Own-Secret-01234"}
    for agent, params in (("tgtuser", shared), ("iSCSITarget", target), ("iSCSITarget", own)):
        assert lab.agent(agent, "stop", params).rc == 0           # a stop before any start
        start = lab.agent(agent, "start", params)
        assert start.rc == 0, (agent, start)
        assert lab.agent(agent, "monitor", params, meta={"interval": "10000"}).rc == 0
    assert lab.agent("tgtuser", "reload", {**shared, "password": "Brand-New-Secret"}).rc == 0
    assert lab.login(iqn(1), user, "Brand-New-Secret")
    assert not lab.login(iqn(1), user, PASSWORD)
    for agent, params in (("iSCSITarget", own), ("iSCSITarget", target), ("tgtuser", shared)):
        assert lab.agent(agent, "stop", params).rc == 0, agent
    assert lab.accounts() == [] and "Target" not in lab.show()


def ledger_path(lab, user: str) -> Path:
    port = lab.tgtd.control_port
    return lab.state / "tgtha" / f"tgtd{port}-account-{user.encode().hex()}"


def test_a_start_that_cannot_record_its_account_undoes_it(iscsi_lab):
    """The ledger entry cannot be written (its name is taken by a directory):
    the start fails and leaves no account that nobody knows it owns."""
    lab = iscsi_lab
    own = {"iqn": iqn(1), "incoming_username": "owner", "incoming_password": "Own-Secret-01234"}
    for agent, params, user in (("tgtuser", account(), USER), ("iSCSITarget", own, "owner")):
        blocker = ledger_path(lab, user)
        (blocker / "in-the-way").mkdir(parents=True)
        start = lab.agent(agent, "start", params)
        assert start.rc == 1 and "cannot record account" in start.exit_reason, start
        assert user not in lab.accounts() and "Target" not in lab.show()
        assert lab.agent(agent, "monitor", params, meta={"interval": "10000"}).rc == 7
        assert lab.agent(agent, "stop", params).rc == 0
        assert not blocker.exists(), "stop clears the broken entry"
        assert lab.agent(agent, "start", params).rc == 0
        assert lab.agent(agent, "stop", params).rc == 0
    assert lab.accounts() == []


@pytest.mark.parametrize("garbage", [b"", b"tgtuser\n", b"tgtuser\nnot-hex\nx\n", b"\xff\xfe\x00binary"])
def test_a_corrupt_ledger_entry_is_never_a_failed_stop_or_monitor(iscsi_lab, garbage):
    lab = iscsi_lab
    own = {"iqn": iqn(1), "incoming_username": "owner", "incoming_password": "Own-Secret-01234"}
    assert lab.agent("tgtuser", "start", account()).rc == 0
    assert lab.agent("iSCSITarget", "start", own).rc == 0
    for user in (USER, "owner"):
        ledger_path(lab, user).write_bytes(garbage)
    assert lab.agent("tgtuser", "monitor", account(), meta={"interval": "10000"}).rc == 0
    assert lab.agent("iSCSITarget", "monitor", own, meta={"interval": "10000"}).rc == 0
    # An unknown entry is re-derived: tgtuser takes the account over behind the guard.
    assert lab.agent("tgtuser", "start", account()).rc == 0
    assert lab.agent("iSCSITarget", "stop", own).rc == 0
    assert lab.agent("tgtuser", "stop", account()).rc == 0
    assert USER not in lab.accounts() and "Target" not in lab.show()


def test_eui_and_naa_names_with_upper_case_hex_work_as_written(iscsi_lab):
    """RFC 3720 writes eui./naa. names in upper-case hex; tgt compares names exactly,
    so the name is kept as written, for the target and in allowed_initiators."""
    lab = iscsi_lab
    target, initiator = "eui.02004567A425678D", "naa.52004567BA64678D"
    params = {"iqn": target, "allowed_initiators": initiator}
    assert lab.agent("iSCSITarget", "validate-all", params).rc == 0
    assert lab.agent("iSCSITarget", "start", params).rc == 0
    assert lab.agent("iSCSITarget", "monitor", params, meta={"interval": "10000"}).rc == 0
    as_allowed = lab.client.run("iscsi-inq", "-i", initiator, lab.url(target), check=False, timeout=30)
    as_other = lab.client.run("iscsi-inq", "-i", initiator.lower(), lab.url(target), check=False, timeout=30)
    assert as_allowed.returncode == 0, as_allowed.stderr
    assert as_other.returncode != 0, "tgt compares exactly: another spelling is another initiator"
    assert lab.agent("iSCSITarget", "stop", params).rc == 0


@pytest.mark.parametrize("where", ["ipv6", "ipv6 port 3261", "ipv4 port 3261", "ipv6 link-local"])
@pytest.mark.parametrize("stopping", ["iSCSITarget", "iSCSILogicalUnit"])
def test_stop_closes_a_frozen_initiators_connection_whatever_the_address_family_and_port(
        make_netns, start_tgtd, state_dir, tmp_path, report, where, stopping):
    """portals left at its default (the agent knows no address): the stop finds the
    connection through tgtd's own portals, in both families, and logs what it closed."""
    from conftest import run_agent, veth_pair
    node, client = make_netns("v6node"), make_netns("v6cli")
    port = 3261 if "3261" in where else 3260
    if where.startswith("ipv4"):
        target_ip, client_ip, url_host = "10.84.0.1", "10.84.0.2", "10.84.0.1"
        veth_pair(node, client, f"{target_ip}/24", f"{client_ip}/24")
        tgtd = start_tgtd(node, target_ip, port)
    else:
        prefix = "fe80::" if "link-local" in where else "fd00:84::"
        node_dev, client_dev = veth_pair(node, client, "10.84.0.1/24", "10.84.0.2/24")
        node.run("ip", "-6", "addr", "add", f"{prefix}1/64", "dev", node_dev, "nodad")
        client.run("ip", "-6", "addr", "add", f"{prefix}2/64", "dev", client_dev, "nodad")
        # tgt binds no scope: a link-local portal is reached through the wildcard.
        tgtd = start_tgtd(node, "::" if "link-local" in where else f"{prefix}1", port)
        url_host = f"[{prefix}1%{client_dev}]" if "link-local" in where else f"[{prefix}1]"
    control = {"control_port": str(tgtd.control_port)}
    target = {**control, "iqn": iqn(1)}
    backing = tmp_path / "lun1.img"
    backing.write_bytes(b"\0" * (16 << 20))
    lun = {**control, "target_iqn": iqn(1), "lun": "1", "path": str(backing)}
    agent = lambda name, action, params: run_agent(name, action, params, ns=node, state=state_dir)  # noqa: E731
    assert agent("iSCSITarget", "start", target).rc == 0
    assert agent("iSCSILogicalUnit", "start", lun).rc == 0
    log = open(tmp_path / "perf.log", "w")
    perf = subprocess.Popen(client.exec_argv(
        "iscsi-perf", "-i", "iqn.2026-11.test.tgtha:v6", "-m", "64", "-b", "2048", "-x", "-1",
        f"iscsi://{url_host}:{port}/{iqn(1)}/1"), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while "I_T nexus: " not in tgtd.tgtadm("--mode", "target", "--op", "show").stdout:
            assert time.monotonic() < deadline, (tmp_path / "perf.log").read_text()
            time.sleep(0.1)
        time.sleep(1)
        os.kill(perf.pid, signal.SIGSTOP)       # zero window: tgtd's send queue stays full
        time.sleep(2)
        began = time.monotonic()
        stop = agent(stopping, "stop", target if stopping == "iSCSITarget" else lun)
        took = time.monotonic() - began
    finally:
        os.kill(perf.pid, signal.SIGCONT)
        perf.kill()
        perf.wait()
        log.close()
    assert stop.rc == 0, stop
    report(f"{stopping} stop, frozen initiator, {where}, portals unset: {took:.2f} s")
    assert took < 3.0
    assert "closed 1 connection(s)" in stop.stderr, (took, stop.stderr)
    if stopping == "iSCSILogicalUnit":
        shown = tgtd.tgtadm("--mode", "target", "--op", "show").stdout
        assert "State: ready" in shown and "LUN: 1\n" not in shown, "the target is given back, ready"
        assert agent("iSCSITarget", "stop", target).rc == 0


def test_discovery_lists_a_target_at_a_portal_it_was_not_configured_for(iscsi_lab):
    """The tgt fact behind README's "Several portals per target": a target has no
    portals of its own in tgt, so discovery at target 1's address also offers
    target 2 there (the initiators must log in to each target at its own portals)."""
    lab = iscsi_lab
    assert lab.agent("iSCSITarget", "start", {"iqn": iqn(1), "portals": f"{lab.TARGET_IP}:3260"}).rc == 0
    assert lab.agent("iSCSITarget", "start", {"iqn": iqn(2), "portals": "192.0.2.99:3260"}).rc == 0
    listing = lab.client.run("iscsi-ls", "-i", "iqn.2026-11.test.tgtha:client", f"iscsi://{lab.TARGET_IP}",
                             check=False, timeout=30)
    assert listing.returncode == 0, listing.stderr
    offered = re.findall(r"Target:(\S+) Portal:(\S+)", listing.stdout)
    assert (iqn(1), f"{lab.TARGET_IP}:3260,1") in offered
    assert (iqn(2), f"{lab.TARGET_IP}:3260,1") in offered, listing.stdout
