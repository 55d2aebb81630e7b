"""Failover scenarios, and what one failover did to the initiators.

Each failover: note the time, do the thing an administrator (or a failure)
does, wait until the cluster has settled and every affected initiator has
completed an I/O again, then record per affected initiator the I/O pause
(the longest gap between completed I/Os across the failover), the errors and
verification mismatches it saw, the unauthenticated logins that got in, and
the failed actions Pacemaker recorded.
"""
from __future__ import annotations

import bisect
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import cpu
from cluster import SUBNET2, Cluster, wait_for
from initiators import LunInitiator, UnauthenticatedProber
from timeline import cluster_side, read_events, read_spans
from topology import Topology

RESUME_TIMEOUT_S = 60.0


@dataclass
class Failover:
    scenario: str
    number: int
    action: str
    started: float                              # monotonic
    settled_s: float | None = None              # None: did not settle within the bound
    pauses: dict[str, float] = field(default_factory=dict)   # initiator -> seconds
    stalled: list[str] = field(default_factory=list)         # initiators with no I/O at the end
    io_errors: int = 0
    retried_unit_attentions: int = 0
    mismatches: int = 0
    unauth_logins: int = 0
    failed_actions: list[str] = field(default_factory=list)
    injected_failures: list[str] = field(default_factory=list)
    started_wall: float = 0.0                   # epoch, to read the Pacemaker logs against
    cluster: dict = field(default_factory=dict)  # timeline.cluster_side()
    actions: list[dict] = field(default_factory=list)   # timeline.Span.relative_to(), in order
    pause_spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # seconds from start
    unsettled: dict | None = None               # what the cluster looked like, and the recovery
    cpu: dict = field(default_factory=dict)     # cpu.by_group() from the start to the initiators' resumption
    # Kernel initiators only (guests.py): what the guests' kernels said.
    kernel_io_errors: list[str] = field(default_factory=list)
    ro_remounts: list[str] = field(default_factory=list)
    sessions_not_back: list[str] = field(default_factory=list)
    wwid_changes: list[str] = field(default_factory=list)
    wedged: list[str] = field(default_factory=list)          # iscsid's "can't bind conn" lines
    paths_not_back: list[str] = field(default_factory=list)  # multipath maps short of a path
    path_errors: list[str] = field(default_factory=list)     # multipath: I/O errors of one path
    migration: dict = field(default_factory=dict)            # the migrate scenario's checks (migrate.py)
    # A power-off: had every unblock recorded its initiators' current connections for the
    # tickles (None: no tickle_dir), waited for up to a monitor interval before the power-off.
    tickles_recorded: bool | None = None


def failure_text(failure: dict[str, str]) -> str:
    """One failed action as the report shows it."""
    return f"{failure.get('op_key')} on {failure.get('node')}: {failure.get('exitreason') or failure.get('status')}"


