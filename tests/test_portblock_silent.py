"""portblock method=silent: a client hears nothing of the block, and learns of the unblock at once.

A server in one namespace, a client in another that keeps sending (as an
initiator with I/O in flight does) and records when its connection is reset.
With method=reject the client is reset the moment the block closes the
server's side, and every reconnect attempt while the resource moves is refused
(libiscsi then waits 1, 2, 3 s... between attempts). With method=silent the
server's side closes just as fast, the client hears nothing until the unblock,
and the unblock's tickle ACKs (tickle_dir) reset it there and then.
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import needs_root, run_agent, veth_pair

pytestmark = needs_root

SERVER_IP, CLIENT_IP, PORT = "10.81.0.1", "10.81.0.2", "3260"

LISTENER = """
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
def drain(c):
    try:
        while c.recv(65536):
            pass
    except OSError:
        pass
while True:
    threading.Thread(target=drain, args=(s.accept()[0],), daemon=True).start()
"""

# Sends 1 KiB every 20 ms; prints "reset <monotonic>" when the connection fails.
CLIENT = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.setblocking(False)
print("connected", flush=True)
while True:
    try:
        c.send(b"x" * 1024)
        c.recv(1)
    except BlockingIOError:
        pass
    except OSError as err:
        print("reset", time.monotonic(), err, flush=True)
        break
    time.sleep(0.02)
"""


class Pair:
    def __init__(self, make_netns):
        self.server, self.client = make_netns("srv"), make_netns("cli")
        veth_pair(self.server, self.client, f"{SERVER_IP}/24", f"{CLIENT_IP}/24")
        self.listener = subprocess.Popen(self.server.exec_argv(sys.executable, "-c", LISTENER, SERVER_IP, PORT))
        time.sleep(0.3)
        self.talker = None

    def connect(self) -> None:
        self.talker = subprocess.Popen(self.client.exec_argv(sys.executable, "-u", "-c", CLIENT, SERVER_IP, PORT),
                                       stdout=subprocess.PIPE, text=True)
        assert self.talker.stdout.readline().strip() == "connected"
        time.sleep(0.3)

    def server_connections(self) -> int:
        out = self.server.run("ss", "-Htn", "state", "established", f"( sport = :{PORT} )").stdout
        return sum(1 for line in out.splitlines() if line.strip())

    def client_reset_at(self, within: float) -> float | None:
        return reset_at(self.talker, within)

    def close(self) -> None:
        kill(self.talker, self.listener)


def reset_at(talker: subprocess.Popen, within: float) -> float | None:
    """When (monotonic) the client script saw its connection fail, waiting up to ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if talker.poll() is not None:
            line = talker.stdout.readline().split()
            return float(line[1]) if line and line[0] == "reset" else None
        time.sleep(0.02)
    return None


def kill(*procs: subprocess.Popen | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def pair(make_netns):
    p = Pair(make_netns)
    yield p
    p.close()


def unblock_params(method: str, **extra: str) -> dict[str, str]:
    return {"protocol": "tcp", "portno": PORT, "ip": SERVER_IP, "action": "unblock",
            "direction": "both", "method": method, **extra}


def test_silent_block_closes_the_server_side_and_the_client_hears_nothing(pair, state_dir, tmp_path):
    p = unblock_params("silent")
    assert run_agent("portblock", "start", p, ns=pair.server, state=state_dir).rc == 0
    pair.connect()
    assert pair.server_connections() == 1
    assert run_agent("portblock", "stop", p, ns=pair.server, state=state_dir).rc == 0   # = block
    assert pair.server_connections() == 0
    assert pair.client_reset_at(within=2.0) is None, "the client was told of the block"


def test_reject_block_resets_the_client_at_once(pair, state_dir):
    """Negative control of the test above: the same steps with method=reject."""
    p = unblock_params("reject")
    assert run_agent("portblock", "start", p, ns=pair.server, state=state_dir).rc == 0
    pair.connect()
    stopped = time.monotonic()
    assert run_agent("portblock", "stop", p, ns=pair.server, state=state_dir).rc == 0
    reset = pair.client_reset_at(within=2.0)
    assert reset is not None and reset - stopped < 1.0


def silent_failover(pair, state_dir, tmp_path, tickle: bool) -> float | None:
    """Silent block, a pause, the unblock: seconds from the unblock to the client's reset."""
    tickles = tmp_path / "tickle"
    tickles.mkdir()
    p = unblock_params("silent", **({"tickle_dir": str(tickles)} if tickle else {}))
    assert run_agent("portblock", "start", p, ns=pair.server, state=state_dir).rc == 0
    pair.connect()
    assert run_agent("portblock", "stop", p, ns=pair.server, state=state_dir).rc == 0
    if tickle:
        assert (tickles / SERVER_IP).read_text().count(f"{CLIENT_IP}:") == 1
    # The client's retransmissions come at about 0.2, 0.6, 1.4, 3.0, 6.2 s: unblock
    # in the long gap before the last, so that only a tickle can explain a prompt reset.
    assert pair.client_reset_at(within=3.5) is None
    unblocked = time.monotonic()
    assert run_agent("portblock", "start", p, ns=pair.server, state=state_dir).rc == 0
    reset = pair.client_reset_at(within=1.0)
    return None if reset is None else reset - unblocked


