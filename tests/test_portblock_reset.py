"""After a power-off: portblock method=reset and IPaddr2's tickles reset the dead node's clients at once.

A node that loses power closes nothing: its clients keep retransmitting into
the void, TCP doubling the wait each time (0.2, 0.6, 1.4, 3.0, 6.2 s ...), and
hear of the failover only when a packet of theirs reaches the new node and is
answered with a reset. With the stock drop that happens at the unblock's
tickle at the earliest; open-iscsi then still waits 2 s (DefaultTime2Wait)
before it reconnects. With method=reset the new node's block answers a
client's packets with a reset, and ocf:tgtha:IPaddr2 with tickle_dir makes the
client send one as soon as the address is up: the 2 s run while the target
is made.

Node A holds the address and has a client sending (as an initiator with I/O
in flight); A's link goes dark (the power-off); 3.5 s later, in the long gap
before the client's next retransmission, node B blocks and brings the address
up. Real agents, iptables, veths and TCP.
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import needs_root, run_agent, veth_pair
from test_portblock_silent import CLIENT, LISTENER, kill, reset_at

pytestmark = needs_root

VIP, CLIENT_SOURCE, PORT = "10.84.9.1", "10.84.8.2", "3260"

# B's service listens on every address, as tgtd does: the address arrives later.
ANY_LISTENER = LISTENER.replace("s.bind((sys.argv[1], int(sys.argv[2])))", "s.bind(('', int(sys.argv[2])))")

CONNECT = """
import socket, sys, time
began = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected", time.monotonic() - began)
except ConnectionRefusedError:
    print("refused", time.monotonic() - began)
except OSError as err:
    print("timeout", time.monotonic() - began)
"""


class PoweredOffNode:
    """A holds VIP with a connected client; B, on a link of its own, can take VIP over."""

    def __init__(self, make_netns, tmp_path):
        self.client = make_netns("cli")
        self.client.add_address(f"{CLIENT_SOURCE}/32")
        self.a, self.b = make_netns("nodea"), make_netns("nodeb")
        self.a_link, _ = veth_pair(self.a, self.client, "10.84.1.1/24", "10.84.1.2/24")
        self.b_link, _ = veth_pair(self.b, self.client, "10.84.2.1/24", "10.84.2.2/24")
        self.a.add_address(f"{VIP}/32")
        for number, node in enumerate((self.a, self.b), 1):
            node.run("ip", "route", "add", f"{CLIENT_SOURCE}/32", "via", f"10.84.{number}.2")
        self.listeners = [subprocess.Popen(self.a.exec_argv(sys.executable, "-c", LISTENER, VIP, PORT)),
                          subprocess.Popen(self.b.exec_argv(sys.executable, "-c", ANY_LISTENER, VIP, PORT))]
        self.route_to(1)
        time.sleep(0.3)
        self.tickles = tmp_path / "tickle"
        self.tickles.mkdir()
        self.talker = None

    def route_to(self, number: int) -> None:
        self.client.run("ip", "route", "replace", f"{VIP}/32", "via", f"10.84.{number}.1", "src", CLIENT_SOURCE)

    def connect_and_record(self, state) -> None:
        """The client connects to A; A's unblock (a recurring monitor) records the connection."""
        self.talker = subprocess.Popen(self.client.exec_argv(sys.executable, "-u", "-c", CLIENT, VIP, PORT),
                                       stdout=subprocess.PIPE, text=True)
        assert self.talker.stdout.readline().strip() == "connected"
        unblock = {"protocol": "tcp", "portno": PORT, "ip": VIP, "action": "unblock", "direction": "in",
                   "tickle_dir": str(self.tickles)}
        assert run_agent("portblock", "start", unblock, ns=self.a, state=state).rc == 0
        monitor = run_agent("portblock", "monitor", unblock, ns=self.a, state=state,
                            meta={"interval": "10000"})
        assert monitor.rc == 0
        assert (self.tickles / VIP).read_text().count(f"{CLIENT_SOURCE}:") == 1

    def power_off_a(self) -> None:
        """A's link goes dark: nothing of A's reaches anyone, no reset, no FIN."""
        self.a.run("ip", "link", "set", self.a_link, "down")
        self.route_to(2)

    def close(self) -> None:
        kill(self.talker, *self.listeners)


