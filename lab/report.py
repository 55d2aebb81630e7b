"""The lab's report: a table per scenario on the terminal, JSON, and a PNG timeline."""
from __future__ import annotations

import json
import math
from pathlib import Path

from scenarios import Failover

REPLACEMENT_TIMEOUT_S = 120.0    # open-iscsi's default: past it, filesystems go read-only


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summarize(name: str, failovers: list[Failover]) -> dict:
    pauses = [p for f in failovers for p in f.pauses.values()]
    cluster = [f.cluster["cluster_s"] for f in failovers if f.cluster.get("cluster_s") is not None]
    return {
        "name": name,
        "failovers": len(failovers),
        "settled": sum(1 for f in failovers if f.settled_s is not None),
        "pause_p50_s": _round(percentile(pauses, 50)),
        "pause_p99_s": _round(percentile(pauses, 99)),
        "pause_max_s": _round(max(pauses) if pauses else None),
        "cluster_p50_s": _round(percentile(cluster, 50)),
        "cluster_max_s": _round(max(cluster) if cluster else None),
        "io_errors": sum(f.io_errors for f in failovers),
        "mismatches": sum(f.mismatches for f in failovers),
        "retried_unit_attentions": sum(f.retried_unit_attentions for f in failovers),
        "unauth_logins": sum(f.unauth_logins for f in failovers),
        "failed_actions": sum(len(f.failed_actions) for f in failovers),
        "stalled_initiators": sum(len(f.stalled) for f in failovers),
        "injected_failures": sum(len(f.injected_failures) for f in failovers),
        "details": [{
            "action": f.action,
            "settled_s": _round(f.settled_s),
            "cluster_s": f.cluster.get("cluster_s"),
            "cluster": f.cluster,
            "pauses_s": {k: _round(v) for k, v in f.pauses.items()},
            "unsettled": f.unsettled,
            "stalled": f.stalled,
            "io_errors": f.io_errors,
            "mismatches": f.mismatches,
            "retried_unit_attentions": f.retried_unit_attentions,
            "unauth_logins": f.unauth_logins,
            "failed_actions": f.failed_actions,
            "injected_failures": f.injected_failures,
        } for f in failovers],
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def table(report: dict) -> str:
    header = ("scenario", "n", "settled", "pause p50", "p99", "max", "cluster p50", "max", "I/O err",
              "mismatch", "unauth", "failed act", "stalled")
    rows = [header]
    for s in report["scenarios"]:
        rows.append((s["name"], s["failovers"], s["settled"], _s(s["pause_p50_s"]), _s(s["pause_p99_s"]),
                     _s(s["pause_max_s"]), _s(s["cluster_p50_s"]), _s(s["cluster_max_s"]), s["io_errors"],
                     s["mismatches"], s["unauth_logins"], s["failed_actions"], s["stalled_initiators"]))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ["  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if not report["scenarios"]:
        lines.append("(no scenario ran: no initiator completed a single I/O; "
                     f"{len(report['resources_not_started_at_start'])} resources never started, "
                     f"port 3260 block rules left per node: {report['firewall_rules_left']})")
    for s in report["scenarios"]:
        if s.get("ended_early"):
            lines.append(f"{s['name']}: ended early: {s['ended_early']}")
    if report.get("interrupted"):
        lines.append("(interrupted: only what completed is shown)")
    worst = report["worst_pause_s"]
    lines.append("")
    lines.append("cluster: first stop (or detection) to last unblock, from the Pacemaker logs; "
                 "pause: per initiator, the longest time without a completed I/O")
    lines.append(f"worst pause {_s(worst)} against the initiators' {REPLACEMENT_TIMEOUT_S:.0f} s "
                 f"replacement_timeout budget: "
                 + ("n/a" if worst is None else f"{worst / REPLACEMENT_TIMEOUT_S:.1%} of it"))
    return "\n".join(lines)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")


def write_timeline(path: Path, lab_start: float, initiators, failovers: list[Failover]) -> None:
    """Per initiator, completed I/Os per second over time, with a marker per failover."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(1, len(initiators))
    end = max([i.log.last_completion() for i in initiators] + [lab_start + 1]) - lab_start
    seconds = int(end) + 1
    fig, axes = plt.subplots(count, 1, sharex=True, figsize=(12, 0.9 * count + 1.5), squeeze=False)
    colours = {"move": "tab:blue", "standby": "tab:green", "power-off": "tab:red", "kill-tgtd": "tab:purple"}
    for axis, initiator in zip(axes[:, 0], initiators):
        per_second = [0] * seconds
        for t in initiator.log.completions:
            per_second[min(seconds - 1, int(t - lab_start))] += 1
        axis.plot(range(seconds), per_second, linewidth=0.7, color="black")
        for t, _ in initiator.log.errors + initiator.log.mismatches:
            axis.axvline(t - lab_start, color="red", linewidth=1.5)
        for f in failovers:
            axis.axvline(f.started - lab_start, color=colours.get(f.scenario, "grey"), linewidth=0.6,
                         alpha=0.7)
        axis.set_ylabel(initiator.lun.name, rotation=0, ha="right", fontsize=7)
        axis.tick_params(labelsize=6)
    axes[-1, 0].set_xlabel("seconds since load start (I/O ops per second; lines: failovers, red: errors)")
    handles = [plt.Line2D([], [], color=c, label=n) for n, c in colours.items()]
    fig.legend(handles=handles, loc="upper right", fontsize=7, ncol=4)
    fig.suptitle("tgtha lab: initiator I/O through failovers", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
