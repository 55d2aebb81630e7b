#!/usr/bin/python3
"""The tgtha lab: a Pacemaker cluster in namespaces, iSCSI targets under
initiator load, failovers, a report. ``make lab`` runs it (as root).

Knobs (environment): LAB_NODES=2 LAB_TARGETS=6 LAB_LUNS=2 LAB_FAILOVERS=10
LAB_SCENARIOS=move,standby,power-off,kill-tgtd STACK=tgtha|stock
LAB_CONFIG=crm|pcs LAB_OUT=./lab-out LAB_IO_GAP_MS=100 LAB_SETTLE_TIMEOUT=120
LAB_MONITOR_S=10 (the monitor interval of every target's resources)
LAB_TGTD_MONITOR_S=5 (tgtd's; 1 with LAB_WATCH_EXIT=0) LAB_NODE_ACTION_LIMIT=8 (Pacemaker's node-action-limit)
LAB_TOKEN_MS=1000 (Corosync's token timeout)
LAB_INJECT=scenario:number,... (a start that fails on purpose in those failovers)
LAB_DISKS=tmpfs|host (where the LUN files live, see disks.py)
LAB_REBOOT_DELAY_S=15 (a fenced node is powered on again after this long)
LAB_BLOCK=drop|silent|reject|reset (tgtha portblock's method, see topology.py; default
reset for kernel initiators, silent for libiscsi)
LAB_LAYOUT=sets|group (a target's resources: ordered sets or one group, see
topology.py; default sets with STACK=tgtha, group with STACK=stock)
LAB_INITIATOR=kernel|libiscsi|both (Linux guests with open-iscsi and a file system
per LUN, see guests.py, or qemu-io's libiscsi; both: odd LUN numbers to the guests,
even ones to libiscsi, each LUN one writer) LAB_GUESTS=2 LAB_REPLACEMENT_TIMEOUT=120
LAB_TIME2WAIT= (iSCSI DefaultTime2Wait on targets and guests; default: theirs, 2 s)
LAB_SCENARIOS may add "outage" (every target refused for LAB_OUTAGE_S=5 seconds, no
failover: the detectors' negative control) and "restart" (every target of one node
stopped and started in place, LAB_RESTART_GAPS=0,10 seconds apart in turn) and,
with LAB_MULTIPATH=1, "lose-network" (the second network's portals refuse
everything through one failover's checks: the path check's negative control)
LAB_PORTAL=vip|static (static: the portal addresses are the nodes' own, targets
pinned, scenarios restart and kill-tgtd, see topology.py)
LAB_PLACEHOLDER=1 (0: tgtd agent's placeholder_target=false, the negative control
of the static portal's empty-tgtd window)
LAB_WATCH_EXIT=1 (0: tgtd agent's watch_exit=false, a dead tgtd seen by its monitor alone)
LAB_SCENARIOS=migrate (alone): the run begins on the stock agents and moves to
tgtha's under load by README's procedure (migrate.py); LAB_MIGRATE_CONTROL=no-refresh|
no-identity: the procedure without a step, the negative controls
LAB_MULTIPATH=0 (1: a second network and a second portal per target, the guests on
both, dm-multipath with no_path_retry queue in them; LAB_REPLACEMENT_TIMEOUT then
defaults to 5 s, the low end of open-iscsi's advice for dm-multipath)
"""
from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path

from cluster import CLIENT_IP, SUBNET, SUBNET2, Cluster, wait_for
from disks import SharedDisks
from initiators import Lun, LunInitiator, UnauthenticatedProber
from report import pause_figures, representative, summarize, table, worst, write_gantt, write_json, write_timeline
from scenarios import (DEFAULT_SCENARIOS, RESUME_TIMEOUT_S, SCENARIOS, STATIC_PORTAL_SCENARIOS, Failover, Lab,
                       failure_text)
from migrate import migrate
from topology import Target, Topology

SCENARIOS = {**SCENARIOS, "migrate": migrate}   # its own module: it needs the others' Lab

