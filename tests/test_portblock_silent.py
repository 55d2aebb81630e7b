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
        """When (monotonic) the client saw its connection fail, waiting up to ``within`` s."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.talker.poll() is not None:
                line = self.talker.stdout.readline().split()
                return float(line[1]) if line and line[0] == "reset" else None
            time.sleep(0.02)
        return None

    def close(self) -> None:
        for proc in (self.talker, self.listener):
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