class Lab:
    """The running cluster, topology, initiators and prober the scenarios act on."""

    def __init__(self, cluster: Cluster, topology: Topology, initiators: list[LunInitiator],
                 settle_timeout_s: float, inject: set[tuple[str, int]] | None = None) -> None:
        self.cluster = cluster
        self.topology = topology
        self.initiators = initiators
        self.prober: UnauthenticatedProber | None = None
        self.settle_timeout_s = settle_timeout_s
        self.seen_failures: set[tuple[str, ...]] = set()
        self.inject = inject or set()           # (scenario, number): a start that fails, on purpose
        self.fleet = None                       # guests.GuestFleet with kernel initiators
        self.outage_s = 5.0                     # the "outage" scenario's length
        self.restart_gaps_s = [0.0, 10.0]       # the "restart" scenario's gaps, in turn
        self.config_tool = "crm"                # what the migrate scenario drives: crm or pcs
        self.migrate_control = ""               # its negative control, if any (migrate.py)
        self.resumed_wall = 0.0                 # epoch: every initiator connected (load start, a failover's end)

    def tickle_records_made(self, since: float) -> bool:
        """Has every portal's unblock recorded its connections in the shared tickle_dir
        since ``since`` (epoch)? Each monitor writes the whole record anew."""
        for target in self.topology.targets:
            for _, address, _ in self.topology.portals(target):
                try:
                    if (Path(self.topology.tickle_dir) / address).stat().st_mtime < since:
                        return False
                except OSError:
                    return False
        return True

    def new_failures(self) -> list[dict[str, str]]:
        """Failed operations recorded since the last call. Failures are not
        cleaned up during the run: a cleanup re-probes and can restart resources."""
        fresh = []
        for failure in self.cluster.failures():
            key = (failure.get("op_key", ""), failure.get("node", ""), failure.get("call", ""),
                   failure.get("last-rc-change", ""))
            if key not in self.seen_failures:
                self.seen_failures.add(key)
                fresh.append(failure)
        return fresh

    # ------------------------------------------------------------ where things are

    def group_nodes(self) -> dict[str, str | None]:
        """Target group -> the node all its members run on; None while any is down or elsewhere."""
        active = self.cluster.resources()
        where = {}
        for target in self.topology.targets:
            members = [p.id for p in self.topology.group_members(target)]
            nodes = {tuple(active.get(m, [])) for m in members}
            where[target.group] = nodes.pop()[0] if len(nodes) == 1 and () not in nodes else None
        return where

    def all_active(self) -> bool:
        """Every clone runs on every online (not standby) node and every group is whole on one node."""
        active = self.cluster.resources()
        online = sorted(self.online())
        if any(sorted(active.get(p.id, [])) != online for _, p in self.topology.clones()):
            return False
        return all(self.group_nodes().values())

    def online(self) -> set[str]:
        try:
            return self.cluster.online_nodes(self.cluster.any_node())
        except RuntimeError:
            return set()

    def initiators_of(self, groups: list[str]) -> list[LunInitiator]:
        names = {g.removeprefix("g_") for g in groups}
        return [i for i in self.initiators if i.lun.target_name in names]

    # ------------------------------------------------------------ one failover

    def failover(self, scenario: str, number: int, action: str, do, affected_groups: list[str],
                 ready_extra=lambda: True, injected=lambda f: False, victim: str | None = None) -> Failover:
        affected = self.initiators_of(affected_groups)
        errors_before = sum(len(i.log.errors) for i in affected)
        retries_before = sum(len(i.log.retried) for i in self.initiators)
        mismatches_before = sum(len(i.log.mismatches) for i in self.initiators)
        logins_before = len(self.prober.successes)
        cpu_before = cpu.Sample()
        record = Failover(scenario, number, action, time.monotonic(), started_wall=time.time())
        hidden = self._break_a_start(affected_groups) if (scenario, number) in self.inject else None
        do()
        time.sleep(1)

        def ready() -> bool:
            return (not self.cluster.booting() and ready_extra() and self.all_active()
                    and self.cluster.settled())

        failures: list[dict[str, str]] = []
        if wait_for(ready, self.settle_timeout_s, interval=0.5):
            record.settled_s = time.monotonic() - record.started
        else:
            record.unsettled = self.capture_state(record)
            failures += self.new_failures()     # the recovery's cleanup erases them
            record.unsettled["recovered"] = self.recover(hidden)
        if hidden is not None and record.settled_s is not None:
            self._restore(hidden)
        # Resumed: an I/O completed after the cluster settled (one merely in
        # flight when the failover began does not count).
        settled_at = time.monotonic()
        wait_for(lambda: all(i.log.last_completion() > settled_at for i in affected), RESUME_TIMEOUT_S)
        end = time.monotonic()
        record.cpu = cpu.by_group(cpu_before, cpu.Sample())
        for initiator in affected:
            began, ended = longest_gap(initiator.log.completions, record.started, end)
            record.pauses[initiator.lun.name] = ended - began
            record.pause_spans[initiator.lun.name] = (round(began - record.started, 3),
                                                      round(ended - record.started, 3))
            if initiator.log.last_completion() <= settled_at:
                record.stalled.append(initiator.lun.name)
        record.io_errors = sum(len(i.log.errors) for i in affected) - errors_before
        record.retried_unit_attentions = sum(len(i.log.retried) for i in self.initiators) - retries_before
        record.mismatches = sum(len(i.log.mismatches) for i in self.initiators) - mismatches_before
        record.unauth_logins = len(self.prober.successes) - logins_before
        if self.fleet is not None:
            self._kernel_side(record, end)
        for failure in failures + self.new_failures():
            text = failure_text(failure)
            (record.injected_failures if injected(failure) or hidden is not None
             else record.failed_actions).append(text)
        targets = [t for t in self.topology.targets if t.group in affected_groups]
        members = {p.id for t in targets for p in self.topology.group_members(t)}
        logs = self.cluster.pacemaker_logs()
        record.cluster = cluster_side(read_events(logs, record.started_wall),
                                      record.started_wall, members,
                                      {u for t in targets for u in self.topology.unblocks(t)}, victim)
        until = record.started_wall + (end - record.started)
        record.actions = [span.relative_to(record.started_wall)
                          for span in read_spans(logs, record.started_wall, until)]
        self.resumed_wall = time.time()
        return record

    def _kernel_side(self, record: Failover, end: float) -> None:
        """The guests' kernel log, iSCSI sessions and WWIDs over this failover."""
        fleet = self.fleet
        record.kernel_io_errors = [e.line for e in fleet.events_between(record.started, end, "io_error")]
        record.ro_remounts = [e.line for e in fleet.events_between(record.started, end, "read_only")]
        record.wedged = [e.line for e in fleet.events_between(record.started, end, "wedged")]
        record.path_errors = [e.line for e in fleet.events_between(record.started, end, "path_error")]
        for guest in fleet.guests:
            try:
                record.sessions_not_back += [f"{guest.name}: {iqn}" for iqn in guest.sessions_not_logged_in()]
                now = guest.devices()
                if guest.multipath:
                    record.paths_not_back += [f"{guest.name}: {p}" for p in guest.paths_not_active()]
            except (RuntimeError, OSError) as err:
                record.sessions_not_back.append(f"{guest.name}: no answer ({err})")
                continue
            for lun in guest.luns.values():
                if not lun.device:
                    continue    # never had a device (reported as a missing LUN): nothing to compare
                device, wwid = now.get((lun.lun.iqn, lun.lun.lun), ("gone", "gone"))
                if wwid != lun.wwid:
                    record.wwid_changes.append(f"{lun.lun.name}: {lun.wwid} -> {wwid}")
                elif device != lun.device:       # the same WWID in a new map: multipath made one
                    record.wwid_changes.append(f"{lun.lun.name}: {lun.device} -> {device} (new map)")

    # ------------------------------------------------------------ when a failover does not settle

    def capture_state(self, record: Failover) -> dict:
        """What the cluster looks like now: kept in the run directory and the report."""
        run_dir = self.cluster.run_dir
        name = f"unsettled-{record.scenario}-{record.number}"
        status = self.cluster.crm_mon_text()
        (run_dir / f"{name}.crm_mon.xml").write_text(status)
        failures = [failure_text(f) for f in self.cluster.failures()]
        tails = {}
        for node, log in zip(self.cluster.nodes, self.cluster.pacemaker_logs()):
            try:
                lines = log.read_text(errors="replace").splitlines()
            except OSError:
                continue
            tails[node.name] = [line for line in lines if "pacemaker-execd" in line
                                or "error" in line.lower() or "warning" in line.lower()][-25:]
        (run_dir / f"{name}.log-tails.txt").write_text(
            "".join(f"== {node}\n" + "\n".join(lines) + "\n" for node, lines in tails.items()))
        return {"crm_mon": f"{name}.crm_mon.xml", "failed_actions": failures,
                "log_tails": f"{name}.log-tails.txt",
                "groups_not_placed": [g for g, n in self.group_nodes().items() if n is None]}

    def recover(self, hidden: tuple[Path, Path] | None) -> bool:
        """Bring the cluster back to a known state: every node online, no leftover
        constraint or failure, everything started. True if it got there."""
        if hidden is not None:
            self._restore(hidden)
        for node in self.cluster.nodes:
            if not node.powered and not self.cluster.booting():
                try:
                    node.boot_cluster_stack()
                except RuntimeError:
                    pass
        try:
            anchor = self.cluster.any_node()
        except RuntimeError:
            return False
        for node in self.cluster.nodes:
            anchor.run("crm_attribute", "-t", "nodes", "-N", node.name, "-n", "standby", "-v", "off",
                       check=False)
        for target in self.topology.targets:
            anchor.run("crm_resource", "--clear", "-r", self.topology.placement(target), check=False)
            anchor.run("crm_resource", "-r", self.topology.placement(target), "--meta", "-d", "target-role",
                       check=False)    # a restart that did not settle
        anchor.run("crm_resource", "--cleanup", check=False)
        return wait_for(lambda: not self.cluster.booting() and self.all_active() and self.cluster.settled(),
                        self.settle_timeout_s, interval=1)

    def _break_a_start(self, groups: list[str]) -> tuple[Path, Path]:
        """Injected failure: the first LUN of the first affected group loses its
        backing file, so its start fails on every node until it is put back."""
        target = next(t for t in self.topology.targets if t.group in groups)
        path = target.lun_paths[0]
        hidden = path.with_name(path.name + ".hidden")
        path.rename(hidden)
        return hidden, path

    @staticmethod
    def _restore(hidden: tuple[Path, Path]) -> None:
        if hidden[0].exists():
            hidden[0].rename(hidden[1])