LUN_SIZE = 64 << 20
GUEST_ADDRESSES = [f"{SUBNET}.{210 + n}" for n in range(1, 10)]
GUEST_ADDRESSES2 = [f"{SUBNET2}.{210 + n}" for n in range(1, 10)]


class Settings:
    def __init__(self, env=os.environ) -> None:
        self.nodes = int(env.get("LAB_NODES") or "2")
        self.targets = int(env.get("LAB_TARGETS") or "6")
        self.luns = int(env.get("LAB_LUNS") or "2")
        self.failovers = int(env.get("LAB_FAILOVERS") or "10")
        self.portal = env.get("LAB_PORTAL") or "vip"
        defaults = STATIC_PORTAL_SCENARIOS if self.portal == "static" else DEFAULT_SCENARIOS
        self.scenarios = [s for s in (env.get("LAB_SCENARIOS") or ",".join(defaults)).split(",") if s]
        self.restart_gaps_s = [float(g) for g in (env.get("LAB_RESTART_GAPS") or "0,10").split(",") if g]
        self.placeholder = (env.get("LAB_PLACEHOLDER") or "1") != "0"
        self.watch_exit = (env.get("LAB_WATCH_EXIT") or "1") != "0"
        self.stack = env.get("STACK") or "tgtha"
        self.config_tool = env.get("LAB_CONFIG") or "crm"
        self.out = Path(env.get("LAB_OUT") or "lab-out").resolve()
        # Think time between an initiator's write+verify rounds. On this one
        # machine the initiators share two cores with both nodes, and system
        # calls are dear here: at 30 ms, tgtd alone took a whole core serving
        # them and every Pacemaker action slowed (move cluster side p50 2.8 s;
        # 1.5 s at 100 ms, same machine).
        self.io_gap_s = int(env.get("LAB_IO_GAP_MS") or "100") / 1000
        self.monitor_s = int(env.get("LAB_MONITOR_S") or "10")
        # With the exit watcher a death is reported at once; the monitor finds hangs
        # (README, tgtd: 5 s measured as good as 1 s). Without it, the monitor detects.
        self.tgtd_monitor_s = int(env.get("LAB_TGTD_MONITOR_S") or ("5" if self.watch_exit else "1"))
        self.node_action_limit = int(env.get("LAB_NODE_ACTION_LIMIT") or "8")
        # Corosync's token: a lost node is seen after it plus consensus (1.2 x token).
        self.token_ms = int(env.get("LAB_TOKEN_MS") or "1000")
        self.settle_timeout_s = float(env.get("LAB_SETTLE_TIMEOUT") or "120")
        self.prefix = env.get("LAB_PREFIX") or "tgthalab"
        self.disks = env.get("LAB_DISKS") or "tmpfs"
        self.reboot_delay_s = float(env.get("LAB_REBOOT_DELAY_S") or "15")
        # LAB_SCENARIOS=migrate: the run begins on the stock agents and moves to tgtha's
        # under load (migrate.py).
        self.migrating = self.scenarios[:1] == ["migrate"]
        self.migrate_control = env.get("LAB_MIGRATE_CONTROL") or ""
        self.layout = env.get("LAB_LAYOUT") or ("sets" if self.stack == "tgtha" and not self.migrating
                                                else "group")
        # kernel by default: what users run (a default run takes ~9.5 min here, libiscsi ~7.5)
        self.initiator = env.get("LAB_INITIATOR") or "kernel"
        # The block that brings each kind of initiator back soonest (README, portblock):
        # open-iscsi: reset, drop's INPUT block (the close's resets reach it at the block,
        # so iscsid's 2 s wait runs while the group moves, and a reconnect still blocked
        # is a dropped SYN that TCP retries after 1 s, not a refusal after which iscsid
        # waits 3 s) that also resets a dead node's initiators as the VIP, tickling them,
        # comes up; libiscsi: silent (it reconnects at once on a reset and would back
        # off on dropped SYNs).
        self.block_method = env.get("LAB_BLOCK") or ("silent" if self.initiator == "libiscsi" else "reset")
        self.guests = int(env.get("LAB_GUESTS") or "2")
        self.multipath = (env.get("LAB_MULTIPATH") or "0") == "1"
        # open-iscsi's README (8.1.3): with dm-multipath's queueing, 5 to 15 s, so that a
        # path fails over to multipath quickly; 120 s (its default) without.
        self.replacement_timeout_s = int(env.get("LAB_REPLACEMENT_TIMEOUT") or ("5" if self.multipath else "120"))
        self.outage_s = float(env.get("LAB_OUTAGE_S") or "5")
        # iSCSI DefaultTime2Wait for targets and kernel initiators alike (negotiated as the
        # maximum of both offers); empty: each side's default, 2 s, as users have it.
        self.time2wait = env.get("LAB_TIME2WAIT") or ""
        # LAB_INJECT=move:1,standby:2 : in those failovers a LUN start fails on every
        # node (its backing file is hidden) until the lab's recovery puts it back.
        self.inject = {(item.split(":")[0], int(item.split(":")[1]))
                       for item in (env.get("LAB_INJECT") or "").split(",") if item}
        # migrate runs alone: after it the targets have no portblock (as stock users run them),
        # so a failover would delete LUNs under their initiators, as the stock layout does.
        problems = [s for s in self.scenarios if s not in SCENARIOS or (self.migrating and self.scenarios != [s])
                    or (self.portal == "static" and s not in STATIC_PORTAL_SCENARIOS + ["outage"])
                    or (s == "lose-network" and not self.multipath)]
        if problems or self.disks not in ("tmpfs", "host") or self.block_method not in ("silent", "reject", "drop", "reset") \
                or self.layout not in ("sets", "group") or self.initiator not in ("libiscsi", "kernel", "both") \
                or not 1 <= self.guests <= 9 or self.token_ms < 100 \
                or min(self.monitor_s, self.tgtd_monitor_s, self.node_action_limit) < 1 \
                or self.stack not in ("tgtha", "stock") or self.config_tool not in ("crm", "pcs") \
                or not 2 <= self.nodes <= 9 or not 1 <= self.targets <= 99 or self.luns < 1 \
                or (self.initiator == "both" and self.luns < 2) or self.portal not in ("vip", "static") \
                or not self.restart_gaps_s or (self.multipath and self.initiator == "libiscsi") \
                or self.migrate_control not in ("", "no-refresh", "no-identity") \
                or (self.migrating and (self.stack != "tgtha" or self.layout != "group" or self.portal != "vip"
                                        or self.multipath)):
            raise SystemExit(f"lab: bad settings (unknown scenarios {problems}?) see {__file__}'s docstring")


