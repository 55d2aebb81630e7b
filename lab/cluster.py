"""A real Corosync 3 + Pacemaker 2 cluster on this one machine, built from namespaces.

Each node is a network namespace (a veth into a bridge that lives in the lab's
own switch namespace, never in the host's) plus, per boot, fresh mount, uts,
ipc and pid namespaces whose PID 1 is tini: killing it is a hard power-off of
the whole node. Fencing is real: the lab's fence agent, inside a node, asks the
power switch (a thread here, outside every node) to power another node off/on.
The initiators live in a client namespace on the same bridge.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

LAB_DIR = Path(__file__).resolve().parent
SUBNET = "10.77.0"          # exists only inside the lab's namespaces
SUBNET2 = "10.78.0"         # the second network (LAB_MULTIPATH): bridge br1, the nodes' eth1
CLIENT_IP = f"{SUBNET}.200"


def run(argv: list[str], check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout, **kw)


def wait_for(condition, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


class Node:
    """One cluster node: a persistent network namespace and, while powered on, a PID 1."""

    def __init__(self, cluster: "Cluster", index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"node{index}"
        self.netns = f"{cluster.prefix}-n{index}"
        self.ip = f"{SUBNET}.{10 + index}"
        self.ip2 = f"{SUBNET2}.{10 + index}"
        self.static_addresses: list[str] = []    # more of its own (static portals), set before up()
        self.switch_port = f"v{index}"
        self.dir = cluster.run_dir / self.name
        self.pid1: int | None = None
        self._boot: subprocess.Popen | None = None

    # ------------------------------------------------------------ power

    @property
    def powered(self) -> bool:
        return self.pid1 is not None and _same_netns(self.pid1, self.netns)

    def power_on(self) -> None:
        if self.powered:
            return
        booted = self.dir / "booted"
        booted.unlink(missing_ok=True)
        log = open(self.dir / "init.log", "a")
        self._boot = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--uts", "--ipc", "--pid",
             "--fork", "--mount-proc", "--propagation", "private",
             str(LAB_DIR / "nodeinit.sh"), self.name, str(self.dir), str(self.cluster.sbin_dir),
             str(self.cluster.libexec_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        if not wait_for(booted.exists, 20):
            raise RuntimeError(f"{self.name} did not boot: {(self.dir / 'init.log').read_text()[-2000:]}")
        children = Path(f"/proc/{self._boot.pid}/task/{self._boot.pid}/children").read_text().split()
        self.pid1 = int(children[0])
        (self.dir / "pid1").write_text(f"{self.pid1}\n")     # for the CTS exerciser's ssh
        self.cluster.set_power(self.name, "on")

    def power_off(self) -> None:
        """Hard power-off: SIGKILL to PID 1 takes every process of the node with it.
        The node's links go dark first: a machine losing power sends nothing,
        while processes killed under a live network close their connections
        (tgtd's resets told every initiator of the failure at once, which a
        real power-off never does)."""
        was_on = self.powered
        if was_on:
            if not self.cluster.tearing_down:
                self.unplug()
            os.kill(self.pid1, signal.SIGKILL)
        if self._boot is not None:
            try:
                self._boot.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self._boot = None
        wait_for(lambda: not run(["ip", "netns", "pids", self.netns], check=False).stdout.strip(), 10)
        self.pid1 = None
        self.cluster.set_power(self.name, "off")
        if was_on and not self.cluster.tearing_down:
            self.reset_network()

    def reset_network(self) -> None:
        """What a real power-off loses: addresses (the VIPs the node held) and
        firewall rules. Without this the rebooted node's probes find the VIPs
        still up there, Pacemaker sees them active on two nodes and restarts
        every group a second time."""
        run(["ip", "netns", "del", self.netns], check=False)
        run(["ip", "-n", self.cluster.switch, "link", "del", self.switch_port], check=False)
        run(["ip", "-n", self.cluster.switch, "link", "del", self.switch_port + "b"], check=False)
        self.plug()

    def unplug(self) -> None:
        """The switch's side of the node's links down: nothing in or out."""
        for port in (self.switch_port, self.switch_port + "b"):
            run(["ip", "-n", self.cluster.switch, "link", "set", port, "down"], check=False)

    def plug(self) -> None:
        """Into the switch: eth0 on the first network, eth1 on the second if there is one."""
        first = [a for a in self.static_addresses if not a.startswith(SUBNET2 + ".")]
        self.cluster.plug(self.netns, self.switch_port, self.ip, first)
        if self.cluster.networks == 2:
            second = [a for a in self.static_addresses if a.startswith(SUBNET2 + ".")]
            self.cluster.wire(self.netns, self.switch_port + "b", "br1", "eth1", [self.ip2, *second])

    def boot_cluster_stack(self) -> None:
        """Power on, then corosync and pacemaker, as a node's boot would."""
        self.power_on()
        self.start_corosync()
        self.start_pacemaker()

    # The lab's `service` (in the node's /usr/sbin) starts the stack as systemd would,
    # for the lab and for CTS alike.
    def start_corosync(self) -> None:
        if self.run("service", "corosync", "start", check=False).returncode != 0:
            raise RuntimeError(f"corosync did not start on {self.name}")

    def start_pacemaker(self) -> None:
        self.run("service", "pacemaker", "start")

    # ------------------------------------------------------------ inside the node

    def argv(self, *argv: str) -> list[str]:
        if not self.powered:
            raise RuntimeError(f"{self.name} is powered off")
        return ["nsenter", "-t", str(self.pid1), "-m", "-u", "-i", "-n", "-p", "--wd=/", "--", *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        return run(self.argv(*argv), check=check, timeout=timeout, **kw)

    def pids(self, comm: str) -> list[int]:
        """Host pids of the node's processes named ``comm``."""
        if not self.powered:
            return []
        pid_ns = os.readlink(f"/proc/{self.pid1}/ns/pid")
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if (os.readlink(f"/proc/{entry}/ns/pid") == pid_ns
                        and Path(f"/proc/{entry}/comm").read_text().strip() == comm):
                    found.append(int(entry))
            except OSError:
                continue
        return found


def _same_netns(pid: int, netns: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        return False


class Cluster:
    """Build, operate and tear down the namespace cluster."""

    def __init__(self, run_dir: Path, nodes: int = 2, prefix: str = "tgthalab",
                 token_ms: int = 1000, reboot_delay_s: float = 15.0, networks: int = 1,
                 stack_at_boot: bool = True) -> None:
        self.run_dir = run_dir
        self.networks = networks        # 2: a second network (bridge br1) for a second portal per target
        self.prefix = prefix
        self.switch = f"{prefix}-sw"
        self.client = f"{prefix}-c"
        self.token_ms = token_ms
        self.reboot_delay_s = reboot_delay_s
        # False for CTS (its --at-boot 0): a fenced node comes back without the stack,
        # which CTS starts itself when a test wants the node.
        self.stack_at_boot = stack_at_boot
        self.sbin_dir = run_dir / "sbin"
        self.libexec_dir = run_dir / "libexec"     # overlaid onto the nodes' /usr/lib/pacemaker
        # One log per node for everything: CTS watches one file per node and needs
        # corosync's lines in it too.
        self.corosync_log = "/var/log/corosync/corosync.log" if stack_at_boot else "/var/log/pacemaker/pacemaker.log"
        self.fence_dir = run_dir / "fence"
        self.nodes = [Node(self, i) for i in range(1, nodes + 1)]
        self.fence_log: list[str] = []
        self._switch_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._booting: set[str] = set()
        self.tearing_down = False
        self._status_cache: dict[str, tuple[float, ET.Element | None]] = {}
        self._status_ttl_s = self.STATUS_TTL_S

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    # ------------------------------------------------------------ build

    def up(self) -> None:
        self.down_leftovers()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._network()
        self._configuration()
        self._start_power_switch()
        for node in self.nodes:
            node.power_on()
            node.start_corosync()
        if not wait_for(self._quorate, 60):
            raise RuntimeError("corosync membership did not form")
        for node in self.nodes:
            node.start_pacemaker()
        if not wait_for(lambda: self.online_nodes() == {n.name for n in self.nodes} and self.has_dc(), 120):
            raise RuntimeError("pacemaker did not bring every node online")

    def _network(self) -> None:
        run(["ip", "netns", "add", self.switch])
        run(["ip", "-n", self.switch, "link", "set", "lo", "up"])
        run(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.switch, "link", "set", "br0", "up"])
        if self.networks == 2:
            run(["ip", "-n", self.switch, "link", "add", "br1", "type", "bridge"])
            run(["ip", "-n", self.switch, "link", "set", "br1", "up"])
        for node in self.nodes:
            node.plug()
        self.plug(self.client, "vc", CLIENT_IP)

    def plug(self, netns: str, port: str, ip: str, more: list[str] = ()) -> None:
        """A host on the switch: a fresh network namespace, its eth0 in switch port ``port``
        with address ``ip`` and ``more``."""
        run(["ip", "netns", "add", netns])
        run(["ip", "-n", netns, "link", "set", "lo", "up"])
        self.wire(netns, port, "br0", "eth0", [ip, *more])

    def client_bridges(self) -> list[str]:
        """Bridges in the client namespace for the guests' taps, so that the guests live in
        the client namespace beside the libiscsi initiators: br0 takes eth0 and the
        client's address, br1 (second network) a new eth1. Returns their names."""
        ns = self.client
        bridges = ["br0"] + (["br1"] if self.networks == 2 else [])
        if self.networks == 2:
            self.wire(ns, "vcb", "br1", "eth1", [])
        for bridge, nic in zip(bridges, ("eth0", "eth1")):
            run(["ip", "-n", ns, "link", "add", bridge, "type", "bridge"])
            run(["ip", "-n", ns, "link", "set", nic, "master", bridge])
            run(["ip", "-n", ns, "link", "set", bridge, "up"])
        run(["ip", "-n", ns, "addr", "del", f"{CLIENT_IP}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "addr", "add", f"{CLIENT_IP}/24", "dev", "br0"])
        return bridges

    def wire(self, netns: str, port: str, bridge: str, nic: str, addresses: list[str]) -> None:
        """A veth from switch port ``port`` on ``bridge`` to ``nic`` in ``netns``, with /24 addresses."""
        run(["ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", nic, "netns", netns])
        run(["ip", "-n", self.switch, "link", "set", port, "master", bridge, "up"])
        for address in addresses:
            run(["ip", "-n", netns, "addr", "add", f"{address}/24", "dev", nic])
        run(["ip", "-n", netns, "link", "set", nic, "up"])

    def _configuration(self) -> None:
        nodelist = "".join(
            f"    node {{\n        name: {n.name}\n        nodeid: {n.index}\n        ring0_addr: {n.ip}\n    }}\n"
            for n in self.nodes)
        corosync_conf = (
            "totem {\n    version: 2\n    cluster_name: tgthalab\n    transport: knet\n"
            "    crypto_cipher: none\n    crypto_hash: none\n"
            f"    token: {self.token_ms}\n}}\n"
            f"logging {{\n    to_logfile: yes\n    logfile: {self.corosync_log}\n"
            "    to_syslog: no\n    to_stderr: no\n    timestamp: on\n}\n"
            "quorum {\n    provider: corosync_votequorum\n"
            + ("    two_node: 1\n" if len(self.nodes) == 2 else "") + "}\n"
            "nodelist {\n" + nodelist + "}\n")
        # A CIB seeded offline: fast DC election; the host's load is shared by every node.
        cib = self.run_dir / "cib.xml"
        cib.write_text(run(["cibadmin", "--empty"]).stdout)
        for name, value in (("stonith-enabled", "false"), ("dc-deadtime", "2s"),
                            ("cluster-recheck-interval", "1min"), ("load-threshold", "1000%")):
            run(["crm_attribute", "-t", "crm_config", "-n", name, "-v", value],
                env={**os.environ, "CIB_file": str(cib)})
        hosts = "127.0.0.1 localhost\n::1 localhost\n" + "".join(f"{n.ip} {n.name}\n" for n in self.nodes)
        for node in self.nodes:
            d = node.dir
            shutil.rmtree(d, ignore_errors=True)
            for sub in ("etc_corosync/uidgid.d", "var_lib_corosync", "var_log_corosync",
                        "var_lib_pacemaker/cib", "var_lib_pacemaker/pengine", "var_lib_pacemaker/blackbox",
                        "var_lib_pacemaker/cores", "var_log_pacemaker/bundles",
                        "var_lib_heartbeat/lrm", "var_lib_heartbeat/cores"):
                (d / sub).mkdir(parents=True, exist_ok=True)
            (d / "etc_corosync/corosync.conf").write_text(corosync_conf)
            (d / "hosts").write_text(hosts)
            shutil.copy(cib, d / "var_lib_pacemaker/cib/cib.xml")
            for sub in ("var_lib_pacemaker", "var_log_pacemaker"):
                run(["chown", "-R", "hacluster:haclient", str(d / sub)])
            (d / "var_lib_pacemaker/cib/cib.xml").chmod(0o600)
        self.sbin_dir.mkdir(exist_ok=True)
        self.libexec_dir.mkdir(exist_ok=True)
        self.fence_dir.mkdir(exist_ok=True)
        shutil.copy(LAB_DIR / "service", self.sbin_dir / "service")
        (self.sbin_dir / "service").chmod(0o755)
        (self.fence_dir / "nodes").write_text("".join(n.name + "\n" for n in self.nodes))
        agent = (LAB_DIR / "fence_tgthalab").read_text().replace("@FENCE_DIR@", str(self.fence_dir))
        (self.sbin_dir / "fence_tgthalab").write_text(agent)
        (self.sbin_dir / "fence_tgthalab").chmod(0o755)

    def set_power(self, node: str, state: str) -> None:
        try:
            (self.fence_dir / f"power.{node}").write_text(state + "\n")
        except OSError:
            pass  # tearing down after the run directory went: nothing asks any more

    # ------------------------------------------------------------ the power switch

    def _start_power_switch(self) -> None:
        self._switch_thread = threading.Thread(target=self._serve_fence_requests, name="power-switch",
                                               daemon=True)
        self._switch_thread.start()

    def _serve_fence_requests(self) -> None:
        while not self._stopping.is_set():
            for request in sorted(self.fence_dir.glob("*.req")):
                action, target, requester = request.read_text().split()
                request.unlink()
                answer, boot = "ok", False
                names = {n.name for n in self.nodes}
                if target not in names:
                    answer = f"fail: unknown node {target}"
                elif requester != target and requester in names and not self.node(requester).powered:
                    answer = f"fail: requester {requester} is powered off"
                elif action in ("off", "reboot"):
                    self.node(target).power_off()
                    boot = action == "reboot"
                    if boot:
                        self.set_power(target, "rebooting")   # CTS's ssh waits for the node, as for a real reboot
                elif action == "on":
                    boot = not self.node(target).powered
                self.fence_log.append(f"{time.time():.2f} {action} {target} by {requester}: {answer}")
                request.with_suffix(".done").write_text(answer + "\n")
                if boot:
                    threading.Thread(target=self._reboot, args=(target,), daemon=True).start()
            self._stopping.wait(0.1)

    def _reboot(self, name: str) -> None:
        self._booting.add(name)
        try:
            # A real server takes a minute or more to come back. Back within a
            # second or two, the node rejoined while the survivor was still
            # starting its groups: Pacemaker then probed it first and the last
            # groups waited for that (6 s of a 10 s power-off, measured).
            self._stopping.wait(self.reboot_delay_s)
            if not self._stopping.is_set():
                if self.stack_at_boot:
                    self.node(name).boot_cluster_stack()
                else:
                    self.node(name).power_on()
        except Exception as err:  # noqa: BLE001 - reported, the lab goes on
            self.fence_log.append(f"{time.time():.2f} boot of {name} failed: {err}")
        finally:
            self._booting.discard(name)

    def booting(self) -> bool:
        return bool(self._booting)

    # ------------------------------------------------------------ cluster state

    def any_node(self) -> Node:
        for node in self.nodes:
            if node.powered and node.pids("pacemakerd"):
                return node
        raise RuntimeError("no node is up")

    def crm_mon_text(self, node: Node | None = None) -> str:
        """crm_mon's XML as text ("" when no node answers)."""
        try:
            node = node or self.any_node()
            return node.run("crm_mon", "-1", "--output-as=xml", check=False, timeout=30).stdout
        except (RuntimeError, subprocess.TimeoutExpired):
            return ""

    # The lab polls while a failover runs; each crm_mon costs ~40 ms of CPU and a
    # CIB query that pacemaker-based serves between the very updates being
    # measured. One poll asks several questions: they share one status. A big
    # CIB makes each poll dearer (24 targets: ~0.2 s): a status is reused for 4x
    # what the last one took, so polling takes at most a fifth of the lab's time.
    STATUS_TTL_S = 0.25
    STATUS_TTL_PER_POLL_S = 4

    def crm_mon(self, node: Node | None = None) -> ET.Element | None:
        if node is None:
            try:
                node = self.any_node()
            except RuntimeError:
                return None
        key = node.name
        cached = self._status_cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < self._status_ttl_s:
            return cached[1]
        began = time.monotonic()
        out = self.crm_mon_text(node)
        try:
            status = ET.fromstring(out) if out.strip() else None
        except ET.ParseError:
            status = None
        now = time.monotonic()
        self._status_ttl_s = max(self.STATUS_TTL_S, self.STATUS_TTL_PER_POLL_S * (now - began))
        self._status_cache[key] = (now, status)
        return status

    def pacemaker_logs(self) -> list[Path]:
        """Each node's Pacemaker log, as the host sees it (kept across the node's reboots)."""
        return [node.dir / "var_log_pacemaker" / "pacemaker.log" for node in self.nodes]

    def online_nodes(self, node: Node | None = None) -> set[str]:
        status = self.crm_mon(node)
        if status is None:
            return set()
        return {n.get("name") for n in status.iter("node") if n.get("online") == "true"
                and n.get("type") != "remote" and n.get("standby") != "true" and n.get("pending") != "true"}

    def has_dc(self) -> bool:
        status = self.crm_mon(self.nodes[0])
        return status is not None and any(dc.get("present") == "true" for dc in status.iter("current_dc"))

    def _quorate(self) -> bool:
        out = self.nodes[0].run("corosync-quorumtool", "-s", check=False).stdout
        quorate = any(line.startswith("Quorate:") and line.split()[-1] == "Yes" for line in out.splitlines())
        votes = [line.split()[-1] for line in out.splitlines() if line.startswith("Total votes:")]
        return quorate and votes == [str(len(self.nodes))]

    def resources(self, node: Node | None = None) -> dict[str, list[str]]:
        """Resource id -> nodes it is active on (clone instances under their primitive id)."""
        status = self.crm_mon(node)
        found: dict[str, list[str]] = {}
        if status is None:
            return found
        for resource in status.iter("resource"):
            where = [n.get("name") for n in resource.iter("node")]
            if resource.get("active") == "true" and resource.get("failed") != "true":
                found.setdefault(resource.get("id"), []).extend(where)
        return found

    def failures(self, node: Node | None = None) -> list[dict[str, str]]:
        status = self.crm_mon(node)
        return [] if status is None else [dict(f.attrib) for f in status.iter("failure")]

    def settled(self) -> bool:
        """No transition pending (crm_resource --wait's notion) and the DC's controller
        idle, asked of any live node: crm_resource --wait sees the scheduler's plan
        carried out, not the controller's graph complete, and a failover begun while
        a transition is still in flight would carry its tail in its figures."""
        try:
            node = self.any_node()
            if node.run("crm_resource", "--wait", "--timeout=1s", check=False, timeout=20).returncode != 0:
                return False
            # crmadmin 2.1.5 writes its --quiet answers to stderr
            lookup = node.run("crmadmin", "--dc_lookup", "--quiet", check=False, timeout=10)
            dc = (lookup.stdout + lookup.stderr).strip()
            if lookup.returncode != 0 or not dc or len(dc.split()) != 1:
                return False
            state = node.run("crmadmin", "--status", dc, "--quiet", check=False, timeout=10)
            return state.returncode == 0 and (state.stdout + state.stderr).strip() == "S_IDLE"
        except (RuntimeError, subprocess.TimeoutExpired):
            return False

    # ------------------------------------------------------------ teardown

    def down(self) -> None:
        """Everything the lab made goes: nodes (and all their processes), namespaces."""
        self.tearing_down = True
        self._stopping.set()
        if self._switch_thread is not None:
            self._switch_thread.join(timeout=5)
        for node in self.nodes:
            node.power_off()
        self.down_leftovers()

    def down_leftovers(self) -> None:
        """Namespaces of this prefix left by an earlier run that was killed."""
        listed = run(["ip", "netns", "list"], check=False).stdout.split("\n")
        mine = [line.split()[0] for line in listed
                if line.split() and line.split()[0].startswith(self.prefix + "-")]
        for netns in mine:
            for pid in run(["ip", "netns", "pids", netns], check=False).stdout.split():
                if _is_node_init(int(pid)):
                    os.kill(int(pid), signal.SIGKILL)
        for netns in mine:
            wait_for(lambda: not run(["ip", "netns", "pids", netns], check=False).stdout.strip(), 10)
            for pid in run(["ip", "netns", "pids", netns], check=False).stdout.split():
                os.kill(int(pid), signal.SIGKILL)   # processes the lab started in it (initiators)
            run(["ip", "netns", "del", netns], check=False)


def _is_node_init(pid: int) -> bool:
    """PID 1 of a lab node: tini, pid 1 in its innermost pid namespace."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
    return len(nspid) > 1 and nspid[-1] == "1" and "tini" in Path(f"/proc/{pid}/comm").read_text()
