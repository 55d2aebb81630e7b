"""The lab's report: a table per scenario on the terminal, JSON, and a PNG timeline."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from scenarios import Failover

REPLACEMENT_TIMEOUT_S = 120.0    # open-iscsi's default: past it, filesystems go read-only (libiscsi runs)


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
        # The kernel writer's name for its wrong reads (issue 13's report field): the same count.
        "verify_failures": sum(f.mismatches for f in failovers),
        "retried_unit_attentions": sum(f.retried_unit_attentions for f in failovers),
        "unauth_logins": sum(f.unauth_logins for f in failovers),
        "failed_actions": sum(len(f.failed_actions) for f in failovers),
        "stalled_initiators": sum(len(f.stalled) for f in failovers),
        "injected_failures": sum(len(f.injected_failures) for f in failovers),
        "kernel_io_errors": sum(len(f.kernel_io_errors) for f in failovers),
        "ro_remounts": sum(len(f.ro_remounts) for f in failovers),
        "sessions_not_back": sum(len(f.sessions_not_back) for f in failovers),
        "wwid_changes": sum(len(f.wwid_changes) for f in failovers),
        "wedged_messages": sum(len(f.wedged) for f in failovers),
        "paths_not_back": sum(len(f.paths_not_back) for f in failovers),
        "path_io_errors": sum(len(f.path_errors) for f in failovers),
        "cpu": cpu_figures(failovers),
        "action_times": action_times(failovers),
        "lost_nodes": lost_node_figures(failovers),
        "details": [{
            "action": f.action,
            "settled_s": _round(f.settled_s),
            "cluster_s": f.cluster.get("cluster_s"),
            "cluster": f.cluster,
            "pauses_s": {k: _round(v) for k, v in f.pauses.items()},
            "pause_spans_s": f.pause_spans,
            "actions": f.actions,
            "unsettled": f.unsettled,
            "cpu": f.cpu,
            "stalled": f.stalled,
            "io_errors": f.io_errors,
            "mismatches": f.mismatches,
            "retried_unit_attentions": f.retried_unit_attentions,
            "unauth_logins": f.unauth_logins,
            "failed_actions": f.failed_actions,
            "injected_failures": f.injected_failures,
            "kernel_io_errors": f.kernel_io_errors,
            "ro_remounts": f.ro_remounts,
            "sessions_not_back": f.sessions_not_back,
            "wwid_changes": f.wwid_changes,
            "wedged": f.wedged[:5],
            "paths_not_back": f.paths_not_back,
            "path_io_errors": f.path_errors[:5],
            **({"migration": f.migration} if f.migration else {}),
            **({"tickles_recorded": f.tickles_recorded} if f.tickles_recorded is not None else {}),
        } for f in failovers],
    }


def lost_node_figures(failovers: list[Failover]) -> dict:
    """For failovers that lost a node: how often it was the DC, and the medians of
    detection, of the wait from detection to the fencing request, and of fencing.
    Pacemaker 2.1.5's controller holds the scheduler 1 s whenever its own CIB
    updates are still pending when it asks (controld_schedulerd.c: ``sleep(1)``),
    which after a node loss is often: the waits of 0.5 s or more are counted."""
    lost = [f.cluster for f in failovers if f.cluster.get("fencing_s") is not None
            and f.cluster.get("detection_s") is not None]
    if not lost:
        return {}
    waits = [c["fencing_s"] - c["detection_s"] for c in lost]
    fencing = [c["fenced_s"] - c["fencing_s"] for c in lost if c.get("fenced_s") is not None]
    return {"lost": len(lost), "dc_lost": sum(1 for c in lost if c["dc_lost"]),
            "detection_p50_s": _round(percentile([c["detection_s"] for c in lost], 50)),
            "to_fencing_p50_s": _round(percentile(waits, 50)), "to_fencing_max_s": _round(max(waits)),
            "to_fencing_held": sum(1 for w in waits if w >= 0.5),
            "fencing_p50_s": _round(percentile(fencing, 50)) if fencing else None}


def pause_figures(failovers: list[Failover], luns: set[str]) -> dict:
    """Pause p50/p99/max of some initiators (by LUN name) over a scenario's failovers."""
    pauses = [p for f in failovers for lun, p in f.pauses.items() if lun in luns]
    return {"pause_p50_s": _round(percentile(pauses, 50)), "pause_p99_s": _round(percentile(pauses, 99)),
            "pause_max_s": _round(max(pauses) if pauses else None)}


def cpu_figures(failovers: list[Failover]) -> dict:
    """Median CPU seconds per group over a scenario's failovers (start to the initiators'
    resumption), the machine's median busy share, and the agents' CPU per logged action
    (execd logs starts and stops, not monitors, whose CPU is in the agents' total)."""
    samples = [f.cpu for f in failovers if f.cpu]
    if not samples:
        return {}
    groups = samples[0]["cpu_s"].keys()
    actions = sum(len(f.actions) for f in failovers if f.cpu)
    agents = sum(s["cpu_s"]["agents"] for s in samples)
    return {"cpu_s_p50": {g: _round(percentile([s["cpu_s"][g] for s in samples], 50)) for g in groups},
            "busy_p50": percentile([s["busy"] for s in samples if s["busy"] is not None], 50),
            "agent_cpu_ms_per_action": round(agents * 1000 / actions, 1) if actions else None}