def longest_gap(completions: list[float], start: float, end: float) -> tuple[float, float]:
    """The longest time without a completed I/O within [start, end], as (from, to);
    a gap that began before ``start`` counts from its beginning."""
    times = completions[:]                      # the initiator's thread appends meanwhile
    first = bisect.bisect_right(times, start)
    last = bisect.bisect_right(times, end)
    edges = [times[first - 1] if first else start, *times[first:last], end]
    return max(zip(edges, edges[1:]), key=lambda gap: gap[1] - gap[0])


# ---------------------------------------------------------------- the scenarios

def move_one_group(lab: Lab, number: int) -> Failover:
    targets = lab.topology.targets
    target = targets[(number - 1) % len(targets)]
    where = lab.group_nodes()
    source = where[target.group]
    destination = next(n.name for n in lab.cluster.nodes if n.name != source)
    node = lab.cluster.any_node()

    def do() -> None:
        node.run("crm_resource", "--move", "-r", lab.topology.placement(target), "-N", destination, check=False)

    record = lab.failover("move", number, f"move {target.group} {source} -> {destination}", do,
                          [target.group], ready_extra=lambda: lab.group_nodes()[target.group] == destination,
                          victim=source)
    node.run("crm_resource", "--clear", "-r", lab.topology.placement(target), check=False)
    return record


