"""CPU time over a span of a lab run, by who used it: the agents, Pacemaker, Corosync, tgtd,
the initiators, the lab itself.

Every part of the lab shares this machine's cores, so a failover's cluster side
is only the agents' and Pacemaker's figure if the report shows what else ran.
Read from /proc: a process's own utime+stime plus what its reaped children
used (cutime+cstime), so an agent that lived and died inside the span counts,
through pacemaker-execd, which reaps it, as "agents".
"""
from __future__ import annotations

import os

TICKS = os.sysconf("SC_CLK_TCK")

# The groups, in the report's order.
GROUPS = ("agents", "pacemaker", "corosync", "tgtd", "initiators", "lab", "other")


class Sample:
    """One reading of every process and of the machine's busy time."""

    def __init__(self) -> None:
        # pid -> comm, ppid, own s, children s, start time (ticks after boot: tells a reused pid)
        self.processes: dict[int, tuple[str, int, float, float, int]] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                reading = _read_stat(int(name))
                if reading is not None:
                    self.processes[int(name)] = reading
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        self.idle_s = (fields[3] + fields[4]) / TICKS          # idle + iowait
        self.total_s = sum(fields[:8]) / TICKS


def _read_stat(pid: int) -> tuple[str, int, float, float, int] | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None                                 # gone meanwhile
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime 14..17, starttime 22
    ppid = int(fields[1])
    own = (int(fields[11]) + int(fields[12])) / TICKS
    children = (int(fields[13]) + int(fields[14])) / TICKS
    return comm, ppid, own, children, int(fields[19])


def group_of(pid: int, processes: dict[int, tuple[str, int, float, float, int]], lab_pid: int) -> str:
    """The group of a live process: by its name, or by the ancestor that started it."""
    seen = 0
    while pid in processes and seen < 64:
        comm, ppid = processes[pid][:2]
        if comm == "pacemaker-execd" and seen:
            return "agents"                         # an agent still running, or what it runs
        if comm.startswith("pacemaker"):
            return "pacemaker"                      # a daemon, or what one other than execd ran (fencing)
        if comm.startswith("corosync"):
            return "corosync"
        if comm == "tgtd":
            return "tgtd"
        if comm in ("qemu-io", "qemu-system-x86", "qemu-system-x86_64") or comm.startswith("iscsi-"):
            return "initiators"
        if pid == lab_pid:
            return "lab"
        pid, seen = ppid, seen + 1
    return "other"


def by_group(before: Sample, after: Sample, lab_pid: int | None = None) -> dict:
    """CPU seconds per group between two samples, and the machine's busy share.

    A process alive at both counts its growth (its own and its reaped
    children's); one born in between counts whole. pacemaker-execd's reaped
    children are the agents; everything else a process reaped belongs to its
    group (the lab's crm_mon calls, a qemu-io's helpers).
    """
    lab_pid = os.getpid() if lab_pid is None else lab_pid
    used = dict.fromkeys(GROUPS, 0.0)
    for pid, (comm, _ppid, own, children, started) in after.processes.items():
        earlier = before.processes.get(pid)
        if earlier is not None and earlier[4] == started:
            own, children = own - earlier[2], children - earlier[3]
        group = group_of(pid, after.processes, lab_pid)
        used[group] += max(own, 0.0)
        used["agents" if comm == "pacemaker-execd" else group] += max(children, 0.0)
    span = after.total_s - before.total_s
    busy = 1 - (after.idle_s - before.idle_s) / span if span > 0 else None
    return {"cpu_s": {g: round(v, 2) for g, v in used.items()},
            "busy": None if busy is None else round(busy, 3)}