class Progress:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {message}", flush=True)


def firewall_rules(cluster: Cluster) -> dict[str, int]:
    """Port 3260 block rules per node: what a portblock that cannot see its own rules leaves."""
    counts = {}
    for node in cluster.nodes:
        if node.powered:
            rules = node.run("iptables-save", check=False).stdout.splitlines()
            counts[node.name] = sum(1 for line in rules if "3260" in line and ("DROP" in line or "REJECT" in line))
    return counts


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


def configure(cluster: Cluster, topology: Topology, tool: str, work: Path) -> None:
    node = cluster.nodes[0]
    if tool == "crm":
        config = work / "cluster.crm"
        config.write_text(topology.crm_configuration())
        # Stock iSCSITarget declares incoming_username unique, so one account on
        # every target (what initiators need) takes crmsh's --force there.
        force = ["-F"] if topology.stack == "stock" else []
        result = node.run("crm", *force, "configure", "load", "update", str(config), check=False)
    else:
        cib = work / "cluster-pcs.xml"
        node.run("sh", "-c", f"cibadmin --query > {cib}")
        for argv in topology.pcs_commands():
            result = node.run("pcs", "-f", str(cib), *argv, check=False)
            if result.returncode != 0:
                break
        else:
            result = node.run("cibadmin", "--replace", "--xml-file", str(cib), check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{tool} configuration failed: {(result.stdout + result.stderr).strip()[-1500:]}")


# The longest one failover can take: the settle bound, a recovery (same bound), the resume wait.
def failover_bound_s(settings: Settings) -> float:
    return 2 * settings.settle_timeout_s + RESUME_TIMEOUT_S + 20


class Run:
    """What the lab has done so far: enough to report at any moment, also when interrupted."""

    def __init__(self, settings: Settings, progress: Progress) -> None:
        self.settings = settings
        self.progress = progress
        self.initiators: list[LunInitiator] = []
        self.prober: UnauthenticatedProber | None = None
        self.fleet = None                                  # guests.GuestFleet (LAB_INITIATOR=kernel|both)
        self.lun_kinds: dict[str, set[str]] = {}           # "kernel"/"libiscsi" -> the LUNs it writes
        self.results: dict[str, list[Failover]] = {}
        self.ended_early: dict[str, str] = {}
        self.start_failures: list[str] = []
        self.not_started: list[str] = []
        self.idle: list[str] = []
        self.all_started = False
        self.serving = False
        self.load_start = time.monotonic()
        self.backing_store = ""
        self.failovers_done = 0
        self.failover_seconds = 0.0
        self.extra: dict = {}                              # the job's own report (e.g. CTS's results)
        self.extra_lines: list[str] = []                   # and its lines under the table

    def eta(self) -> str:
        planned = sum(1 if s == "migrate" else self.settings.failovers for s in self.settings.scenarios)
        left = planned - self.failovers_done - sum(
            self.settings.failovers - len(self.results.get(s, [])) for s in self.ended_early)
        if not self.failovers_done:
            return ""
        typical = self.failover_seconds / self.failovers_done
        return (f"; ETA {left * typical / 60:.0f} min "
                f"(at most {left * failover_bound_s(self.settings) / 60:.0f} min)")

    def scenario(self, lab: Lab, name: str) -> None:
        unsettled_in_a_row = 0
        # A migration happens once.
        for number in range(1, (1 if name == "migrate" else self.settings.failovers) + 1):
            began = time.monotonic()
            record = SCENARIOS[name](lab, number)
            self.results.setdefault(name, []).append(record)
            self.failovers_done += 1
            self.failover_seconds += time.monotonic() - began
            worst = max(record.pauses.values(), default=0.0)
            cluster_s = record.cluster.get("cluster_s")
            self.progress(
                f"{name} {number}/{self.settings.failovers}: {record.action}: "
                + (f"settled in {record.settled_s:.1f}s" if record.settled_s is not None
                   else f"NOT settled in {self.settings.settle_timeout_s:.0f}s (state in run/"
                        f"{record.unsettled['crm_mon']}; recovered: {record.unsettled['recovered']})")
                + (f", cluster {cluster_s:.2f}s" if cluster_s is not None else "")
                + f", worst pause {worst:.2f}s, errors {record.io_errors}, mismatches "
                f"{record.mismatches}, unauth {record.unauth_logins}"
                + (f", failed actions {record.failed_actions}" if record.failed_actions else "")
                + (f", injected {record.injected_failures}" if record.injected_failures else "")
                + (f", stalled {record.stalled}" if record.stalled else "")
                + self.eta())
            unsettled_in_a_row = 0 if record.settled_s is not None else unsettled_in_a_row + 1
            if unsettled_in_a_row == 2:
                self.ended_early[name] = f"two failovers in a row did not settle (at {number})"
                self.progress(f"{name}: ended early: {self.ended_early[name]}")
                return

    def report(self, cluster: Cluster, interrupted: bool) -> dict:
        settings = self.settings
        scenarios = [summarize(name, records) for name, records in self.results.items()]
        for scenario, records in zip(scenarios, self.results.values()):
            scenario["ended_early"] = self.ended_early.get(scenario["name"])
            scenario["initiator"] = settings.initiator
            if settings.initiator == "both":
                scenario["by_initiator"] = {kind: pause_figures(records, names)
                                            for kind, names in self.lun_kinds.items()}
        pauses = [s["pause_max_s"] for s in scenarios if s["pause_max_s"] is not None]
        initiators = self.initiators
        return {
            "stack": settings.stack,
            "config_tool": settings.config_tool,
            "block_method": settings.block_method if settings.stack == "tgtha" else "stock (INPUT DROP)",
            "layout": settings.layout,
            "portal": settings.portal,
            "multipath": settings.multipath,
            "replacement_timeout_s": settings.replacement_timeout_s if self.fleet else None,
            "placeholder_target": settings.placeholder if settings.stack == "tgtha" else None,
            "watch_exit": settings.watch_exit if settings.stack == "tgtha" else None,
            "interrupted": interrupted,
            "nodes": settings.nodes,
            "targets": settings.targets,
            "luns": settings.targets * settings.luns,
            "backing_store": self.backing_store,
            "initiator": "; ".join(initiator_description(kind, settings) for kind in self.lun_kinds),
            "start_failed_actions": self.start_failures,
            "serving": self.serving,
            "resources_not_started_at_start": self.not_started,
            "luns_without_io_at_start": self.idle,
            "firewall_rules_left": firewall_rules(cluster),
            "all_started": self.all_started,
            "prober_attempts": len(self.prober.attempts) if self.prober else 0,
            "unauth_logins_total": len(self.prober.successes) if self.prober else 0,
            "total_io_completed": sum(len(i.log.completions) for i in initiators),
            "total_io_errors": sum(len(i.log.errors) for i in initiators),
            "total_mismatches": sum(len(i.log.mismatches) for i in initiators),
            "total_retried_unit_attentions": sum(len(i.log.retried) for i in initiators),
            "first_errors": [f"{i.lun.name}: {text}" for i in initiators for _, text in i.log.errors[:3]][:20],
            "first_mismatches": [f"{i.lun.name}: {text}" for i in initiators
                                 for _, text in i.log.mismatches[:3]][:20],
            "worst_pause_s": max(pauses) if pauses else None,
            "fence_log": cluster.fence_log,
            "guest_login_failures": [f"{g.name}: {f}" for g in self.fleet.guests for f in g.login_failures]
            if self.fleet else [],
            "scenarios": scenarios,
            **self.extra,
        }

    def write_report(self, cluster: Cluster, interrupted: bool) -> None:
        for initiator in self.initiators:
            initiator.stop()
        if self.prober is not None:
            self.prober.stop()
        out = self.settings.out
        report = self.report(cluster, interrupted)
        write_json(report, out / "report.json")
        write_timeline(out / "timeline.png", self.load_start, self.initiators,
                       [r for records in self.results.values() for r in records])
        gantts = []
        for scenario, records in self.results.items():
            for suffix, chosen in (("", representative(records)), ("-worst", worst(records))):
                if chosen is not None:
                    write_gantt(out / f"gantt-{scenario}{suffix}.png", chosen)
                    gantts.append(str(out / f"gantt-{scenario}{suffix}.png"))
        print()
        print(("INTERRUPTED: what completed. " if interrupted else "")
              + f"tgtha lab report: stack={report['stack']}, {report['nodes']} nodes, {report['targets']} "
              f"targets, {report['luns']} LUNs; {report['total_io_completed']} I/Os verified, "
              f"{report['prober_attempts']} unauthenticated login attempts")
        if report["scenarios"] or not self.serving:
            print(table(report))
        if self.extra_lines:
            print("\n".join(self.extra_lines))
        print("\n".join(["", str(out / "report.json"), str(out / "timeline.png"), *gantts]), flush=True)


def initiator_kinds(initiator: str, luns: list[Lun]) -> dict[str, set[str]]:
    """Which LUNs each kind of initiator writes: one writer per LUN (a guest's file
    system and a second writer would corrupt each other)."""
    if initiator != "both":
        return {initiator: {lun.name for lun in luns}}
    return {"kernel": {lun.name for lun in luns if lun.lun % 2 == 1},
            "libiscsi": {lun.name for lun in luns if lun.lun % 2 == 0}}


def initiator_description(kind: str, settings: Settings) -> str:
    """What one kind of the lab's initiators is and does, for the report."""
    if kind == "kernel":
        return (f"kernel: {settings.guests} Linux guests, open-iscsi, ext4/xfs, O_DIRECT|O_DSYNC 4 KiB "
                "records re-read and checked, one CHAP account, replacement_timeout "
                f"{settings.replacement_timeout_s} s"
                + (", dm-multipath over two portals (no_path_retry queue)" if settings.multipath else ""))
    return "qemu-io (QEMU's libiscsi driver), CHAP, write + verified read, 64 KiB"


def start_kernel_initiators(settings: Settings, cluster: Cluster, topology: Topology, luns: list[Lun],
                            password: str, run_dir: Path, progress: Progress):
    """Guests booted, logged in to every target with the shared account, a file system and a
    writer on each LUN (guests.py)."""
    from guests import assign_luns, start_guests
    began = time.monotonic()
    bridges = cluster.client_bridges()
    fleet = start_guests(settings.guests, GUEST_ADDRESSES, 24, cluster.client, bridges[0], run_dir, progress,
                         GUEST_ADDRESSES2 if settings.multipath else [], bridges[-1] if settings.multipath else "",
                         luns=len(luns))
    try:
        assign_luns(fleet, luns)
        targets = [([address for _, address, _ in topology.portals(t)], t.iqn, topology.chap_user(t))
                   for t in topology.targets]
        for guest in fleet.guests:
            guest.log_in(targets, password, settings.replacement_timeout_s, settings.time2wait)
        for guest in fleet.guests:
            guest.mount_and_write(int(settings.io_gap_s * 1000))
    except BaseException:
        fleet.stop()
        raise
    failures = [f"{g.name}: {f}" for g in fleet.guests for f in g.login_failures]
    missing = [name for g in fleet.guests for name in g.missing_luns]
    progress(f"{settings.guests} guests up and logging in to {len(targets)} targets: {time.monotonic() - began:.0f}s"
             + (f"; FAILED logins: {failures}" if failures else "")
             + (f"; no device for {missing}" if missing else ""))
    return fleet


def wait_until_started(lab: Lab, cluster: Cluster, timeout_s: float, give_up_on_failure: bool) -> bool:
    """Every resource started and the cluster settled within ``timeout_s``; with
    ``give_up_on_failure``, a recorded failure ends the wait early (no use waiting the
    bound for a start that failed)."""
    settled = wait_for(lambda: (lab.all_active() or (give_up_on_failure and bool(cluster.failures())))
                       and cluster.settled(), timeout_s, interval=1)
    return settled and lab.all_active()


def start_the_stock_stack(cluster: Cluster, lab: Lab, run: Run, settings: Settings, progress: Progress) -> bool:
    """The migrate scenario needs the stock stack running before it starts. lsb:tgt
    races (Debian's init script runs tgtadm before tgtd listens: the start fails and
    Pacemaker bans tgtd from the node); an administrator cleans it up, and so does
    the lab, up to three times. The failures are kept in the report."""
    started = run.all_started
    for attempt in range(3):
        if started and not run.start_failures:
            break
        progress(f"the stock stack did not start ({run.start_failures}): crm_resource --cleanup, try {attempt + 1}")
        run.extra.setdefault("stock_start_failures", []).extend(run.start_failures)
        cluster.any_node().run("crm_resource", "--cleanup", check=False)
        time.sleep(1)
        started = wait_until_started(lab, cluster, settings.settle_timeout_s, give_up_on_failure=True)
        run.start_failures = [failure_text(f) for f in lab.new_failures()]
    return started


class FailoverScenarios:
    """The lab's main job: each scenario's failovers under load, one after another."""

    stack_at_boot = True        # a fenced node boots into the cluster, as a real one would

    def describe(self, settings: Settings) -> str:
        if settings.migrating:
            return f"migrate: stock agents -> tgtha's under load, once (at most {failover_bound_s(settings) / 60:.0f} min)"
        planned = len(settings.scenarios) * settings.failovers
        return (f"{settings.failovers} failovers of {', '.join(settings.scenarios)} "
                f"(at most {planned * failover_bound_s(settings) / 60:.0f} min for the failovers)")

    def prepare(self, cluster: Cluster) -> None:
        pass

    def work(self, settings: Settings, cluster: Cluster, lab: Lab, run: "Run") -> None:
        for scenario in settings.scenarios:
            run.scenario(lab, scenario)


def main() -> int:
    return run_lab(Settings(), Progress(), FailoverScenarios())


def run_lab(settings: Settings, progress: Progress, job) -> int:
    """Cluster up, targets configured, initiators writing and verifying, then ``job``'s
    work (failover scenarios, or CTS), a report, and everything torn down."""
    if os.geteuid() != 0:
        raise SystemExit("lab: needs root (namespaces, iptables)")
    settings.out.mkdir(parents=True, exist_ok=True)
    # One lab per prefix at a time: a second would tear the first one's namespaces down.
    lock = open(f"/run/lock/{settings.prefix}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"lab: another lab ({settings.prefix}) is running on this machine") from None
    run_dir = settings.out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cluster = Cluster(run_dir, settings.nodes, settings.prefix, reboot_delay_s=settings.reboot_delay_s,
                      networks=2 if settings.multipath else 1, token_ms=settings.token_ms,
                      stack_at_boot=job.stack_at_boot)
    disks = SharedDisks(settings.prefix, settings.disks, settings.targets * settings.luns * LUN_SIZE)
    run = Run(settings, progress)
    run.backing_store = disks.describe()
    reportable = False
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        node_names = [n.name for n in cluster.nodes]
        targets = []
        for index in range(1, settings.targets + 1):
            paths = []
            for lun in range(1, settings.luns + 1):
                paths.append(disks.file(f"t{index}-lun{lun}.img", LUN_SIZE))
            targets.append(Target(index, node_names[(index - 1) % len(node_names)], paths))
        password = secrets.token_hex(12)
        guests = settings.initiator in ("kernel", "both")
        initiator_addresses = [CLIENT_IP] + (GUEST_ADDRESSES[:settings.guests] if guests else []) \
            + (GUEST_ADDRESSES2[:settings.guests] if guests and settings.multipath else [])
        topology = Topology("stock" if settings.migrating else settings.stack, node_names, targets, password,
                            block_method=settings.block_method, portblock=not settings.migrating,
                            own_accounts=settings.migrating,
                            layout=settings.layout, tickle_dir=str(disks.directory("tickle")),
                            initiator_addresses=initiator_addresses,
                            target_parameters=f"DefaultTime2Wait={settings.time2wait}" if settings.time2wait else "",
                            portal=settings.portal, placeholder=settings.placeholder,
                            watch_exit=settings.watch_exit, multipath=settings.multipath,
                            monitor_s=settings.monitor_s, tgtd_monitor_s=settings.tgtd_monitor_s,
                            node_action_limit=settings.node_action_limit)
        for node in cluster.nodes:
            node.static_addresses = topology.static_addresses(node.name)
        progress(f"stack={settings.stack} config={settings.config_tool} layout={settings.layout} "
                 f"portal={settings.portal}{'' if settings.placeholder else ' (no placeholder target)'}"
                 f"{'' if settings.watch_exit else ' (no tgtd exit watcher)'}"
                 f"{' multipath' if settings.multipath else ''} "
                 f"initiator={settings.initiator}: {settings.nodes} nodes, "
                 f"{settings.targets} targets x {settings.luns} LUNs; {job.describe(settings)}")
        job.prepare(cluster)
        cluster.up()
        progress(f"cluster up: {', '.join(node_names)} online, fencing by fence_tgthalab")
        configure(cluster, topology, settings.config_tool, run_dir)
        lab = Lab(cluster, topology, run.initiators, settings.settle_timeout_s, settings.inject)
        lab.outage_s = settings.outage_s
        lab.restart_gaps_s = settings.restart_gaps_s
        lab.config_tool = settings.config_tool
        lab.migrate_control = settings.migrate_control
        # The stock stack (migrate) can fail to start, and is then cleaned up.
        run.all_started = wait_until_started(lab, cluster, settings.settle_timeout_s,
                                             give_up_on_failure=settings.migrating)
        run.start_failures = [failure_text(f) for f in lab.new_failures()]
        if settings.migrating:
            run.all_started = start_the_stock_stack(cluster, lab, run, settings, progress)
        active = cluster.resources()
        run.not_started = [r for r in topology.resource_ids() if not active.get(r)]
        progress(f"configured with {settings.config_tool}: "
                 + ("every resource started" if run.all_started else "NOT every resource started")
                 + (f"; failed actions: {run.start_failures}" if run.start_failures else ""))

        secret_file = run_dir / "chap.secret"
        secret_file.write_text(password)
        secret_file.chmod(0o600)
        luns = [Lun(t.name, t.iqn, t.vip, n) for t in targets for n in t.lun_numbers()]
        run.lun_kinds = initiator_kinds(settings.initiator, luns)
        kernel_luns = [lun for lun in luns if lun.name in run.lun_kinds.get("kernel", set())]
        if kernel_luns:
            run.fleet = start_kernel_initiators(settings, cluster, topology, kernel_luns, password, run_dir,
                                                progress)
            lab.fleet = run.fleet
            run.initiators += run.fleet.luns
        run.initiators += [LunInitiator(lun, cluster.client, topology.chap_user(lun.target_name), secret_file,
                                          settings.io_gap_s, seed)
                           for seed, lun in enumerate(luns) if lun.name in run.lun_kinds.get("libiscsi", set())]
        run.load_start = time.monotonic()
        for initiator in run.initiators:
            initiator.start()
        run.prober = UnauthenticatedProber([(t.vip, t.iqn) for t in targets], cluster.client)
        run.prober.start()
        lab.prober = run.prober
        reportable = True
        wait_for(lambda: all(i.log.completions for i in run.initiators), 60)
        time.sleep(3)
        run.idle = [i.lun.name for i in run.initiators if not i.log.completions]
        progress(f"load running on {len(run.initiators)} LUNs from "
                 + " and ".join({"kernel": f"{settings.guests} guests (open-iscsi, ext4/xfs, CHAP)",
                                 "libiscsi": f"{CLIENT_IP} (qemu-io, libiscsi, CHAP)"}[kind]
                                for kind in run.lun_kinds)
                 + (f"; NO I/O on {run.idle}" if run.idle else ""))

        lab.resumed_wall = time.time()          # every initiator connected (power-off waits on it)
        run.serving = len(run.idle) < len(run.initiators)
        if not run.serving:
            progress("no initiator completed a single I/O: nothing to fail over")
        if run.serving:
            job.work(settings, cluster, lab, run)
        run.write_report(cluster, interrupted=False)
        return 0
    except KeyboardInterrupt:
        progress("interrupted: reporting what completed, then tearing down")
        if reportable:
            try:
                run.write_report(cluster, interrupted=True)
            except Exception as err:  # noqa: BLE001 - the teardown below must still happen
                progress(f"could not write the report: {err}")
        return 130
    finally:
        try:
            for initiator in run.initiators:
                initiator.stop()
            if run.prober is not None:
                run.prober.stop()
            if run.fleet is not None:
                run.fleet.stop()
            cluster.down()
        finally:
            disks.remove()
        progress("torn down: no namespace, node, rule or initiator left")


if __name__ == "__main__":
    sys.exit(main())
