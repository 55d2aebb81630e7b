"""make cts (lab/pacemaker_cts.py): Pacemaker's CTS against the lab's cluster.

CTS's exit status counts failed tests only; BadNews (unexpected error lines in the
nodes' logs) and failed audits must be read from what it prints. The parser is
specified here on CTS's own output format; then a real CTS run (Pacemaker's code
from Debian's source, the lab's cluster with the tgtha stack, libiscsi initiators)
passes, and the same run with one error line written into a node's log mid-test
fails on that BadNews: the detector's negative control.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "lab"))
import pacemaker_cts  # noqa: E402

CLEAN_RUN = """\
Dec 02 16:35:41\tRunning test Standby                (node1)       [  1]
Dec 02 16:35:53\tRunning test ResourceRecover        (node1)       [  2]
Dec 02 16:36:15\tOverall Results:{'success': 2, 'failure': 0, 'BadNews': 0, 'skipped': 0}
Dec 02 16:36:15\tTest Summary
Dec 02 16:36:15\tTest Standby:             {'calls': 1, 'failure': 0, 'skipped': 0, 'auditfail': 0}
Dec 02 16:36:15\tTest ResourceRecover:     {'calls': 1, 'failure': 0, 'skipped': 0, 'auditfail': 0}
Dec 02 16:36:15\t<<<<<<<<<<<<<<<< TESTS COMPLETED
"""


def parsed(output: str, returncode: int = 0) -> pacemaker_cts.CtsResult:
    result = pacemaker_cts.CtsResult(mode="2 random", nodes=2, seed=1, returncode=returncode, seconds=1.0)
    return pacemaker_cts.parse_output(output, result)


def test_a_clean_run_passes_with_its_tests_counted():
    result = parsed(CLEAN_RUN)
    assert (result.passed, result.failed, result.ok) == (2, 0, True)
    assert result.tests["ResourceRecover"] == {"calls": 1, "failure": 0, "skipped": 0, "auditfail": 0}


def test_badnews_fails_a_run_that_cts_itself_passes():
    news = "Dec 02 16:35:50 node1 pacemaker-execd[588]: error: something broke"
    result = parsed(CLEAN_RUN.replace("Dec 02 16:36:15\tOverall", f"Dec 02 16:36:00\tBadNews: {news}\n"
                                      "Dec 02 16:36:15\tOverall", 1))
    assert result.passed == 2 and result.badnews == [news] and not result.ok


def test_only_the_named_pacemaker_race_is_allowed_and_it_is_counted():
    race = ("Dec 02 16:35:50 node2 pacemaker-based[501]: error: Local CIB 0.12.3 differs from node1: "
            "0.12.4 0x55d0")
    agent = "Dec 02 16:35:51 node2 iSCSITarget(p_target_t1)[900]: ERROR: Local CIB 0.1.2 differs from x: 0.1.3"
    result = parsed(CLEAN_RUN.replace("Dec 02 16:36:15\tOverall", f"Dec 02 16:36:00\tBadNews: {race}\n"
                                      f"Dec 02 16:36:00\tBadNews: {agent}\nDec 02 16:36:15\tOverall", 1))
    assert result.allowed_badnews == {"cib-version-race": 1}
    assert result.badnews == [agent] and not result.ok


def test_failed_tests_audits_and_a_missing_result_fail():
    failed = parsed(CLEAN_RUN.replace("'success': 2, 'failure': 0", "'success': 1, 'failure': 1")
                    + "Dec 02 16:36:15\tTest ResourceRecover                FAILED: d1 was not recovered\n", 1)
    assert failed.failed == 1 and failed.failures and not failed.ok
    audit = parsed(CLEAN_RUN + "Dec 02 16:36:15\tAudit FileAudit FAILED.\n")
    assert audit.audit_failures == ["Audit FileAudit FAILED."] and not audit.ok
    cut_short = parsed("Dec 02 16:35:41\tRunning test Standby                (node1)       [  1]\n", 124)
    assert (cut_short.failed, cut_short.ok) == (1, False)


STALE_AUDIT = """\
Dec 02 17:15:18\tWarning: Stale IPC file on node2: drwxrwx--- 2 root      root       40 Dec  2 17:09 qb-4517-4518-9-XtFxVK
Dec 02 17:15:18\tWarning: Stale IPC file on node2: drwxrwx--- 2 hacluster haclient   40 Dec  2 17:09 qb-4517-4521-8-fMV0
Dec 02 17:15:19\tAudit FileAudit FAILED.
"""
KILLED_FENCED = ("Dec 02 17:10:48\tcts-exerciser debug: lw: ComponentFail: Matched: Dec 02 17:09:42.332 node2 "
                 "pacemakerd[4515]:  warning: pacemaker-fenced[4517] terminated with signal 9 (Killed)\n")


def test_stale_ipc_files_of_a_daemon_cts_killed_are_allowed_and_counted():
    result = parsed_with_log(CLEAN_RUN + STALE_AUDIT, KILLED_FENCED)
    assert result.audit_failures == [] and result.allowed_audit_failures == {"stale-ipc-of-killed-daemon": 1}
    assert result.ok


def test_stale_ipc_files_of_a_daemon_nobody_killed_fail_the_audit():
    assert not parsed_with_log(CLEAN_RUN + STALE_AUDIT, "").ok                     # no kill at all
    assert not parsed_with_log(CLEAN_RUN + STALE_AUDIT, KILLED_FENCED.replace("node2", "node1")).ok
    assert not parsed_with_log(CLEAN_RUN + STALE_AUDIT, KILLED_FENCED.replace("[4517]", "[4999]")).ok


def test_a_file_audit_with_a_core_file_beside_stale_ipc_files_fails():
    core = "Dec 02 17:15:18\tWarning: core file on node2: -rw------- 1 root root 1 core.4600\n"
    result = parsed_with_log(CLEAN_RUN + core + STALE_AUDIT, KILLED_FENCED)
    assert result.audit_failures == ["Audit FileAudit FAILED."] and not result.ok


def parsed_with_log(output: str, debug_log: str) -> pacemaker_cts.CtsResult:
    result = pacemaker_cts.CtsResult(mode="once", nodes=2, seed=1, returncode=0, seconds=1.0)
    return pacemaker_cts.parse_output(output, result, debug_log)


def test_the_summary_line_says_what_cts_and_the_initiators_saw():
    figures = parsed_with_log(CLEAN_RUN + STALE_AUDIT, KILLED_FENCED).as_dict()
    figures["initiators"] = {"io_completed": 1234, "io_errors": 0, "mismatches": 0, "unauth_logins": 0,
                             "unauth_attempts": 56, "longest_pause_s": 7.5, "longest_pause_lun": "t1/lun1"}
    assert pacemaker_cts.summary_line(figures) == (
        "CTS: 2 passed, 0 failed (once, 2 nodes, seed 1, 0.0 min); BadNews 0, audit failures 0 (+1 allowed); "
        "initiators: 1234 I/Os verified, I/O errors 0, mismatches 0, unauthenticated logins 0 of 56, "
        "longest pause 7.5 s")


def test_longest_pause_counts_the_edges_of_the_window():
    assert pacemaker_cts.longest_pause([11.0, 12.0, 20.0], 10.0, 21.0) == 8.0
    assert pacemaker_cts.longest_pause([], 10.0, 21.0) == 11.0


# ------------------------------------------------------------------ real CTS runs

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")


def run_cts(out: Path, inject: bool) -> tuple[subprocess.CompletedProcess, dict]:
    """One CTS ResourceRecover against a 1-target lab; with ``inject``, an agent-style
    ERROR line is appended to node1's log while the test runs."""
    env = {**os.environ, "LAB_OUT": str(out), "LAB_TARGETS": "1", "LAB_LUNS": "1", "LAB_PREFIX": "tgthacts",
           "CTS_ONCE_NODES": "0", "CTS_ITERATIONS": "1", "CTS_TESTS": "ResourceRecover", "CTS_SEED": "7"}
    injected = threading.Event()

    def inject_when_running() -> None:
        printed = out / "2nodes" / "cts-2nodes-1-random.out"
        log = out / "2nodes" / "run" / "node1" / "var_log_pacemaker" / "pacemaker.log"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if printed.exists() and "Running test ResourceRecover" in printed.read_text(errors="replace"):
                with open(log, "a") as sink:
                    sink.write(time.strftime("%b %d %H:%M:%S") + " node1 tgtha-test: ERROR: injected by the test\n")
                injected.set()
                return
            time.sleep(0.2)

    if inject:
        threading.Thread(target=inject_when_running, daemon=True).start()
    result = subprocess.run(["/usr/bin/python3", str(REPO / "lab" / "pacemaker_cts.py")], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    if inject:
        assert injected.is_set(), result.stdout[-2000:]
    report = json.loads((out / "2nodes" / "report.json").read_text())
    return result, report


@needs_root
def test_cts_passes_against_the_tgtha_stack_under_load(tmp_path, agents_installed):
    result, report = run_cts(tmp_path, inject=False)
    cts = report["cts"][0]
    assert result.returncode == 0, result.stdout[-3000:]
    assert (cts["passed"], cts["failed"], cts["badnews"], cts["audit_failures"]) == (1, 0, [], [])
    assert cts["initiators"]["io_completed"] > 0
    assert (cts["initiators"]["io_errors"], cts["initiators"]["mismatches"], cts["initiators"]["unauth_logins"]) \
        == (0, 0, 0)
    assert "CTS: 1 passed, 0 failed" in result.stdout


@needs_root
def test_an_error_line_in_a_node_log_fails_make_cts(tmp_path, agents_installed):
    result, report = run_cts(tmp_path, inject=True)
    cts = report["cts"][0]
    assert cts["passed"] == 1                        # CTS itself passes the test...
    assert any("injected by the test" in news for news in cts["badnews"])
    assert result.returncode != 0                    # ...make cts does not
