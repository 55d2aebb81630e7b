"""The "migrate" scenario: a running cluster moved from the stock agents to tgtha's under load.

The lab starts it on a stock configuration that does run on Debian 12: lsb:tgt,
ocf:heartbeat:{IPaddr2,iSCSITarget,iSCSILogicalUnit} in a group per target,
one account per target (stock cannot share one), no portblock (whose rule
matching is broken there). Then it does what README's procedure tells an
administrator, with the tool the README names (tgtha-from-stock):

    maintenance-mode on -> read the CIB's configuration -> tgtha-from-stock
    -> write it back -> refresh (every resource re-probed by tgtha's agents)
    -> every resource seen running, by the new agent -> maintenance-mode off

and checks what the issue asks: no resource started or stopped (the execd
logs), no iSCSI session dropped (tgt's I_T nexus ids on every node, before and
after: a reconnect is a new nexus), the same tgtd processes, every resource now
run by ocf:tgtha:*, each target's account taken over by its iSCSITarget (the
first recurring monitors), and, as in every failover, the initiators' errors,
pauses and unauthenticated logins. It runs alone: the stock layout has no
portblock, so a failover afterwards would delete LUNs under their initiators as
it did before; that the LUNs keep their WWIDs through tgtha's own stop and start
is tests/test_from_stock.py's (VPD 0x83 read by an initiator).

Negative controls (LAB_MIGRATE_CONTROL): "no-refresh" leaves out the refresh, so
Pacemaker holds the stock agents' history for resources now configured with
other agents; "no-identity" takes out the LUN identity tgtha-from-stock wrote.
Each must show in the report as starts and stops, dropped sessions, and (with
kernel initiators, for no-identity) changed WWIDs.
"""
from __future__ import annotations

import re
import time
from dataclasses import replace

from cluster import Cluster, wait_for
from scenarios import Failover, Lab, failure_text
from timeline import read_spans

NEXUS = re.compile(r"^\s+I_T nexus: (\d+)", re.M)
TARGET = re.compile(r"^Target (\d+): (\S+)", re.M)


def shown_targets(cluster: Cluster) -> dict[str, dict[str, str]]:
    """Node -> IQN -> that target's part of its tgtd's show output (powered nodes)."""
    shown = {}
    for node in cluster.nodes:
        if node.powered:
            show = node.run("tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show", check=False).stdout
            blocks = (TARGET.match(block) for block in re.split(r"^(?=Target \d+: )", show, flags=re.M))
            shown[node.name] = {head.group(2): head.string for head in blocks if head is not None}
    return shown


def tgtd_pids(cluster: Cluster) -> dict[str, list[int]]:
    return {node.name: sorted(node.pids("tgtd")) for node in cluster.nodes if node.powered}


def sessions(shown: dict[str, dict[str, str]], pids: dict[str, list[int]]) -> dict[str, set[str]]:
    """Node -> "iqn/nexus@tgtd pids" of every iSCSI session its tgtd serves (a new tgtd
    numbers its sessions from 1 again)."""
    return {node: {f"{iqn}/{nexus}@{','.join(map(str, pids.get(node, [])))}"
                   for iqn, block in targets.items() for nexus in NEXUS.findall(block)}
            for node, targets in shown.items()}


def agents(cluster: Cluster) -> dict[str, str]:
    """Resource id -> the agent crm_mon says runs it (clone instances under their primitive id)."""
    status = cluster.crm_mon()
    return {} if status is None else {r.get("id"): r.get("resource_agent", "") for r in status.iter("resource")}


def bound_accounts(shown: dict[str, dict[str, str]], iqns: set[str]) -> dict[str, list[str]]:
    """iqn (of ``iqns``) -> its incoming accounts, on the node that runs it."""
    bound = {}
    for targets in shown.values():
        for iqn, block in targets.items():
            if iqn in iqns:
                accounts = block.split("Account information:", 1)[-1].split("ACL information:", 1)[0]
                bound[iqn] = [line.strip() for line in accounts.splitlines()
                              if line.strip() and "(outgoing)" not in line]
    return bound