def _busiest_node(lab: Lab) -> str:
    where = [n for n in lab.group_nodes().values() if n]
    return max((n.name for n in lab.cluster.nodes), key=where.count)


def standby_node(lab: Lab, number: int) -> Failover:
    victim = _busiest_node(lab)
    groups = [g for g, n in lab.group_nodes().items() if n == victim]
    node = lab.cluster.any_node()

    def do() -> None:
        node.run("crm_attribute", "-t", "nodes", "-N", victim, "-n", "standby", "-v", "on", check=False)

    record = lab.failover("standby", number, f"standby {victim} ({len(groups)} groups)", do, groups,
                          ready_extra=lambda: victim not in lab.group_nodes().values(), victim=victim)
    node.run("crm_attribute", "-t", "nodes", "-N", victim, "-n", "standby", "-v", "off", check=False)
    wait_for(lambda: victim in lab.online() and lab.cluster.settled(), 60, interval=0.5)
    return record


def power_off_node(lab: Lab, number: int) -> Failover:
    # After a power-off only the tickles reset the initiators, sent to the connections
    # the unblocks' monitors recorded: a load older than a monitor interval has been
    # recorded; the connections of a failover seconds ago (or of a load just begun)
    # not yet. The lab waits for that, as a cluster's load would be older.
    recorded = None
    if lab.topology.stack == "tgtha" and lab.topology.portblock and lab.topology.tickle_dir:
        since = lab.resumed_wall
        recorded = wait_for(lambda: lab.tickle_records_made(since), lab.topology.monitor_s + 10)
    victim = _busiest_node(lab)
    groups = [g for g, n in lab.group_nodes().items() if n == victim]
    fences_before = len(lab.cluster.fence_log)

    def fenced_and_back() -> bool:
        fenced = any(victim in line for line in lab.cluster.fence_log[fences_before:])
        return fenced and lab.cluster.node(victim).powered and victim in lab.online()

    record = lab.failover("power-off", number, f"power off {victim} ({len(groups)} groups)",
                          lab.cluster.node(victim).power_off, groups, ready_extra=fenced_and_back,
                          victim=victim)
    record.tickles_recorded = recorded
    return record


def kill_tgtd(lab: Lab, number: int) -> Failover:
    victim = _busiest_node(lab)
    groups = [g for g, n in lab.group_nodes().items() if n == victim]

    def do() -> None:
        for pid in lab.cluster.node(victim).pids("tgtd"):
            os.kill(pid, signal.SIGKILL)

    def injected(failure: dict[str, str]) -> bool:
        # The kill itself, as tgtd's exit watcher reported it (asyncmon) or whichever
        # monitor on that node saw it first (tgtd's, a target's, the account's); a
        # failed start or stop is never this.
        op_key = failure.get("op_key", "")
        return failure.get("node") == victim and ("_monitor_" in op_key or "_asyncmon_" in op_key)

    return lab.failover("kill-tgtd", number, f"kill -9 tgtd on {victim} ({len(groups)} groups)", do,
                        groups, injected=injected, victim=victim)


