"""ocf:tgtha:IPaddr2: a service address on a real interface, seen from a real neighbour.

Two namespaces joined by a veth: the "node" that holds the address and a
"neighbour" that must reach it and hear it announced.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from conftest import AGENTS, needs_root, ocf_tester, run_agent, veth_pair

pytestmark = needs_root

NODE_IP, PEER_IP, VIP = "10.83.0.1", "10.83.0.2", "10.83.0.50"
NODE_IP6, PEER_IP6, VIP6 = "fd00:83::1", "fd00:83::2", "fd00:83::50"


class Link:
    def __init__(self, make_netns):
        self.node, self.peer = make_netns("vipn"), make_netns("vipp")
        self.nic, self.peer_nic = veth_pair(self.node, self.peer, f"{NODE_IP}/24", f"{PEER_IP}/24")
        for ns, dev, addr in ((self.node, self.nic, NODE_IP6), (self.peer, self.peer_nic, PEER_IP6)):
            ns.run("ip", "-6", "addr", "add", f"{addr}/64", "dev", dev, "nodad")

    def addresses(self, family: int = 4) -> list[str]:
        out = self.node.run("ip", f"-{family}", "-o", "addr", "show", "dev", self.nic).stdout
        return [line.split()[3] for line in out.splitlines()]

    def peer_reaches(self, address: str) -> bool:
        return self.peer.run("ping", "-c", "1", "-W", "1", address, check=False).returncode == 0


@pytest.fixture
def link(make_netns):
    return Link(make_netns)


def vip(link: Link, **extra: str) -> dict[str, str]:
    return {"ip": VIP, "cidr_netmask": "24", "nic": link.nic, **extra}


def test_start_monitor_stop_are_idempotent_and_the_neighbour_reaches_the_address(link, state_dir):
    p = vip(link)
    assert run_agent("IPaddr2", "monitor", p, ns=link.node, state=state_dir).rc == 7    # probe
    assert run_agent("IPaddr2", "stop", p, ns=link.node, state=state_dir).rc == 0       # stop of stopped
    for _ in range(2):
        assert run_agent("IPaddr2", "start", p, ns=link.node, state=state_dir).rc == 0
    assert link.addresses().count(f"{VIP}/24") == 1
    assert run_agent("IPaddr2", "monitor", p, ns=link.node, state=state_dir).rc == 0
    assert link.peer_reaches(VIP)
    for _ in range(2):
        assert run_agent("IPaddr2", "stop", p, ns=link.node, state=state_dir).rc == 0
    assert f"{VIP}/24" not in link.addresses()
    assert run_agent("IPaddr2", "monitor", p, ns=link.node, state=state_dir).rc == 7


ARP_LISTENER = """
import socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((sys.argv[1], 0))
s.settimeout(0.2)
wanted = socket.inet_aton(sys.argv[2])
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[3])
seen = 0
while time.monotonic() < deadline:
    try:
        frame = s.recv(2048)
    except socket.timeout:
        continue
    if frame[28:32] == wanted:          # ARP sender protocol address
        seen += 1