def action_kind(resource: str) -> str:
    """A lab resource's kind: its id without the target and LUN numbers (p_lun_t3_2 -> p_lun)."""
    return re.sub(r"_t\d+(_\d+)?$", "", resource)


def action_times(failovers: list[Failover]) -> dict:
    """Per resource kind and operation: how many ran, median and worst seconds (Pacemaker's
    own measure, from the logs), over a scenario's failovers."""
    took: dict[str, list[float]] = {}
    for f in failovers:
        for a in f.actions:
            if a.get("took_s") is not None:
                took.setdefault(f"{action_kind(a['resource'])} {a['op']}", []).append(a["took_s"])
    return {key: {"n": len(v), "p50_s": _round(percentile(v, 50)), "max_s": _round(max(v))}
            for key, v in sorted(took.items())}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def table(report: dict) -> str:
    header = ("scenario", "n", "settled", "pause p50", "p99", "max", "cluster p50", "max", "I/O err",
              "mismatch", "unauth", "failed act", "stalled")
    kernel = any(s.get("initiator") in ("kernel", "both") for s in report["scenarios"])
    if kernel:
        header += ("kernel err", "read-only", "sessions down", "WWID changed", "wedged")
    if report.get("multipath"):
        header += ("paths down", "path I/O err")
    rows = [header]
    for s in report["scenarios"]:
        row = (s["name"], s["failovers"], s["settled"], _s(s["pause_p50_s"]), _s(s["pause_p99_s"]),
               _s(s["pause_max_s"]), _s(s["cluster_p50_s"]), _s(s["cluster_max_s"]), s["io_errors"],
               s["mismatches"], s["unauth_logins"], s["failed_actions"], s["stalled_initiators"])
        if kernel:
            row += (s["kernel_io_errors"], s["ro_remounts"], s["sessions_not_back"], s["wwid_changes"],
                    s["wedged_messages"])
        if report.get("multipath"):
            row += (s["paths_not_back"], s["path_io_errors"])
        rows.append(row)
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ["  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if not report["scenarios"]:
        lines.append("(no scenario ran: no initiator completed a single I/O; "
                     f"{len(report['resources_not_started_at_start'])} resources never started, "
                     f"port 3260 block rules left per node: {report['firewall_rules_left']})")
    for s in report["scenarios"]:
        for kind, figures in (s.get("by_initiator") or {}).items():
            lines.append(f"{s['name']}, {kind} initiators only: pause p50 {_s(figures['pause_p50_s'])}, "
                         f"p99 {_s(figures['pause_p99_s'])}, max {_s(figures['pause_max_s'])}")
    for s in report["scenarios"]:
        figures = s.get("cpu") or {}
        if figures:
            used = ", ".join(f"{g} {v:.1f}" for g, v in figures["cpu_s_p50"].items() if v)
            busy = figures["busy_p50"]
            lines.append(f"{s['name']}: CPU s per failover (median): {used}; machine busy "
                         + ("n/a" if busy is None else f"{busy:.0%}")
                         + f"; agents {_ms(figures['agent_cpu_ms_per_action'])} per action")
        slowest = sorted((v["max_s"], k) for k, v in (s.get("action_times") or {}).items())[-3:]
        if slowest:
            lines.append(f"{s['name']}: slowest actions: "
                         + ", ".join(f"{k} {v:.2f}s" for v, k in reversed(slowest)))
    for s in report["scenarios"]:
        unrecorded = sum(1 for d in s["details"] if d.get("tickles_recorded") is False)
        if unrecorded:
            lines.append(f"{s['name']}: {unrecorded} began before every unblock had recorded its initiators'"
                         " connections (tickle_dir): those initiators were reset only by their own retransmission")
        if (lost := s.get("lost_nodes")):
            lines.append(f"{s['name']}: node lost (the DC in {lost['dc_lost']} of {lost['lost']}): detection p50 "
                         f"{_s(lost['detection_p50_s'])}, then the fencing request after p50 "
                         f"{_s(lost['to_fencing_p50_s'])}, max {_s(lost['to_fencing_max_s'])} (0.5 s or more in "
                         f"{lost['to_fencing_held']} of {lost['lost']}: Pacemaker's controller holds the scheduler"
                         f" 1 s while its CIB updates are pending), fencing p50 {_s(lost['fencing_p50_s'])}")
    for s in report["scenarios"]:
        for detail in s["details"]:
            if detail.get("migration"):
                lines.append(migration_line(detail["migration"]))
    for s in report["scenarios"]:
        if s.get("ended_early"):
            lines.append(f"{s['name']}: ended early: {s['ended_early']}")
    if report.get("interrupted"):
        lines.append("(interrupted: only what completed is shown)")
    worst = report["worst_pause_s"]
    lines.append("")
    lines.append("cluster: first stop (or detection) to last unblock, from the Pacemaker logs; "
                 "pause: per initiator, the longest time without a completed I/O")
    if kernel:
        lines.append("wedged: iscsid's \"can't bind conn\" lines (open-iscsi 2.1.8's reconnect loop)")
    budget = report.get("replacement_timeout_s") or REPLACEMENT_TIMEOUT_S
    if report.get("multipath"):
        lines.append(f"worst pause {_s(worst)}; replacement_timeout {budget:.0f} s fails a path to "
                     "dm-multipath, which queues its I/O (no_path_retry queue) until a path is back")
    else:
        lines.append(f"worst pause {_s(worst)} against the initiators' {budget:.0f} s "
                     f"replacement_timeout budget: "
                     + ("n/a" if worst is None else f"{worst / budget:.1%} of it"))
    return "\n".join(lines)


def migration_line(m: dict) -> str:
    """What the migrate scenario checked, in one line (migrate.py)."""
    failed = [f"{step['step']} (rc {step['rc']})" for step in m["steps"] if step["rc"] != 0]
    control = f", NEGATIVE CONTROL {m['control']}" if m.get("control") else ""
    return (f"migrate ({m['tool']}{control}): resources not on tgtha's agents {len(m['not_tgtha'])}, "
            f"starts/stops {len(m['restarts'])}, sessions dropped {len(m['sessions_dropped'])} of "
            f"{m['sessions_before']}, tgtd restarted on {len(m['tgtd_restarted'])} nodes, accounts not taken "
            f"over {len(m['accounts_not_taken_over'])}, probed by tgtha in "
            + ("NOT within the bound" if m.get("probed_s") is None else f"{m['probed_s']:.1f}s")
            + (f"; FAILED steps: {failed}" if failed else ""))


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


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
    colours = {"move": "tab:blue", "standby": "tab:green", "power-off": "tab:red", "kill-tgtd": "tab:purple",
               "restart": "tab:orange"}
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


OP_COLOURS = {"stop": "tab:red", "start": "tab:green"}


def representative(failovers: list[Failover]) -> Failover | None:
    """The failover whose longest pause is the scenario's median one (settled ones only)."""
    settled = sorted((f for f in failovers if f.settled_s is not None and f.pauses and f.actions),
                     key=lambda f: max(f.pauses.values()))
    return settled[len(settled) // 2] if settled else None


def worst(failovers: list[Failover]) -> Failover | None:
    """The failover with the scenario's longest pause (settled ones only): what its p99 is made of."""
    settled = [f for f in failovers if f.settled_s is not None and f.pauses and f.actions]
    return max(settled, key=lambda f: max(f.pauses.values()), default=None)


def write_gantt(path: Path, failover: Failover) -> None:
    """One failover as a Gantt chart: every agent action (bars per resource and
    node), the gaps between them (Pacemaker's own time), and each initiator's pause."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[str] = []
    for action in failover.actions:
        label = f"{action['resource']} @{action['node']}"
        if label not in rows:
            rows.append(label)
    pauses = sorted(failover.pause_spans.items())
    height = 0.22 * (len(rows) + len(pauses)) + 1.6
    fig, axis = plt.subplots(figsize=(12, height))
    for action in failover.actions:
        axis.barh(rows.index(f"{action['resource']} @{action['node']}"), max(action["took_s"], 0.01),
                  left=action["at_s"], height=0.7, color=OP_COLOURS.get(action["op"], "tab:grey"))
    for i, (name, (began, ended)) in enumerate(pauses):
        axis.barh(len(rows) + i, ended - began, left=began, height=0.7, color="black", alpha=0.6)
    cluster = failover.cluster
    for key, colour in (("detection_s", "tab:purple"), ("first_stop_s", "tab:red"),
                        ("last_unblock_s", "tab:green")):
        if cluster.get(key) is not None:
            axis.axvline(cluster[key], color=colour, linestyle="--", linewidth=0.8)
    axis.set_yticks(range(len(rows) + len(pauses)),
                    rows + [f"pause {name}" for name, _ in pauses], fontsize=6)
    axis.invert_yaxis()
    axis.set_xlabel("seconds since the failover began (bars: red stop, green start;"
                    " black: initiator pause; dashed: detection, first stop, last unblock)", fontsize=7)
    worst = max(failover.pauses.values()) if failover.pauses else 0
    axis.set_title(f"{failover.action}: cluster side {cluster.get('cluster_s')} s, longest pause {worst:.2f} s",
                   fontsize=9)
    axis.tick_params(axis="x", labelsize=7)
    axis.grid(axis="x", linewidth=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