def migrate(lab: Lab, number: int) -> Failover:
    """Stock -> tgtha under maintenance-mode, by the README's procedure."""
    cluster, topology = lab.cluster, lab.topology
    node = cluster.any_node()
    tool = lab.config_tool
    work = cluster.run_dir / f"migrate-{number}"
    work.mkdir(exist_ok=True)
    before_pids = tgtd_pids(cluster)
    before_sessions = sessions(shown_targets(cluster), before_pids)
    ids = topology.resource_ids()
    facts: dict = {"tool": tool, "control": lab.migrate_control or None, "steps": []}

    def step(name: str, *argv: str) -> bool:
        """One command of the procedure, kept in the report; False if it failed."""
        result = node.run(*argv, check=False, timeout=120)
        facts["steps"].append({"step": name, "rc": result.returncode,
                               "output": (result.stdout + result.stderr).strip()[-800:]})
        return result.returncode == 0

    def maintenance(value: str) -> bool:
        if tool == "pcs":
            return step(f"maintenance-mode={value}", "pcs", "property", "set", f"maintenance-mode={value}")
        return step(f"maintenance-mode={value}", "crm", "configure", "property", f"maintenance-mode={value}")

    def probed_by_tgtha() -> bool:
        running = agents(cluster)
        return all(running.get(rid, "").startswith("ocf:tgtha:") for rid in ids) and lab.all_active() \
            and cluster.settled()

    def procedure() -> None:
        """README's steps between maintenance on and off; stops at the first that fails."""
        cib = work / "cib.xml"
        read = ("pcs", "cluster", "cib", str(cib)) if tool == "pcs" else \
            ("sh", "-c", f"cibadmin --query --scope configuration > {cib}")
        if not step("read the CIB", *read):
            return
        (work / "cib-stock.xml").write_bytes(cib.read_bytes())
        if not step("tgtha-from-stock", "tgtha-from-stock", "--ipaddr2", str(cib)):
            return
        if lab.migrate_control == "no-identity":
            _forget_lun_identity(cib)
        write = ("pcs", "cluster", "cib-push", str(cib), "--config") if tool == "pcs" else \
            ("cibadmin", "--replace", "--scope", "configuration", "--xml-file", str(cib))
        if not step("write the CIB", *write):
            return
        refresh = ("pcs", "resource", "refresh") if tool == "pcs" else ("crm", "resource", "refresh")
        if lab.migrate_control != "no-refresh" and not step("refresh", *refresh):
            return
        began = time.monotonic()
        # Done when every resource runs by a tgtha agent, or a probe failed (a control):
        # maintenance-mode would keep a failed one as it is for the whole bound.
        wait_for(lambda: probed_by_tgtha() or (bool(cluster.failures()) and cluster.settled()),
                 lab.settle_timeout_s, interval=1)
        if probed_by_tgtha():
            facts["probed_s"] = round(time.monotonic() - began, 2)

    def do() -> None:
        facts["probed_s"] = None
        if maintenance("true"):
            procedure()
        # Off again whatever happened: a cluster left in maintenance manages nothing.
        maintenance("false")

    groups = [t.group for t in topology.targets]
    control = f", negative control: {lab.migrate_control}" if lab.migrate_control else ""
    record = lab.failover("migrate", number, f"stock -> tgtha under maintenance-mode ({tool}{control})", do,
                          groups)
    lab.topology = replace(topology, stack="tgtha")
    # The first recurring monitors (every monitor_s) take the accounts over; then look.
    time.sleep(topology.monitor_s + 2)
    end = time.time()
    after_shown, after_pids = shown_targets(cluster), tgtd_pids(cluster)
    after_sessions = sessions(after_shown, after_pids)
    record.failed_actions += [failure_text(f) for f in lab.new_failures()]
    spans = read_spans(cluster.pacemaker_logs(), record.started_wall, end)
    running = agents(cluster)
    accounts = bound_accounts(after_shown, {t.iqn for t in topology.targets})
    takeovers = [line for log in cluster.pacemaker_logs() for line in _lines(log)
                 if "taken as this resource's own" in line]
    taken_over = [t.iqn for t in topology.targets if any(f"target {t.iqn} " in line for line in takeovers)]
    facts.update({
        "restarts": [f"{s.resource} {s.op} on {s.node}" for s in spans
                     if s.op in ("start", "stop") and s.resource in ids],
        "sessions_before": sum(len(v) for v in before_sessions.values()),
        "sessions_dropped": sorted(s for n, v in before_sessions.items() for s in v - after_sessions.get(n, set())),
        "tgtd_restarted": [n for n, pids in before_pids.items() if after_pids.get(n) != pids],
        "not_tgtha": sorted(rid for rid in ids if not running.get(rid, "").startswith("ocf:tgtha:")),
        # The stock form (its own account alone) is kept until the target's next start.
        "accounts": {iqn: names for iqn, names in sorted(accounts.items())},
        "accounts_not_taken_over": sorted({t.iqn for t in topology.targets} - set(taken_over)),
    })
    record.migration = facts
    return record


def _lines(log) -> list[str]:
    try:
        return log.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _forget_lun_identity(cib) -> None:
    """The no-identity control: the LUNs left to tgtha's default identity."""
    import xml.etree.ElementTree as ET
    tree = ET.parse(cib)
    for primitive in tree.getroot().iter("primitive"):
        if primitive.get("type") == "iSCSILogicalUnit":
            for attributes in primitive.findall("instance_attributes"):
                for pair in attributes.findall("nvpair"):
                    if pair.get("name") in ("scsi_id", "scsi_sn"):
                        attributes.remove(pair)
    tree.write(cib, encoding="unicode")