def test_unblock_tickles_the_silently_blocked_client_at_once(pair, state_dir, tmp_path):
    after = silent_failover(pair, state_dir, tmp_path, tickle=True)
    assert after is not None and after < 0.5, f"the client learnt of the unblock after {after} s"


def test_without_tickles_the_client_waits_for_its_next_retransmission(pair, state_dir, tmp_path):
    """Negative control of the test above: no tickle_dir, no prompt reset."""
    assert silent_failover(pair, state_dir, tmp_path, tickle=False) is None


CONNECT = """
import socket, sys, time
began = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    print("connected", time.monotonic() - began)
except ConnectionRefusedError:
    print("refused", time.monotonic() - began)
except OSError as err:
    print("failed", time.monotonic() - began, err)
"""


@pytest.mark.parametrize("firewall", ["iptables", "iptables-legacy", "nft", "python-iptables"])
def test_a_new_connection_during_a_silent_block_is_refused_at_once(pair, state_dir, firewall):
    """A client that is already reconnecting when the block comes must not back off on
    unanswered SYNs (1, 2, 4, 8 s...: a 17 s pause in the lab): it is refused at once."""
    p = unblock_params("silent", firewall=firewall)
    assert run_agent("portblock", "start", p, ns=pair.server, state=state_dir).rc == 0
    assert run_agent("portblock", "stop", p, ns=pair.server, state=state_dir).rc == 0     # = block
    outcome = pair.client.run(sys.executable, "-c", CONNECT, SERVER_IP, PORT).stdout.split()
    assert outcome[0] == "refused" and float(outcome[1]) < 0.5, outcome
    # And an established connection still hears nothing of a block.
    assert run_agent("portblock", "start", p, ns=pair.server, state=state_dir).rc == 0
    pair.connect()
    assert run_agent("portblock", "stop", p, ns=pair.server, state=state_dir).rc == 0
    assert pair.client_reset_at(within=2.0) is None
    assert run_agent("portblock", "start", p, ns=pair.server, state=state_dir).rc == 0


def test_silent_needs_tcp_both_ways(pair, state_dir):
    for extra in ({"direction": "in"}, {"direction": "out"}, {"protocol": "udp"}):
        result = run_agent("portblock", "validate-all", {**unblock_params("silent"), **extra},
                           ns=pair.server, state=state_dir)
        assert result.rc == 6 and "method=silent" in result.stderr


# ---------------------------------------------------------------- an address that comes back

VIP, CLIENT_SOURCE, CLIENT_PORT = "10.83.9.1", "10.83.8.2", 47123

# The listener closes a connection first when it is sent "bye": its side then
# stays in TIME-WAIT for 60 s (as tgtd leaves one for every refused login).
CLOSING_LISTENER = LISTENER.replace("""def drain(c):
    try:""", """def drain(c):
    try:
        if c.recv(3) == b"bye":
            c.close()
            return""")

# One connection from a fixed port, as an initiator reconnecting on a port it used before.
FIXED_PORT_CLIENT = CLIENT.replace(
    "c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)",
    "c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5, source_address=(sys.argv[3], int(sys.argv[4])))")

