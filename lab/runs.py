#!/usr/bin/python3
"""Several lab runs side by side: median and worst of each scenario's figures, and drift.

    lab/runs.py LAB_OUT_DIR [LAB_OUT_DIR ...]
    lab/runs.py --gantt SCENARIO median|worst OUT.png LAB_OUT_DIR

Reads each run's report.json and prints a Markdown table (the one in README):
per scenario, over the runs, the median and the worst of pause p50/p99/max and
of the cluster side, with the error counts summed. "drift" compares the mean
pause of the first and the last third of each run's failovers: a lab whose
pauses grow over a run shows a ratio well above 1.

--gantt draws one failover of a finished run again from its report.json, as
the lab draws it (README's before/after pictures come from two runs' reports).
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


KERNEL_COUNTS = [("kernel_io_errors", "kernel errors"), ("ro_remounts", "read-only"),
                 ("sessions_not_back", "sessions not back"), ("wedged_messages", "wedged"),
                 ("wwid_changes", "WWID changed")]


def _cell(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} / {max(values):.2f}"


def drift(details: list[dict]) -> float | None:
    means = [statistics.mean(d["pauses_s"].values()) for d in details if d["pauses_s"]]
    third = len(means) // 3
    if third == 0:
        return None
    return statistics.mean(means[-third:]) / statistics.mean(means[:third])


def main(directories: list[str]) -> int:
    reports = [json.loads((Path(d) / "report.json").read_text()) for d in directories]
    names = list(dict.fromkeys(s["name"] for r in reports for s in r["scenarios"]))
    print(f"{len(reports)} runs; each cell: median / worst of the runs")
    print()
    # Kernel initiators' own counts, when the runs had guests (guests.py)
    kernel = KERNEL_COUNTS if any("open-iscsi" in r.get("initiator", "") for r in reports) else []
    print("| scenario | failovers settled | pause p50 | pause p99 | pause max | cluster p50 | cluster max "
          "| drift (last/first third) | I/O errors | mismatches | unauth logins | failed actions |"
          + "".join(f" {title} |" for _, title in kernel))
    print("|---" * (12 + len(kernel)) + "|")
    for name in names:
        runs = [s for r in reports for s in r["scenarios"] if s["name"] == name]   # the runs that had it
        drifts = [d for d in (drift(s["details"]) for s in runs) if d is not None]
        print(f"| {name} | {sum(s['settled'] for s in runs)} of {sum(s['failovers'] for s in runs)} "
              f"| {_cell([s['pause_p50_s'] for s in runs])} | {_cell([s['pause_p99_s'] for s in runs])} "
              f"| {_cell([s['pause_max_s'] for s in runs])} | {_cell([s['cluster_p50_s'] for s in runs])} "
              f"| {_cell([s['cluster_max_s'] for s in runs])} "
              f"| {_cell(drifts)} "
              f"| {sum(s['io_errors'] for s in runs)} | {sum(s['mismatches'] for s in runs)} "
              f"| {sum(s['unauth_logins'] for s in runs)} | {sum(s['failed_actions'] for s in runs)} |"
              + "".join(f" {sum(s.get(key, 0) for s in runs)} |" for key, _ in kernel))
    print()
    print(f"verified I/Os: {sum(r['total_io_completed'] for r in reports):,}; unauthenticated login attempts: "
          f"{sum(r['prober_attempts'] for r in reports):,}, got in: {sum(r['unauth_logins_total'] for r in reports)}; "
          f"interrupted runs: {sum(1 for r in reports if r.get('interrupted'))}")
    return 0


def gantt(scenario: str, which: str, path: str, directory: str) -> int:
    from report import representative, worst, write_gantt
    from scenarios import Failover

    report = json.loads((Path(directory) / "report.json").read_text())
    details = next(s for s in report["scenarios"] if s["name"] == scenario)["details"]
    failovers = [Failover(scenario, number, d["action"], 0.0, settled_s=d["settled_s"], pauses=d["pauses_s"],
                          cluster=d["cluster"], actions=d["actions"],
                          pause_spans={k: tuple(v) for k, v in d["pause_spans_s"].items()})
                 for number, d in enumerate(details, 1)]
    chosen = {"median": representative, "worst": worst}[which](failovers)
    if chosen is None:
        return f"no settled failover of {scenario} in {directory}"
    write_gantt(Path(path), chosen)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--gantt"] and len(sys.argv) == 6:
        sys.exit(gantt(*sys.argv[2:]))
    sys.exit(main(sys.argv[1:]) if len(sys.argv) > 1 and not sys.argv[1].startswith("-")
             else "usage: lab/runs.py LAB_OUT_DIR ... | --gantt SCENARIO median|worst OUT.png LAB_OUT_DIR")