def restart_node_targets(lab: Lab, number: int) -> Failover:
    """An administrator's restart of every target of one node (``crm resource stop``,
    a pause, ``start``), in place: with a static portal the only way a target goes
    and comes back. The gap between stop and start alternates (``lab.restart_gaps_s``);
    while it lasts the node has none of them, and with a static portal its
    address still answers: the empty-tgtd window."""
    victim = _busiest_node(lab)
    targets = [t for t in lab.topology.targets if lab.group_nodes()[t.group] == victim]
    gap = lab.restart_gaps_s[(number - 1) % len(lab.restart_gaps_s)]
    node = lab.cluster.any_node()
    members = {t.name: [p.id for p in lab.topology.group_members(t)] for t in targets}

    def role(value: str) -> None:
        for target in targets:
            node.run("crm_resource", "-r", lab.topology.placement(target), "--meta", "-p", "target-role",
                     "-v", value, check=False)

    def stopped() -> bool:
        active = lab.cluster.resources()
        return not any(active.get(member) for ids in members.values() for member in ids)

    def do() -> None:
        role("Stopped")
        wait_for(stopped, lab.settle_timeout_s, interval=0.2)
        time.sleep(gap)
        role("Started")

    return lab.failover("restart", number, f"restart {len(targets)} targets on {victim}, {gap:.0f}s apart",
                        do, [t.group for t in targets], victim=victim)


OUTAGE_RULE = ["-p", "tcp", "--dport", "3260", "-m", "comment", "--comment", "tgtha-lab-outage",
               "-j", "REJECT", "--reject-with", "tcp-reset"]


def outage(lab: Lab, number: int) -> Failover:
    """No failover: every node refuses port 3260 for ``lab.outage_s``, then lets
    it through again. The detectors' negative control: an outage longer than the
    initiators' replacement_timeout must show their I/O errors and read-only
    file systems in the report, a short one none."""
    nodes = [n for n in lab.cluster.nodes if n.powered]

    def do() -> None:
        for node in nodes:
            node.run("iptables", "-I", "INPUT", *OUTAGE_RULE)
        time.sleep(lab.outage_s)
        for node in nodes:
            node.run("iptables", "-D", "INPUT", *OUTAGE_RULE, check=False)

    groups = [t.group for t in lab.topology.targets]
    return lab.failover("outage", number, f"outage of every target for {lab.outage_s:.0f}s", do, groups)


def lose_a_network(lab: Lab, number: int) -> Failover:
    """Multipath only, no failover: the second network's portals refuse every
    connection for the whole failover and its checks, then come back. I/O must go
    on over the first network's paths (after replacement_timeout fails the
    others), and the report must show the paths down: the negative control of
    the path check."""
    nodes = [n for n in lab.cluster.nodes if n.powered]
    rule = ["-d", f"{SUBNET2}.0/24", *OUTAGE_RULE]
    guests = lab.fleet.guests if lab.fleet else []

    def do() -> None:
        for node in nodes:
            node.run("iptables", "-I", "INPUT", *rule)
        # An idle path notices at its next NOP-Out (5 s, answered within 5 s), then
        # replacement_timeout: wait for multipath to fail one, as an administrator would.
        wait_for(lambda: any(g.paths_not_active(wait_s=0) for g in guests), 60, interval=1)

    groups = [t.group for t in lab.topology.targets]
    try:
        return lab.failover("lose-network", number, "the second network's portals refuse everything", do, groups)
    finally:
        for node in nodes:
            node.run("iptables", "-D", "INPUT", *rule, check=False)
        for guest in guests:
            guest.paths_not_active(wait_s=60)       # back before the next one


SCENARIOS = {
    "move": move_one_group,
    "standby": standby_node,
    "power-off": power_off_node,
    "kill-tgtd": kill_tgtd,
    "outage": outage,
    "restart": restart_node_targets,
    "lose-network": lose_a_network,
}
DEFAULT_SCENARIOS = ["move", "standby", "power-off", "kill-tgtd"]
# A static portal's target cannot leave its node: it restarts there, after tgtd too.
STATIC_PORTAL_SCENARIOS = ["restart", "kill-tgtd"]
