"""Marks left while an agent has a target in a passing state, so that others
can tell "in progress" from "left behind".

iSCSILogicalUnit's stop may set its target offline for a moment (a LUN with
commands queued cannot be deleted otherwise); tgtuser's password change
leaves its targets bound to the guard alone for a moment. A monitor of the
target that runs then must not report a failure, and an agent killed in that
moment (kill -9, an op timeout) must not leave the target so forever: the
mark names the process, and a mark whose process is gone is finished by the
next monitor.
"""
from __future__ import annotations

import os

from .mutex import state_dir

LUN_STOP_COMM = "iSCSILogicalUn"     # the agent's /proc/PID/comm (15 bytes of "iSCSILogicalUnit")


def _prefix(control_port: int, tid: int) -> str:
    return f"tgtd{control_port}-offline-{tid}."


def mark_offline(control_port: int, tid: int) -> str:
    """Record that this process is about to set ``tid`` offline; returns the mark to clear."""
    path = os.path.join(state_dir(), _prefix(control_port, tid) + str(os.getpid()))
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with open(path, "w"):
        pass
    return path


def clear(mark: str) -> None:
    try:
        os.unlink(mark)
    except OSError:
        pass


def offline_marks(control_port: int, tid: int) -> tuple[bool, list[str]]:
    """(is a live process holding tid offline?, marks of processes that are gone)."""
    prefix = _prefix(control_port, tid)
    try:
        names = [n for n in os.listdir(state_dir()) if n.startswith(prefix)]
    except OSError:
        return False, []
    live, dead = False, []
    for name in names:
        pid = name[len(prefix):]
        if pid.isdigit() and _is_lun_agent(int(pid)):
            live = True
        else:
            dead.append(os.path.join(state_dir(), name))
    return live, dead


def _is_lun_agent(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip().startswith(LUN_STOP_COMM)
    except OSError:
        return False
