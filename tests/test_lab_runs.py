"""lab/runs.py: several runs' report.json side by side, and a failover of a finished run drawn again."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "lab"))
from report import representative, worst  # noqa: E402
from scenarios import Failover  # noqa: E402


def _detail(action: str, pause: float) -> dict:
    return {"action": action, "settled_s": 3.0, "pauses_s": {"t1/lun1": pause}, "pause_spans_s": {"t1/lun1": [0.0, pause]},
            "cluster": {"detection_s": 0.1, "first_stop_s": 0.2, "last_unblock_s": 1.5, "cluster_s": 1.3},
            "actions": [{"node": "node1", "resource": "p_tgtd", "op": "start", "at_s": 1.0, "took_s": 0.05,
                         "queued_s": 0.0, "outcome": "exited with status 0"}],
            "io_errors": 0, "mismatches": 0}


def _report(tmp_path, pauses: list[float]):
    details = [_detail(f"kill {n}", p) for n, p in enumerate(pauses, 1)]
    scenario = {"name": "kill-tgtd", "failovers": len(pauses), "settled": len(pauses), "details": details,
                "pause_p50_s": sorted(pauses)[len(pauses) // 2], "pause_p99_s": max(pauses),
                "pause_max_s": max(pauses), "cluster_p50_s": 1.3, "cluster_max_s": 1.3, "io_errors": 0,
                "mismatches": 0, "unauth_logins": 0, "failed_actions": 0}
    (tmp_path / "report.json").write_text(json.dumps({
        "scenarios": [scenario], "total_io_completed": 10, "prober_attempts": 5, "unauth_logins_total": 0}))
    return tmp_path


def test_the_worst_failover_is_the_one_with_the_longest_pause_and_the_median_one_the_middle():
    failovers = [Failover("kill-tgtd", n, f"kill {n}", 0.0, settled_s=3.0, pauses={"a": p}, actions=[{}])
                 for n, p in enumerate([2.2, 5.2, 2.1], 1)]
    assert worst(failovers).number == 2 and representative(failovers).number == 1
    unsettled = Failover("kill-tgtd", 4, "kill 4", 0.0, settled_s=None, pauses={"a": 9.0}, actions=[{}])
    assert worst(failovers + [unsettled]).number == 2       # not settled: no picture of it


def test_a_failover_of_a_finished_run_is_drawn_again_from_its_report(tmp_path):
    run = _report(tmp_path, [2.2, 5.2, 2.1])
    picture = tmp_path / "worst.png"
    drawn = subprocess.run([sys.executable, str(REPO / "lab" / "runs.py"), "--gantt", "kill-tgtd", "worst",
                            str(picture), str(run)], capture_output=True, text=True)
    assert drawn.returncode == 0, drawn.stderr
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 10_000
    table = subprocess.run([sys.executable, str(REPO / "lab" / "runs.py"), str(run)], capture_output=True, text=True)
    assert "| kill-tgtd | 3 of 3 | 2.20 / 2.20 | 5.20 / 5.20 |" in table.stdout, table.stdout