print(seen)
"""


def test_start_announces_the_address_with_gratuitous_arps(link, state_dir):
    listener = subprocess.Popen(link.peer.exec_argv(sys.executable, "-c", ARP_LISTENER, link.peer_nic, VIP, "3"),
                                stdout=subprocess.PIPE, text=True)
    assert listener.stdout.readline().strip() == "ready"
    assert run_agent("IPaddr2", "start", vip(link, arp_count="3", arp_interval="100"),
                     ns=link.node, state=state_dir).rc == 0
    assert int(listener.communicate(timeout=10)[0].strip()) >= 3


def test_stop_ends_an_announcement_still_running(link, state_dir):
    p = vip(link, arp_count="50", arp_interval="1000")
    assert run_agent("IPaddr2", "start", p, ns=link.node, state=state_dir).rc == 0
    pidfile = next(state_dir.rglob("IPaddr2-sender-*"))
    pid = int(pidfile.read_text().split()[0])
    assert open(f"/proc/{pid}/comm").read().strip() == "send_arp"
    assert run_agent("IPaddr2", "stop", p, ns=link.node, state=state_dir).rc == 0
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_nic_and_prefix_default_to_the_connected_network(link, state_dir):
    p = {"ip": VIP}
    assert run_agent("IPaddr2", "start", p, ns=link.node, state=state_dir).rc == 0
    assert f"{VIP}/24" in link.addresses()
    assert run_agent("IPaddr2", "stop", p, ns=link.node, state=state_dir).rc == 0
    outside = run_agent("IPaddr2", "start", {"ip": "10.84.0.9"}, ns=link.node, state=state_dir)
    assert outside.rc == 5 and "no directly connected network" in outside.exit_reason


def test_ipv6_waits_for_duplicate_address_detection(link, state_dir):
    p = {"ip": VIP6, "cidr_netmask": "64", "nic": link.nic}
    assert run_agent("IPaddr2", "start", p, ns=link.node, state=state_dir).rc == 0
    flags = link.node.run("ip", "-6", "-o", "addr", "show", "to", f"{VIP6}/128").stdout
    assert VIP6 in flags and "tentative" not in flags
    assert run_agent("IPaddr2", "monitor", p, ns=link.node, state=state_dir).rc == 0
    assert link.peer_reaches(VIP6)
    assert run_agent("IPaddr2", "stop", p, ns=link.node, state=state_dir).rc == 0
    assert VIP6 not in link.node.run("ip", "-6", "-o", "addr").stdout


def test_ipv6_address_held_by_a_neighbour_fails_start_and_is_removed(link, state_dir):
    link.peer.run("ip", "-6", "addr", "add", f"{VIP6}/64", "dev", link.peer_nic, "nodad")
    p = {"ip": VIP6, "cidr_netmask": "64", "nic": link.nic}
    result = run_agent("IPaddr2", "start", p, ns=link.node, state=state_dir)
    assert result.rc == 1 and "duplicate address" in result.exit_reason
    assert VIP6 not in link.node.run("ip", "-6", "-o", "addr").stdout


def test_an_address_on_another_interface_is_not_taken_over(link, state_dir):
    link.node.add_address(f"{VIP}/32", dev="lo")
    result = run_agent("IPaddr2", "start", vip(link), ns=link.node, state=state_dir)
    assert result.rc == 1 and "another interface" in result.exit_reason


@pytest.mark.parametrize("params, rc, reason", [
    ({"ip": "10.83.0.300"}, 6, "ip:"),
    ({"ip": "10.83.0.50/24"}, 6, "prefix goes in cidr_netmask"),
    ({"cidr_netmask": "33"}, 6, "cidr_netmask"),
    ({"cidr_netmask": "255.0.255.0"}, 6, "cidr_netmask"),
    ({"nic": "nosuchnic0"}, 5, "does not exist on this node"),
    ({"nic": "eth0 up"}, 6, "not an interface name"),
    ({"arp_count": "-1"}, 6, "arp_count"),
    ({"lvs_support": "true"}, 6, "lvs_support"),
])
def test_bad_input_is_refused_with_a_reason_and_changes_nothing(link, state_dir, params, rc, reason):
    before = link.addresses()
    for action in ("validate-all", "start"):
        result = run_agent("IPaddr2", action, {**vip(link), **params}, ns=link.node, state=state_dir)
        assert result.rc == rc and reason in result.exit_reason, result
    assert link.addresses() == before
    assert run_agent("IPaddr2", "stop", {**vip(link), **params}, ns=link.node, state=state_dir).rc == 0


def test_dotted_netmask_is_accepted(link, state_dir):
    p = vip(link, cidr_netmask="255.255.255.0")
    assert run_agent("IPaddr2", "start", p, ns=link.node, state=state_dir).rc == 0
    assert f"{VIP}/24" in link.addresses()


@pytest.mark.skipif(shutil.which("ocf-tester") is None, reason="no ocf-tester")
def test_ocf_tester_passes_and_leaves_no_address(link, state_dir):
    result = ocf_tester(link.node, state_dir, "IPaddr2", vip(link))
    assert result.returncode == 0 and "passed all tests" in result.stdout, result.stdout + result.stderr
    assert f"{VIP}/24" not in link.addresses()


def test_monitor_runs_no_process(link, state_dir, tmp_path):
    """The point of this agent: a monitor is the interpreter and one netlink request."""
    p = vip(link)
    assert run_agent("IPaddr2", "start", p, ns=link.node, state=state_dir).rc == 0
    trace = tmp_path / "trace"
    argv = link.node.exec_argv("strace", "-f", "-e", "trace=execve", "-o", str(trace),
                               str(AGENTS / "IPaddr2"), "monitor")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HA_RSCTMP": str(state_dir), "OCF_ROOT": "/usr/lib/ocf",
           "OCF_RESOURCE_INSTANCE": "vip", **{f"OCF_RESKEY_{k}": v for k, v in p.items()},
           "OCF_RESKEY_CRM_meta_interval": "10000"}
    if shutil.which("strace") is None:
        pytest.skip("no strace")
    assert subprocess.run(argv, env=env).returncode == 0
    execs = [line for line in trace.read_text().splitlines() if "execve(" in line and "ENOENT" not in line]
    # the agent itself: its sh front, then the Python it hands over to
    assert len(execs) == 2 and '"/usr/bin/python3", "-IS"' in execs[1], execs



def test_a_tickle_dir_that_never_answers_costs_the_start_a_second_or_two_and_the_address_comes_up(
        link, state_dir, unanswered_filesystem):
    p = vip(link, tickle_dir=str(unanswered_filesystem))
    began = time.monotonic()
    start = run_agent("IPaddr2", "start", p, ns=link.node, state=state_dir, timeout=15)
    took = time.monotonic() - began
    assert start.rc == 0 and took < 4, (took, start)
    assert "does not answer" in start.stderr and "no tickles" in start.stderr
    assert link.peer_reaches(VIP)
    assert run_agent("IPaddr2", "stop", p, ns=link.node, state=state_dir).rc == 0