BYE = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5, source_address=(sys.argv[3], int(sys.argv[4])))
c.send(b"bye")
c.recv(1)
c.close()
"""


class MovingAddress:
    """Two nodes that take turns holding VIP, and a client routed to whichever holds it."""

    def __init__(self, make_netns):
        self.client = make_netns("cli")
        self.client.add_address(f"{CLIENT_SOURCE}/32")
        self.nodes = [make_netns("nodea"), make_netns("nodeb")]
        self.listeners = []
        for number, node in enumerate(self.nodes, 1):
            veth_pair(node, self.client, f"10.83.{number}.1/24", f"10.83.{number}.2/24")
            node.add_address(f"{VIP}/32")
            node.run("ip", "route", "add", f"{CLIENT_SOURCE}/32", "via", f"10.83.{number}.2")
            self.listeners.append(subprocess.Popen(node.exec_argv(sys.executable, "-c", CLOSING_LISTENER, VIP, PORT)))
        time.sleep(0.3)
        self.talker = None

    def route_to(self, number: int) -> None:
        self.client.run("ip", "route", "replace", f"{VIP}/32", "via", f"10.83.{number}.1", "src", CLIENT_SOURCE)

    def close(self) -> None:
        kill(self.talker, *self.listeners)


@pytest.fixture
def moving(make_netns):
    m = MovingAddress(make_netns)
    yield m
    m.close()


def returning_address(moving, state_dir, tmp_path, agent_tickles: bool) -> float | None:
    """Node A closed a connection from the client's port less than 60 s ago; the
    address moves to B, the client connects again from that port, B blocks
    silently, the address returns to A and A unblocks with tickles. Seconds from
    A's unblock to the client's reset, None if it is not reset within 1 s."""
    a, b = moving.nodes
    tickles = tmp_path / "tickle"
    tickles.mkdir()
    p = {"protocol": "tcp", "portno": PORT, "ip": VIP, "action": "unblock", "direction": "both",
         "method": "silent", "tickle_dir": str(tickles)}
    moving.route_to(1)
    moving.client.run(sys.executable, "-c", BYE, VIP, PORT, CLIENT_SOURCE, str(CLIENT_PORT))
    assert a.run("ss", "-Htan", "state", "time-wait").stdout.strip(), "no TIME-WAIT socket on A"
    moving.route_to(2)
    state_b, state_a = state_dir / "b", state_dir / "a"
    state_b.mkdir()
    state_a.mkdir()
    assert run_agent("portblock", "start", p, ns=b, state=state_b).rc == 0
    moving.talker = subprocess.Popen(moving.client.exec_argv(sys.executable, "-u", "-c", FIXED_PORT_CLIENT, VIP,
                                                             PORT, CLIENT_SOURCE, str(CLIENT_PORT)),
                                     stdout=subprocess.PIPE, text=True)
    assert moving.talker.stdout.readline().strip() == "connected"
    time.sleep(0.3)
    assert run_agent("portblock", "stop", p, ns=b, state=state_b).rc == 0          # B blocks, saves the tickle list
    moving.route_to(1)
    time.sleep(3.5)              # between the client's retransmissions (see silent_failover)
    unblocked = time.monotonic()
    if agent_tickles:
        assert run_agent("portblock", "start", p, ns=a, state=state_a).rc == 0
    else:
        # Negative control: the same tickles with the TIME-WAIT socket left in place.
        a.run("/usr/libexec/heartbeat/tickle_tcp", "-n", "3", input=(tickles / VIP).read_text())
    reset = reset_at(moving.talker, within=1.0)
    return None if reset is None else reset - unblocked


def test_a_time_wait_socket_left_on_the_returning_node_does_not_hide_the_client_from_the_tickle(
        moving, state_dir, tmp_path):
    """Seen in the lab (1 standby in 60): an initiator's connection matched a TIME-WAIT
    socket that tgtd had left on the node the address came back to; it answered the
    tickle's reply with an ACK, not a reset, and the initiator waited 15 s for its own
    NOP timeout. The unblock drops such sockets before it tickles, and tickles again
    0.6 s later: the client's ACKs to the TIME-WAIT socket just before the unblock
    use up its allowance of one per 500 ms (tcp_invalid_ratelimit)."""
    after = returning_address(moving, state_dir, tmp_path, agent_tickles=True)
    assert after is not None and after < 0.9, f"the client learnt of the unblock after {after} s"


def test_with_the_time_wait_socket_left_the_tickle_does_not_reset_the_client(moving, state_dir, tmp_path):
    """Negative control of the test above."""
    assert returning_address(moving, state_dir, tmp_path, agent_tickles=False) is None