@pytest.fixture
def nodes(make_netns, tmp_path):
    n = PoweredOffNode(make_netns, tmp_path)
    yield n
    n.close()


def take_over(nodes: PoweredOffNode, state, method: str, vip_tickles: bool, firewall: str = "auto") -> float | None:
    """B blocks with ``method`` and brings VIP up 3.5 s after A went dark: seconds
    from the address's start to the client's reset (None: not within 1.5 s)."""
    state_a, state_b = state / "a", state / "b"
    state_a.mkdir()
    state_b.mkdir()
    nodes.connect_and_record(state_a)
    time.sleep(0.3)
    nodes.power_off_a()
    block = {"protocol": "tcp", "portno": PORT, "ip": VIP, "action": "block", "direction": "in", "method": method,
             "firewall": firewall}
    assert run_agent("portblock", "start", block, ns=nodes.b, state=state_b).rc == 0
    time.sleep(3.2)
    assert reset_at(nodes.talker, within=0.1) is None, "the client was reset before the address came up"
    vip = {"ip": VIP, "cidr_netmask": "32", "nic": nodes.b_link, **({"tickle_dir": str(nodes.tickles)}
                                                                      if vip_tickles else {})}
    up = time.monotonic()
    assert run_agent("IPaddr2", "start", vip, ns=nodes.b, state=state_b).rc == 0
    reset = reset_at(nodes.talker, within=1.5)
    return None if reset is None else reset - up


@pytest.mark.parametrize("firewall", ["iptables", "iptables-legacy", "nft", "python-iptables"])
def test_the_address_tickles_the_dead_nodes_clients_and_the_reset_block_resets_them(nodes, state_dir, firewall):
    after = take_over(nodes, state_dir, "reset", vip_tickles=True, firewall=firewall)
    assert after is not None and after < 0.5, f"the client learnt of the failover {after} s after the address"


def test_with_drop_the_block_swallows_the_clients_answer(nodes, state_dir):
    """Negative control: the same tickles under the stock drop reset nobody."""
    assert take_over(nodes, state_dir, "drop", vip_tickles=True) is None


def test_without_tickles_the_client_waits_for_its_next_retransmission(nodes, state_dir):
    """Negative control: method=reset alone waits for the client's own next packet."""
    assert take_over(nodes, state_dir, "reset", vip_tickles=False) is None


def test_a_reset_block_drops_connection_attempts_instead_of_refusing_them(nodes, state_dir):
    """open-iscsi waits 3 s after a refused connect, 1 s for a dropped SYN's retransmission."""
    nodes.route_to(2)
    nodes.b.add_address(f"{VIP}/32")
    block = {"protocol": "tcp", "portno": PORT, "ip": VIP, "action": "block", "direction": "in", "method": "reset"}
    assert run_agent("portblock", "start", block, ns=nodes.b, state=state_dir).rc == 0
    outcome = nodes.client.run(sys.executable, "-c", CONNECT, VIP, PORT, "0.8").stdout.split()
    assert outcome[0] == "timeout", outcome
    assert run_agent("portblock", "stop", block, ns=nodes.b, state=state_dir).rc == 0
    outcome = nodes.client.run(sys.executable, "-c", CONNECT, VIP, PORT, "0.8").stdout.split()
    assert outcome[0] == "connected", outcome


@pytest.mark.parametrize("extra", [{"direction": "both"}, {"direction": "out"}, {"protocol": "udp"}])
def test_reset_needs_tcp_inbound(nodes, state_dir, extra):
    block = {"protocol": "tcp", "portno": PORT, "ip": VIP, "action": "block", "direction": "in",
             "method": "reset", **extra}
    result = run_agent("portblock", "validate-all", block, ns=nodes.b, state=state_dir)
    assert result.rc == 6 and "method=reset" in result.stderr


@pytest.mark.parametrize("tickle_dir, rc", [("relative/dir", 6), ("/nonexistent/tickle", 5)])
def test_ipaddr2_refuses_a_bad_tickle_dir_and_changes_nothing(nodes, state_dir, tickle_dir, rc):
    vip = {"ip": VIP, "cidr_netmask": "32", "nic": nodes.b_link, "tickle_dir": tickle_dir}
    result = run_agent("IPaddr2", "start", vip, ns=nodes.b, state=state_dir)
    assert result.rc == rc and "tickle_dir" in result.stderr
    assert VIP not in nodes.b.run("ip", "-o", "addr").stdout
