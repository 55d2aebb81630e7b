"""Tells Pacemaker the moment tgtd dies, instead of at tgtd's next monitor.

When tgtd dies (kill -9, a crash), every initiator's connection is reset at
once, but Pacemaker learns of it only at the next monitor: 0-1 s later at the
1 s interval (measured in the lab, about half of a kill -9's cluster side).
A kernel initiator reconnects 2 s after the reset (DefaultTime2Wait); when the
targets are not back by then it is refused and waits 3 s more, so that second
of detection often costs initiators 3.

The watcher is one small process per tgtd, started by the agent's start (or
by a monitor that finds it missing). It waits on tgtd's pidfd, which the agent
opened and handed over (so a recycled pid can never be mistaken for tgtd), and
when tgtd is gone it reports the failure as Pacemaker's own tools do,
``crm_resource --fail``: the same recovery a failed monitor starts.

It reports only what a monitor would: not while the resource is unmanaged or
in maintenance (cluster, node or resource, which crm_mon shows as
managed="false"). Pacemaker runs no monitor then, and a recorded failure
would restart every target of the node when maintenance ends. Whatever it
cannot decide (no cluster answering, crm_mon failing) it leaves to the next
monitor. The agent's stop ends the watcher before it stops tgtd.
"""
from __future__ import annotations

import os
import select
import sys
import time

from . import ocf_runtime as ocf
from .mutex import state_dir

MARKER = "tgtha.tgtd_watch"
PIDFD = 3           # where the watcher finds tgtd's pidfd
SIGKILL = 9         # the signal module imports enum: 5 ms on every stop
TOOL_TIMEOUT_S = 10


def pid_file(control_port: int) -> str:
    return os.path.join(state_dir(), f"tgtd-watch.{control_port}")


def watching(control_port: int) -> tuple[int, int] | None:
    """(watcher pid, tgtd pid) of this control port's live watcher, else None."""
    try:
        with open(pid_file(control_port)) as file:
            watcher, tgtd = (int(word) for word in file.read().split())
        with open(f"/proc/{watcher}/cmdline", "rb") as file:
            if MARKER.encode() not in file.read():
                return None
    except (OSError, ValueError):
        return None
    return watcher, tgtd


def spawn(control_port: int, tgtd_pid: int, resource: str, node: str) -> None:
    """Start a watcher for ``tgtd_pid`` (replacing any older one of this port)."""
    from .proc import python_call, spawn_detached     # not on the monitor's path, which only reads the pid file
    end(control_port)
    os.makedirs(state_dir(), exist_ok=True)
    try:
        pidfd = os.pidfd_open(tgtd_pid)
    except ProcessLookupError:
        return  # already gone: the start's caller finds out, or the next monitor does
    argv = [*python_call(MARKER, "main"), str(tgtd_pid), resource, node]
    null_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        watcher = spawn_detached(argv, {0: null_fd, 1: null_fd, 2: null_fd, PIDFD: pidfd})
    finally:
        os.close(pidfd)
        os.close(null_fd)
    temporary = f"{pid_file(control_port)}.{os.getpid()}"
    try:
        with open(temporary, "w") as file:
            file.write(f"{watcher} {tgtd_pid}\n")
        os.replace(temporary, pid_file(control_port))
    except OSError:
        os.kill(watcher, SIGKILL)   # one nobody could find and end would outlive a stop
        raise


def end(control_port: int, wait_s: float = 2.0) -> None:
    """Stop this port's watcher (before tgtd is stopped on purpose) and wait for it."""
    found = watching(control_port)
    if found is not None:
        watcher = found[0]
        try:
            pidfd = os.pidfd_open(watcher)
            os.kill(watcher, SIGKILL)
            select.select([pidfd], [], [], wait_s)
            os.close(pidfd)
        except ProcessLookupError:
            pass
    try:
        os.unlink(pid_file(control_port))
    except FileNotFoundError:
        pass


def managed_here(crm_mon_xml: str, resource: str, node: str) -> bool:
    """Whether crm_mon shows ``resource`` on ``node`` managed (not unmanaged, not
    in maintenance of any kind)."""
    from xml.etree import ElementTree
    root = ElementTree.fromstring(crm_mon_xml)
    for element in root.iter("resource"):
        if element.get("id") == resource and any(n.get("name") == node for n in element.iter("node")):
            return element.get("managed") == "true"
    return False


def _report(tgtd_pid: int, resource: str, node: str) -> None:
    import subprocess
    try:
        status = subprocess.run(["crm_mon", "--one-shot", "--output-as=xml"], capture_output=True,
                                text=True, timeout=TOOL_TIMEOUT_S)
        managed = status.returncode == 0 and managed_here(status.stdout, resource, node)
    except (OSError, subprocess.SubprocessError, SyntaxError) as err:   # ParseError is a SyntaxError
        ocf.log_warning(f"tgtd (pid {tgtd_pid}) exited; crm_mon failed ({err}): left to the next monitor")
        return
    if not managed:
        ocf.log_warning(f"tgtd (pid {tgtd_pid}) exited while {resource} is not managed on {node} "
                     "(maintenance or unmanaged): not reported")
        return
    try:
        failed = subprocess.run(["crm_resource", "--fail", "--resource", resource, "--node", node],
                                capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as err:
        ocf.log_warning(f"tgtd (pid {tgtd_pid}) exited; crm_resource --fail failed ({err}): "
                        "left to the next monitor")
        return
    if failed.returncode == 0:
        ocf.log_warning(f"tgtd (pid {tgtd_pid}) exited unexpectedly: reported to Pacemaker at once "
                        f"(crm_resource --fail, shown as {resource}_asyncmon_0 'Simulated failure')")
    else:
        ocf.log_warning(f"tgtd (pid {tgtd_pid}) exited; crm_resource --fail said "
                        f"{(failed.stderr or failed.stdout).strip()[:200]!r}: left to the next monitor")


def main() -> None:
    """The watcher process: ``<tgtd pid> <resource> <node>``, tgtd's pidfd on fd 3."""
    tgtd_pid, resource, node = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    sys.argv[0] = "tgtd"    # the agent's name in the log lines
    poller = select.poll()
    poller.register(PIDFD, select.POLLIN)
    while not poller.poll():
        pass
    started = time.monotonic()
    _report(tgtd_pid, resource, node)
    ocf.log_debug(f"watcher done in {time.monotonic() - started:.3f}s")
