"""The reference HA iSCSI topology, as an administrator would configure it.

One model (clones, target groups, constraints) rendered two ways: a crmsh
configuration loaded with ``crm configure load update``, or the pcs commands
an administrator types (run against a CIB file, then pushed, which is
``pcs cluster cib`` / ``pcs cluster cib-push`` done with cibadmin).

Per target: portblock block -> IPaddr2 VIP -> iSCSITarget -> LUNs -> portblock
unblock, so initiator traffic is blocked for the whole teardown and bring-up.
Clones: tgtd, and (tgtha stack) the shared CHAP account.

Two kinds of portal address:
- "vip" (default): an IPaddr2 per target in its group, moving with it.
- "static": the address is the node's own (its network configuration, not a
  resource); the target is pinned to that node and only ever restarts there.
  While it is stopped the address answers, and tgtd with it: the window the
  tgtd agent's placeholder target exists for (tgtdaemon.py).

Two layouts of a target's resources:
- "group": one Pacemaker group, every member after the previous one (what
  stock users configure).
- "sets" (tgtha's default): the same members colocated with the block and
  ordered only where one needs the other: block -> target -> (LUNs, in
  parallel) -> unblock, and block -> VIP -> unblock. The VIP comes up while the
  target is made, the LUNs start together; the target still stops before the
  block goes, so its connections close under the block. Each step of a group is
  a Pacemaker round trip (0.1-0.2 s measured), so the depth matters: 4 steps
  instead of 6 each way with two LUNs.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from cluster import CLIENT_IP, SUBNET, SUBNET2

CHAP_USER = "labinitiators"
IQN_PREFIX = "iqn.2026-11.org.tgtha.lab"
# Pacemaker runs at most 2 x cores actions per node at once by default (4 here);
# six groups of six resources moving at once wait in that queue.
NODE_ACTION_LIMIT = 8
OPS = {"monitor": "interval=10s timeout=20s", "start": "timeout=20s", "stop": "timeout=20s"}


@dataclass
class Primitive:
    id: str
    agent: str                      # class:provider:type
    params: dict[str, str]
    ops: dict[str, str] = field(default_factory=lambda: dict(OPS))


@dataclass
class Target:
    index: int
    preferred_node: str
    lun_paths: list[Path]

    @property
    def name(self) -> str:
        return f"t{self.index}"

    @property
    def iqn(self) -> str:
        return f"{IQN_PREFIX}:{self.name}"

    @property
    def vip(self) -> str:
        return f"{SUBNET}.{100 + self.index}"

    @property
    def vip2(self) -> str:
        """Its address on the second network (LAB_MULTIPATH)."""
        return f"{SUBNET2}.{100 + self.index}"

    @property
    def group(self) -> str:
        return f"g_{self.name}"

    def lun_numbers(self) -> list[int]:
        return list(range(1, len(self.lun_paths) + 1))


@dataclass
class Topology:
    stack: str                      # "tgtha" or "stock"
    nodes: list[str]
    targets: list[Target]
    chap_password: str
    block_method: str = "silent"    # tgtha portblock: "silent", "reject", "drop" or "reset" (INPUT only)
    layout: str = "sets"            # "sets" or "group", see the module docstring
    tickle_dir: str = ""            # shared by the nodes (tgtha unblock: tickle ACKs)
    initiator_addresses: list[str] = field(default_factory=lambda: [CLIENT_IP])   # the targets' ACL
    target_parameters: str = ""     # iSCSITarget additional_parameters (e.g. DefaultTime2Wait=0)
    portal: str = "vip"             # "vip" or "static", see the module docstring
    placeholder: bool = True        # tgtha tgtd's placeholder_target (false: the negative control)
    watch_exit: bool = True         # tgtha tgtd's watch_exit (false: detection by the monitor alone)
    multipath: bool = False         # a second portal per target, on the second network
    # Every target resource's monitor interval. Each monitor is a process of ~20 ms
    # of CPU; with 24 targets x 8 resources, 10 s is ~0.5 of a core on monitors.
    monitor_s: int = 10
    tgtd_monitor_s: int = 5         # tgtd's own (1 without the exit watcher: it then detects deaths)
    node_action_limit: int = NODE_ACTION_LIMIT
    portblock: bool = True          # the block/unblock pair around each target (False: as stock users run)
    # One account per target, made by its iSCSITarget (incoming_password): the only CHAP
    # the stock agents can run with more than one target on a node. False: the shared one.
    own_accounts: bool = False

    # ------------------------------------------------------------ the model

    def clones(self) -> list[tuple[str, Primitive]]:
        # tgtd is monitored more often than the targets so that a dead tgtd is its own
        # failure before theirs (theirs would restart groups on their own); its exit
        # watcher reports a death at once, the monitor finds a hung tgtd.
        tgtd_ops = {"monitor": f"interval={self.tgtd_monitor_s}s timeout=10s", "start": "timeout=20s",
                    "stop": "timeout=20s"}
        if self.stack == "tgtha":
            # The node's /var/log/pacemaker is its own (bind-mounted per node).
            params = {"log_file": "/var/log/pacemaker/tgtd.log"}
            if not self.placeholder:
                params["placeholder_target"] = "false"
            if not self.watch_exit:
                params["watch_exit"] = "false"
            tgtd = Primitive("p_tgtd", "ocf:tgtha:tgtd", params, tgtd_ops)
        else:
            tgtd = Primitive("p_tgtd", "lsb:tgt", {}, {**tgtd_ops,
                                                       "monitor": f"interval={self.tgtd_monitor_s}s timeout=20s",
                                                       "start": "timeout=30s", "stop": "timeout=30s"})
        clones = [("cl_tgtd", tgtd)]
        if self.stack == "tgtha" and not self.own_accounts:
            clones.append(("cl_chap", Primitive("p_chap", "ocf:tgtha:tgtuser",
                                                {"username": CHAP_USER, "password": self.chap_password})))
        return clones

    def portals(self, target: Target) -> list[tuple[str, str, str]]:
        """(resource id suffix, address, nic) of each of a target's portals: one per network."""
        portals = [("", target.vip, "eth0")]
        if self.multipath:
            portals.append(("2", target.vip2, "eth1"))
        return portals

    def group_members(self, target: Target) -> list[Primitive]:
        """In order: blocks, VIPs, target, LUNs, unblocks (one block, VIP, unblock per portal)."""
        provider = "tgtha" if self.stack == "tgtha" else "heartbeat"
        block = {"protocol": "tcp", "portno": "3260"}
        if self.stack == "tgtha":
            # Our portblock: tgtd's side rejected (its connections and their Send-Q go
            # at once) and, with "silent", the initiators told nothing until the
            # unblock's tickle ACKs, so they reconnect then instead of backing off
            # after refused attempts while the group moves.
            # "drop" is the stock agent's INPUT drop: what the connections' close sends
            # (a reset) reaches the initiators at once, new connections are dropped.
            # "reset" is drop that also answers the initiators of a powered-off node
            # with a reset once the VIP (which tickles them) is up on the new node.
            block.update(method=self.block_method,
                         direction="in" if self.block_method in ("drop", "reset") else "both")
        account = {"incoming_username": self.chap_user(target)}
        if self.stack == "stock" or self.own_accounts:
            # Stock has no shared account: every target makes (and deletes) its own.
            account["incoming_password"] = self.chap_password
        portals = self.portals(target)
        target_params = {"implementation": "tgt", "iqn": target.iqn, "tid": str(target.index),
                         "portals": " ".join(f"{address}:3260" for _, address, _ in portals),
                         "allowed_initiators": " ".join(self.initiator_addresses), **account}
        if self.target_parameters:
            target_params["additional_parameters"] = self.target_parameters
        members = [Primitive(f"p_block{suffix}_{target.name}", f"ocf:{provider}:portblock",
                             {**block, "ip": address, "action": "block"}) for suffix, address, _ in portals
                   if self.portblock]
        if self.portal == "vip":
            # Ours: same parameters, through rtnetlink instead of ~43 processes per start.
            vip = {"cidr_netmask": "24"}
            if self.stack == "tgtha" and self.tickle_dir and self.block_method == "reset":
                vip["tickle_dir"] = self.tickle_dir     # only then: the block answers the tickles' replies
            members += [Primitive(f"p_vip{suffix}_{target.name}", f"ocf:{provider}:IPaddr2",
                                  {"ip": address, **vip, "nic": nic}) for suffix, address, nic in portals]
        members.append(Primitive(f"p_target_{target.name}", f"ocf:{provider}:iSCSITarget", target_params))
        for lun, path in zip(target.lun_numbers(), target.lun_paths):
            members.append(Primitive(f"p_lun_{target.name}_{lun}", f"ocf:{provider}:iSCSILogicalUnit",
                                     {"implementation": "tgt", "target_iqn": target.iqn, "lun": str(lun),
                                      "path": str(path)}))
        unblock = {**block, "action": "unblock"}
        if self.stack == "tgtha" and self.tickle_dir:
            unblock["tickle_dir"] = self.tickle_dir
        members += [Primitive(f"p_unblock{suffix}_{target.name}", f"ocf:{provider}:portblock",
                              {**unblock, "ip": address}) for suffix, address, _ in portals if self.portblock]
        for member in members:
            member.ops["monitor"] = f"interval={self.monitor_s}s timeout=20s"
        return members

    @property
    def last_clone(self) -> str:
        return self.clones()[-1][0]

    def placement(self, target: Target) -> str:
        """What to move or pin to move a target's resources: the group, or the block they follow."""
        return target.group if self.layout == "group" else f"p_block_{target.name}"

    def _set_constraints(self, target: Target) -> tuple[list[tuple[str, str]], list[list[list[str]]]]:
        """The "sets" layout: (dependent, anchor) colocations and ordered chains of parallel sets."""
        ids = [p.id for p in self.group_members(target)]
        blocks, vips, luns, unblocks = ([i for i in ids if i.startswith(kind)]
                                        for kind in ("p_block", "p_vip", "p_lun_", "p_unblock"))
        colocations = [(member, ids[0]) for member in ids[1:]]
        orders = [[blocks, [f"p_target_{target.name}"], luns, unblocks]] + ([[blocks, vips, unblocks]] if vips else [])
        return colocations, orders

    @property
    def location_score(self) -> str:
        """A static portal is the node's address: its target can run nowhere else."""
        return "INFINITY" if self.portal == "static" else "100"

    def static_addresses(self, node: str) -> list[str]:
        return [address for t in self.targets if self.portal == "static" and t.preferred_node == node
                for _, address, _ in self.portals(t)]

    def unblocks(self, target: Target) -> set[str]:
        """The starts after which initiators get in: the unblocks, or without portblock
        the group's last member."""
        members = [p.id for p in self.group_members(target)]
        return {m for m in members if m.startswith("p_unblock")} if self.portblock else {members[-1]}

    def chap_user(self, target: Target | str) -> str:
        """The CHAP account initiators use for ``target`` (a Target or its name)."""
        name = target if isinstance(target, str) else target.name
        return f"{CHAP_USER}-{name}" if self.own_accounts else CHAP_USER

    # ------------------------------------------------------------ crmsh

    def crm_configuration(self) -> str:
        lines = [f"property stonith-enabled=true node-action-limit={self.node_action_limit}",
                 "rsc_defaults resource-stickiness=200",
                 "op_defaults record-pending=false",
                 f"primitive fence_lab stonith:fence_tgthalab params pcmk_host_list=\"{' '.join(self.nodes)}\""
                 " op monitor interval=30s"]
        previous = None
        for clone_id, primitive in self.clones():
            lines.append(_crm_primitive(primitive))
            lines.append(f"clone {clone_id} {primitive.id} meta interleave=true")
            if previous:
                lines.append(f"order o_{previous}_{clone_id} Mandatory: {previous} {clone_id}")
                lines.append(f"colocation c_{clone_id}_{previous} inf: {clone_id} {previous}")
            previous = clone_id
        for target in self.targets:
            members = self.group_members(target)
            lines += [_crm_primitive(p) for p in members]
            anchor = self.placement(target)
            if self.layout == "group":
                lines.append(f"group {target.group} " + " ".join(p.id for p in members))
                needs_clones = target.group
            else:
                colocations, orders = self._set_constraints(target)
                lines += [f"colocation c_{member} inf: {member} {primary}" for member, primary in colocations]
                for number, chain in enumerate(orders, 1):
                    sets = " ".join(s[0] if len(s) == 1 else "( " + " ".join(s) + " )" for s in chain)
                    lines.append(f"order o_{target.name}_{number} Mandatory: {sets}")
                needs_clones = f"p_target_{target.name}"   # block and VIP do not need tgtd
            lines.append(f"location l_{target.name} {anchor} {self.location_score}: {target.preferred_node}")
            lines.append(f"order o_{target.name} Mandatory: {self.last_clone} {needs_clones}")
            lines.append(f"colocation c_{target.name} inf: {anchor} {self.last_clone}")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------ pcs

    def pcs_commands(self) -> list[list[str]]:
        """pcs argument lists (without ``pcs -f FILE``), in order."""
        commands = [["property", "set", "stonith-enabled=true", f"node-action-limit={self.node_action_limit}"],
                    ["resource", "defaults", "update", "resource-stickiness=200"],
                    ["resource", "op", "defaults", "update", "record-pending=false"],
                    ["stonith", "create", "fence_lab", "fence_tgthalab",
                     f"pcmk_host_list={' '.join(self.nodes)}", "op", "monitor", "interval=30s", "--force"]]
        previous = None
        for clone_id, primitive in self.clones():
            commands.append(_pcs_create(primitive) + ["clone", clone_id, "interleave=true"])
            if previous:
                commands.append(["constraint", "order", "start", previous, "then", "start", clone_id])
                commands.append(["constraint", "colocation", "add", clone_id, "with", previous, "INFINITY"])
            previous = clone_id
        for target in self.targets:
            anchor = self.placement(target)
            if self.layout == "group":
                for primitive in self.group_members(target):
                    commands.append(_pcs_create(primitive) + ["--group", target.group])
                needs_clones = target.group
            else:
                commands += [_pcs_create(primitive) for primitive in self.group_members(target)]
                colocations, orders = self._set_constraints(target)
                commands += [["constraint", "colocation", "add", member, "with", primary, "INFINITY"]
                             for member, primary in colocations]
                for chain in orders:
                    argv = ["constraint", "order"]
                    for members in chain:
                        argv += ["set", *members] + (["sequential=false"] if len(members) > 1 else [])
                    commands.append(argv)
                needs_clones = f"p_target_{target.name}"
            commands.append(["constraint", "location", anchor, "prefers",
                             f"{target.preferred_node}={self.location_score}"])
            commands.append(["constraint", "order", "start", self.last_clone, "then", "start", needs_clones])
            commands.append(["constraint", "colocation", "add", anchor, "with", self.last_clone, "INFINITY"])
        return commands

    # ------------------------------------------------------------ what the lab checks

    def resource_ids(self) -> list[str]:
        ids = [p.id for _, p in self.clones()]
        for target in self.targets:
            ids += [p.id for p in self.group_members(target)]
        return ids


def _crm_primitive(p: Primitive) -> str:
    params = " ".join(f"{k}={shlex.quote(v)}" for k, v in p.params.items())
    ops = " ".join(f"op {name} {spec}" for name, spec in p.ops.items())
    return f"primitive {p.id} {p.agent} " + (f"params {params} " if params else "") + ops


def _pcs_create(p: Primitive) -> list[str]:
    argv = ["resource", "create", p.id, p.agent, *(f"{k}={v}" for k, v in p.params.items()), "op"]
    for name, spec in p.ops.items():
        argv += [name, *spec.split()]
    return argv
