"""ocf:tgtha:portblock against real firewalls in network namespaces.

Every backend is exercised: the iptables command (nft variant), iptables-legacy,
native nft and python-iptables. TCP connects prove what the rules do.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from conftest import AGENTS, agent_env, needs_root, run_agent

pytestmark = needs_root

BACKENDS = ["iptables", "iptables-legacy", "nft", "python-iptables"]
VIP = "10.77.0.1"
VIP6 = "fd00:77::1"
PORT = "3260"


@pytest.fixture
def host(netns):
    """A namespace with the service address on lo and a TCP listener on it."""
    netns.add_address(f"{VIP}/32")
    netns.run("ip", "-6", "addr", "add", f"{VIP6}/128", "dev", "lo", "nodad")
    listeners = [subprocess.Popen(netns.exec_argv(sys.executable, "-c", LISTENER, address, PORT))
                 for address in (VIP, VIP6)]
    time.sleep(0.3)
    yield netns
    for listener in listeners:
        listener.kill()
        listener.wait()


LISTENER = """
import socket, sys
family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(family)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
kept = []
while True:
    kept.append(s.accept()[0])
"""

CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
except OSError:
    sys.exit(1)
"""


def can_connect(ns, address: str = VIP, timeout: float = 0.7) -> bool:
    return ns.run(sys.executable, "-c", CONNECT, address, PORT, str(timeout), check=False).returncode == 0


def params(firewall: str, action: str, **extra: str) -> dict[str, str]:
    return {"protocol": "tcp", "portno": PORT, "ip": VIP, "action": action, "firewall": firewall, **extra}


def tagged_rules(ns, family: int = 4) -> list[str]:
    return [line for line in ns.iptables_save(family).splitlines() if "tgtha-portblock:" in line]


@pytest.mark.parametrize("firewall", BACKENDS)
def test_start_is_idempotent_and_stop_removes_the_rule(host, state_dir, firewall):
    p = params(firewall, "block")
    assert run_agent("portblock", "monitor", p, ns=host, state=state_dir).rc == 7
    for _ in range(2):
        assert run_agent("portblock", "start", p, ns=host, state=state_dir).rc == 0
        assert len(tagged_rules(host)) == 1
    assert run_agent("portblock", "monitor", p, ns=host, state=state_dir).rc == 0
    for _ in range(2):
        assert run_agent("portblock", "stop", p, ns=host, state=state_dir).rc == 0
        assert tagged_rules(host) == []
    assert run_agent("portblock", "monitor", p, ns=host, state=state_dir).rc == 7


@pytest.mark.parametrize("firewall", BACKENDS)
def test_block_unblock_cycles_leave_exactly_the_right_rules(host, state_dir, firewall):
    block, unblock = params(firewall, "block"), params(firewall, "unblock")
    assert can_connect(host)
    for _cycle in range(3):
        # group start: block, (service), unblock
        assert run_agent("portblock", "start", block, ns=host, state=state_dir, instance="pb-block").rc == 0
        assert len(tagged_rules(host)) == 1 and not can_connect(host)
        assert run_agent("portblock", "start", unblock, ns=host, state=state_dir, instance="pb-unblock").rc == 0
        assert tagged_rules(host) == [] and can_connect(host)
        for instance, p in (("pb-block", block), ("pb-unblock", unblock)):
            assert run_agent("portblock", "monitor", p, ns=host, state=state_dir, instance=instance,
                             meta={"interval": "10000"}).rc == 0
        # group stop: unblock stops first (blocks), block stops last (unblocks)
        assert run_agent("portblock", "stop", unblock, ns=host, state=state_dir, instance="pb-unblock").rc == 0
        assert len(tagged_rules(host)) == 1 and not can_connect(host)
        assert run_agent("portblock", "stop", block, ns=host, state=state_dir, instance="pb-block").rc == 0
        assert tagged_rules(host) == [] and can_connect(host)


@pytest.mark.parametrize("firewall", BACKENDS)
def test_ipv6_block_and_unblock(host, state_dir, firewall):
    p = params(firewall, "block", ip=VIP6, method="reject", direction="both")
    assert can_connect(host, VIP6)
    assert run_agent("portblock", "start", p, ns=host, state=state_dir).rc == 0
    assert len(tagged_rules(host, 6)) == 2
    assert not can_connect(host, VIP6)
    assert can_connect(host, VIP), "IPv4 must stay open"
    assert run_agent("portblock", "stop", p, ns=host, state=state_dir).rc == 0
    assert tagged_rules(host, 6) == [] and can_connect(host, VIP6)


def duplicate_our_rule(ns, firewall: str) -> None:
    """Add a second copy of our rule by hand, as a stray script might."""
    if firewall == "nft":
        listing = ns.run("nft", "list", "chain", "inet", "tgtha", "portblock_in").stdout
        rule = next(line.strip() for line in listing.splitlines() if "tgtha-portblock:" in line)
        ns.run("nft", "add", "rule", "inet", "tgtha", "portblock_in", *rule.split())
    else:
        spec = tagged_rules(ns)[0].replace("-A INPUT", "").replace('"', "")
        ns.run("iptables", "-A", "INPUT", *spec.split())


@pytest.mark.parametrize("firewall", ["iptables", "nft"])
def test_no_duplicate_survives_a_start_or_a_stop(host, state_dir, firewall):
    p = params(firewall, "block")
    run_agent("portblock", "start", p, ns=host, state=state_dir)
    duplicate_our_rule(host, firewall)
    assert len(tagged_rules(host)) == 2
    assert run_agent("portblock", "start", p, ns=host, state=state_dir).rc == 0
    assert len(tagged_rules(host)) == 1, "start leaves exactly one copy"
    duplicate_our_rule(host, firewall)
    assert run_agent("portblock", "stop", p, ns=host, state=state_dir).rc == 0
    assert tagged_rules(host) == [], "stop removes every copy"


@pytest.mark.parametrize("firewall", ["iptables", "nft"])
def test_status_check_rule_reports_a_block_rule_removed_by_hand(host, state_dir, firewall):
    p = params(firewall, "block", status_check="rule")
    assert run_agent("portblock", "start", p, ns=host, state=state_dir).rc == 0
    if firewall == "nft":
        host.run("nft", "flush", "chain", "inet", "tgtha", "portblock_in")
    else:
        host.run("iptables", "-F", "INPUT")
    run = run_agent("portblock", "monitor", p, ns=host, state=state_dir, meta={"interval": "10000"})
    assert run.rc == 7
    assert "block rule missing" in run.stderr


def test_status_check_rule_reports_a_block_rule_added_under_a_running_unblock(host, state_dir):
    block, unblock = params("iptables", "block", status_check="rule"), params("iptables", "unblock",
                                                                              status_check="rule")
    run_agent("portblock", "start", block, ns=host, state=state_dir, instance="b")
    run_agent("portblock", "start", unblock, ns=host, state=state_dir, instance="u")
    assert run_agent("portblock", "monitor", unblock, ns=host, state=state_dir, instance="u").rc == 0
    host.run("iptables", "-I", "INPUT", "-p", "tcp", "-d", f"{VIP}/32", "-m", "multiport", "--dports", PORT,
             "-m", "comment", "--comment", f"tgtha-portblock:tcp:{PORT}:{VIP}/32:drop", "-j", "DROP")
    assert run_agent("portblock", "monitor", unblock, ns=host, state=state_dir, instance="u").rc == 7


def test_pseudo_mode_keeps_the_stock_semantics(host, state_dir):
    """Stock: block is 'running' once its unblock partner took the rule away."""
    block, unblock = params("iptables", "block"), params("iptables", "unblock")
    assert run_agent("portblock", "monitor", unblock, ns=host, state=state_dir).rc == 7, "unblock probe"
    run_agent("portblock", "start", block, ns=host, state=state_dir, instance="b")
    time.sleep(0.01)
    run_agent("portblock", "start", unblock, ns=host, state=state_dir, instance="u")
    assert tagged_rules(host) == []
    assert run_agent("portblock", "monitor", block, ns=host, state=state_dir, instance="b").rc == 0
    assert run_agent("portblock", "monitor", unblock, ns=host, state=state_dir, instance="u").rc == 0


@pytest.mark.parametrize("bad, rc, reason", [
    ({"protocol": "sctp"}, 6, "protocol"),
    ({"portno": "32600000"}, 6, "portno"),
    ({"portno": "3260bad"}, 6, "portno"),
    ({"ip": "10.77.0.300"}, 6, "ip"),
    ({"action": "open"}, 6, "action"),
    ({"direction": "sideways"}, 6, "direction"),
    ({"method": "tarpit"}, 6, "method"),
    ({"firewall": "pf"}, 6, "firewall"),
    ({"status_check": "maybe"}, 6, "status_check"),
    ({"close_connections": "perhaps"}, 6, "close_connections"),
    ({"action": "unblock", "tickle_dir": "/nonexistent/tickle"}, 5, "tickle_dir"),
    ({"action": "block", "tickle_dir": "/tmp"}, 6, "tickle_dir"),
])
@pytest.mark.parametrize("action", ["validate-all", "start"])
def test_bad_input_is_refused_with_a_reason_and_changes_nothing(host, state_dir, bad, rc, reason, action):
    before = host.iptables_save()
    run = run_agent("portblock", action, {**params("iptables", "block"), **bad}, ns=host, state=state_dir)
    assert run.rc == rc, run
    assert reason in run.exit_reason
    assert host.iptables_save() == before
    assert list(state_dir.rglob("portblock_*")) == []


def test_stop_and_probe_never_fail_for_a_missing_parameter(host, state_dir):
    assert run_agent("portblock", "stop", {"protocol": "tcp"}, ns=host, state=state_dir).rc == 0
    run = run_agent("portblock", "monitor", {"protocol": "tcp", "portno": PORT}, ns=host, state=state_dir,
                    meta={"interval": "0"})
    assert run.rc == 6 and "action" in run.exit_reason


def test_block_closes_established_connections_and_confirms_none_remain(host, state_dir):
    with held_connections(host, 5) as clients:
        assert len(established(host)) == 5
        begin = time.monotonic()
        run = run_agent("portblock", "start", params("iptables", "block"), ns=host, state=state_dir)
        took = time.monotonic() - begin
        assert run.rc == 0, run
        assert established(host) == []
        assert "closed 5 connection(s)" in run.stderr
        assert took < 2
        for client in clients:
            assert client.wait(5) == 0, "the client saw its connection reset"


def test_close_connections_false_leaves_them_alone(host, state_dir):
    with held_connections(host) as (client,):
        run = run_agent("portblock", "start", params("iptables", "block", close_connections="false"),
                        ns=host, state=state_dir)
        assert run.rc == 0 and len(established(host)) == 1


HOLD_OPEN = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
print("connected", flush=True)
try:
    data = c.recv(1)
    sys.exit(0 if data == b"" else 2)
except ConnectionResetError:
    sys.exit(0)
"""


@contextmanager
def held_connections(ns, count: int = 1):
    """``count`` clients connected to the service, each waiting to be closed or reset.

    A client exits 0 when its connection ends by a close or a reset."""
    clients = [subprocess.Popen(ns.exec_argv(sys.executable, "-c", HOLD_OPEN, VIP, PORT),
                                stdout=subprocess.PIPE, text=True) for _ in range(count)]
    try:
        for client in clients:
            assert client.stdout.readline().strip() == "connected"
        yield clients
    finally:
        for client in clients:
            client.kill()
            client.wait()


def established(ns) -> list[str]:
    out = ns.run("ss", "-Htn", "state", "established", f"( sport = :{PORT} )").stdout
    return [line for line in out.splitlines() if line.strip()]


def test_promotable_mode_blocks_on_unpromoted_and_unblocks_on_promoted(host, state_dir, tmp_path):
    """Promotable clone, action=unblock: the promoted node serves, the others block.

    crm_attribute (the promotion score) is a recording stub here: no cluster
    runs in this test; the firewall is real.
    """
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir()
    calls = tmp_path / "crm_attribute.calls"
    (stub_dir / "crm_attribute").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (stub_dir / "crm_attribute").chmod(0o755)
    p = params("iptables", "unblock")
    meta = {"promotable": "true", "interval": "10000"}

    def act(action):
        argv = host.exec_argv("env", f"PATH={stub_dir}:/usr/sbin:/usr/bin:/sbin:/bin",
                              str(AGENTS / "portblock"), action)
        return subprocess.run(argv, env=agent_env(state_dir, "pb-ms", p, meta), capture_output=True,
                              text=True).returncode

    assert act("monitor") == 7
    assert act("start") == 0 and len(tagged_rules(host)) == 1 and act("monitor") == 0
    assert act("promote") == 0 and tagged_rules(host) == [] and act("monitor") == 8
    assert act("demote") == 0 and len(tagged_rules(host)) == 1 and act("monitor") == 0
    assert act("stop") == 0 and len(tagged_rules(host)) == 1 and act("monitor") == 7
    assert "--promotion -l reboot -v 10" in calls.read_text()


def test_tickle_dir_records_established_connections_of_a_running_unblock(host, state_dir, tmp_path):
    tickle = tmp_path / "tickle"
    tickle.mkdir()
    with held_connections(host) as (client,):
        p = params("iptables", "unblock", tickle_dir=str(tickle))
        assert run_agent("portblock", "start", p, ns=host, state=state_dir).rc == 0
        assert run_agent("portblock", "monitor", p, ns=host, state=state_dir,
                         meta={"interval": "10000"}).rc == 0
        recorded = (tickle / VIP).read_text().splitlines()
        assert len(recorded) == 1 and recorded[0].startswith(f"{VIP}:{PORT}\t{VIP}:")


# The delays of the records an unblock's start leaves behind (lib/tgtha/portblock.py).
RECORD_AFTER_START_S = (3.0, 7.0)


def recorders(state_dir) -> list[int]:
    """The pids of the delayed recorders left by starts that used ``state_dir``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline, open(f"/proc/{pid}/environ", "rb") as environ:
                if b"record_after_start" in cmdline.read() and str(state_dir).encode() in environ.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_an_unblock_records_clients_connecting_after_its_start_before_its_next_monitor(host, state_dir, tmp_path):
    """After a failover the initiators reconnect over the next seconds: a power-off
    within one monitor interval must still find them in the record."""
    tickle = tmp_path / "tickle"
    tickle.mkdir()
    p = params("iptables", "unblock", tickle_dir=str(tickle))
    began = time.monotonic()
    assert run_agent("portblock", "start", p, ns=host, state=state_dir).rc == 0
    assert time.monotonic() - began < 2, "the start does not wait for its delayed records"
    with held_connections(host):
        time.sleep(1)
        assert not (tickle / VIP).exists(), "nothing recorded the client yet (no monitor ran)"
        time.sleep(RECORD_AFTER_START_S[0])
        recorded = (tickle / VIP).read_text().splitlines()
        assert len(recorded) == 1 and recorded[0].startswith(f"{VIP}:{PORT}\t{VIP}:")
    time.sleep(RECORD_AFTER_START_S[-1] - RECORD_AFTER_START_S[0])
    assert (tickle / VIP).read_text() == "", "the second record sees the client gone"
    assert recorders(state_dir) == []
    assert run_agent("portblock", "stop", p, ns=host, state=state_dir).rc == 0


def test_a_stop_soon_after_the_start_keeps_the_last_record_its_own(host, state_dir, tmp_path):
    """The stop records the clients and closes their connections; a delayed record
    of the start written after it would leave the next node nobody to tickle."""
    tickle = tmp_path / "tickle"
    tickle.mkdir()
    p = params("iptables", "unblock", tickle_dir=str(tickle))
    with held_connections(host):
        assert run_agent("portblock", "start", p, ns=host, state=state_dir).rc == 0
        assert recorders(state_dir) != []
        assert run_agent("portblock", "stop", p, ns=host, state=state_dir).rc == 0
    assert established(host) == [], "a record made now would be empty"
    at_stop = (tickle / VIP).read_text()
    assert len(at_stop.splitlines()) == 1
    time.sleep(RECORD_AFTER_START_S[-1] + 1)
    assert (tickle / VIP).read_text() == at_stop
    assert recorders(state_dir) == []


@contextmanager
def frozen_filesystem(tmp_path):
    """A real ext4 (on a loop device) that ``freeze()`` makes hang every write, as a
    shared tickle_dir does when its NFS server is away: the writer sleeps
    uninterruptibly (even SIGKILL waits) until ``thaw()``."""
    image, mountpoint = tmp_path / "tickle.img", tmp_path / "tickle"
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mountpoint.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    frozen = []

    def freeze():
        subprocess.run(["fsfreeze", "-f", str(mountpoint)], check=True)
        frozen.append(True)

    def thaw():
        if frozen:
            subprocess.run(["fsfreeze", "-u", str(mountpoint)], check=True)
            frozen.clear()
    try:
        yield mountpoint, freeze, thaw
    finally:
        thaw()
        time.sleep(0.5)   # writers left hanging finish now
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_a_hung_tickle_dir_never_holds_up_a_monitor_or_a_stop_and_the_stop_still_blocks(host, state_dir, tmp_path):
    """A failed or timed-out stop fences the node: a hung shared filesystem is
    no reason for either. The record is written when the filesystem comes back."""
    with frozen_filesystem(tmp_path) as (tickle, freeze, thaw):
        p = params("iptables", "unblock", tickle_dir=str(tickle))
        assert run_agent("portblock", "start", p, ns=host, state=state_dir).rc == 0
        with held_connections(host):
            freeze()
            # Negative control: the frozen filesystem does hang a plain write.
            plain = subprocess.Popen(["sh", "-c", f"echo x > {tickle}/probe"])
            with pytest.raises(subprocess.TimeoutExpired):
                plain.wait(timeout=1.5)
            began = time.monotonic()
            monitor = run_agent("portblock", "monitor", p, ns=host, state=state_dir,
                                meta={"interval": "10000"}, timeout=15)
            stop = run_agent("portblock", "stop", p, ns=host, state=state_dir, timeout=15)
            took = time.monotonic() - began
            assert monitor.rc == 0 and stop.rc == 0, (monitor, stop)
            assert took < 9, f"monitor + stop took {took:.1f} s on a hung tickle_dir"
            assert "did not finish" in stop.stderr
            assert len(tagged_rules(host)) == 1 and not can_connect(host), "the stop blocked all the same"
            thaw()
            plain.wait(timeout=5)
        time.sleep(0.5)
        recorded = (tickle / VIP).read_text().splitlines()
        assert len(recorded) == 1, "the stop's record was written once the filesystem came back"


def test_a_tickle_dir_that_never_answers_costs_a_start_monitor_or_stop_seconds_at_most(
        host, state_dir, unanswered_filesystem):
    """Reads hang too on shared storage whose server is away (the frozen ext4
    above hangs writes only): the unblock's start checks the directory and reads
    the old node's record, monitor and stop write one."""
    p = params("iptables", "unblock", tickle_dir=str(unanswered_filesystem))
    # Negative control: a plain look at the directory hangs.
    look = subprocess.Popen(["stat", str(unanswered_filesystem)], stdout=subprocess.DEVNULL)
    with pytest.raises(subprocess.TimeoutExpired):
        look.wait(timeout=1.5)
    look.kill()
    assert run_agent("portblock", "start", params("iptables", "block"), ns=host, state=state_dir,
                     instance="pb-block").rc == 0
    for action, bound_s in (("start", 4), ("monitor", 4), ("stop", 4)):
        began = time.monotonic()
        result = run_agent("portblock", action, p, ns=host, state=state_dir, instance="pb-unblock",
                           meta={"interval": "10000"} if action == "monitor" else None, timeout=15)
        took = time.monotonic() - began
        assert result.rc == 0 and took < bound_s, (action, took, result)
        assert "tickle_dir" in result.stderr or "did not finish" in result.stderr, result.stderr
        assert bool(tagged_rules(host)) == (action == "stop"), f"after {action}"
    look.wait(timeout=5)


def test_reset_local_on_unblock_stop_resets_connections_and_leaves_only_the_block_rule(host, state_dir):
    with held_connections(host) as (client,):
        p = params("iptables", "unblock", reset_local_on_unblock_stop="true", close_connections="false")
        assert run_agent("portblock", "start", p, ns=host, state=state_dir).rc == 0
        assert run_agent("portblock", "stop", p, ns=host, state=state_dir).rc == 0
        assert established(host) == []
        assert client.wait(5) == 0
        rules = tagged_rules(host)
        assert len(rules) == 1 and rules[0].startswith("-A INPUT"), "the temporary OUTPUT reset rule is gone"


@pytest.mark.parametrize("script, start_rc", [
    ("/nonexistent/sync-tickles", 5),           # missing on this node
    ("{not_executable}", 5),                    # there, but not executable
    ("'/bin/true", 6),                          # an unclosed quote
    ("/bin/false", 0),                          # runs and fails
    ("{hangs}", 0),                             # runs and never ends
])
def test_a_broken_sync_script_never_fails_a_stop_or_a_monitor_and_the_stop_still_blocks(
        host, state_dir, tmp_path, script, start_rc):
    tickle = tmp_path / "tickle"
    tickle.mkdir()
    not_executable = tmp_path / "sync.sh"
    not_executable.write_text("#!/bin/sh\n")
    hangs, hung = tmp_path / "hang.sh", tmp_path / "hung.pids"
    hangs.write_text(f"#!/bin/sh\necho $$ >> {hung}\nexec sleep 600\n")
    hangs.chmod(0o755)
    p = params("iptables", "unblock", tickle_dir=str(tickle),
               sync_script=script.format(not_executable=not_executable, hangs=hangs))
    good = {**p, "sync_script": ""}
    # A bad script is refused where it can be seen: at start (6 everywhere, 5 on this node).
    start = run_agent("portblock", "start", p, ns=host, state=state_dir)
    assert start.rc == start_rc and ("sync_script" in start.exit_reason or start_rc == 0), start
    if start_rc:
        assert run_agent("portblock", "start", good, ns=host, state=state_dir).rc == 0
    # Once running (the script broke, or broke later), monitor and stop answer for the firewall alone.
    with held_connections(host):
        began = time.monotonic()
        monitor = run_agent("portblock", "monitor", p, ns=host, state=state_dir, meta={"interval": "10000"})
        stop = run_agent("portblock", "stop", p, ns=host, state=state_dir)
        assert time.monotonic() - began < 5
    assert monitor.rc == 0, monitor
    assert stop.rc == 0, stop
    assert not can_connect(host), "the stopped unblock must leave the port blocked"
    assert len(tagged_rules(host)) == 1
    assert run_agent("portblock", "stop", {**p, "action": "block"}, ns=host, state=state_dir).rc == 0
    time.sleep(0.2)
    for pid in (hung.read_text().split() if hung.exists() else []):
        try:
            os.kill(int(pid), 9)
        except ProcessLookupError:
            pass


def iptables_pointing_to(tmp_path, variant: str) -> dict[str, str]:
    """An environment whose iptables/ip6tables commands are the ``variant`` ones,
    as update-alternatives would make them (without touching the host's)."""
    bin_dir = tmp_path / f"alternatives-{variant}"
    bin_dir.mkdir(exist_ok=True)
    for command in ("iptables", "ip6tables"):
        link = bin_dir / command
        if not link.exists():
            link.symlink_to(f"/usr/sbin/{command}-{variant}")
    return {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"}


@pytest.mark.parametrize("address", [VIP, VIP6])
@pytest.mark.parametrize("before, after", [("nft", "legacy"), ("legacy", "nft")])
def test_a_rule_is_managed_where_it_was_made_when_iptables_switches_variant(
        host, state_dir, tmp_path, address, before, after):
    """firewall=auto is decided when the pair starts and recorded: iptables switched
    between nft and legacy meanwhile changes nothing for monitor, unblock and stop."""
    family = 6 if ":" in address else 4
    block = {**params("auto", "block", ip=address, status_check="rule")}
    unblock = {**block, "action": "unblock"}
    old, new = iptables_pointing_to(tmp_path, before), iptables_pointing_to(tmp_path, after)

    def agent(action: str, p: dict[str, str], env: dict[str, str], **kw) -> int:
        return run_agent("portblock", action, p, ns=host, state=state_dir, env=env, **kw).rc

    assert agent("start", block, old) == 0
    assert not can_connect(host, address)
    assert agent("monitor", block, new, meta={"interval": "10000"}) == 0
    assert agent("start", unblock, new) == 0
    assert can_connect(host, address)
    assert agent("monitor", unblock, new, meta={"interval": "10000"}) == 0
    assert agent("stop", unblock, new) == 0
    assert not can_connect(host, address)
    assert agent("stop", block, new) == 0
    assert can_connect(host, address)
    assert tagged_rules(host, family) == []


def test_stop_removes_a_stale_copy_that_another_backend_holds(host, state_dir, tmp_path):
    """No record (a copy made before the agent recorded backends, or by hand):
    the stop that removes the rule looks in every backend."""
    p = params("auto", "block")
    assert run_agent("portblock", "start", {**p, "firewall": "iptables-legacy"}, ns=host,
                     state=state_dir).rc == 0
    for record in (state_dir / "tgtha").glob("*_firewall"):
        record.unlink()
    assert run_agent("portblock", "stop", p, ns=host, state=state_dir).rc == 0
    assert tagged_rules(host) == [] and can_connect(host)


HIDE_IPTABLES = ('for p in iptables ip6tables iptables-nft ip6tables-nft iptables-legacy ip6tables-legacy; do '
                 'mount --bind /dev/null /usr/sbin/$p; done; exec "$@"')


@pytest.mark.parametrize("address", [VIP, VIP6])
def test_a_rule_is_managed_where_it_was_made_when_iptables_is_installed_meanwhile(host, state_dir, address):
    """Started without iptables (auto: nft), then iptables is installed: the pair
    keeps using nft until it stops. (iptables removed while its rules are in
    force is not handled: nft shows iptables-nft's rules without their comment,
    so nothing can tell ours from the administrator's; README says so.)"""
    family = 6 if ":" in address else 4
    block = params("auto", "block", ip=address, status_check="rule")
    unblock = {**block, "action": "unblock"}

    def agent(action: str, p: dict[str, str], iptables_installed: bool = True, **kw) -> int:
        argv = [str(AGENTS / "portblock"), action]
        if not iptables_installed:     # the package gone: its programs are not executable
            argv = ["unshare", "--mount", "sh", "-c", HIDE_IPTABLES, "-", *argv]
        env = agent_env(state_dir, "rsc", p, kw.get("meta"))
        return subprocess.run(host.exec_argv(*argv), env=env, capture_output=True, text=True).returncode

    assert agent("start", block, iptables_installed=False) == 0
    assert not can_connect(host, address)
    assert agent("monitor", block, meta={"interval": "10000"}) == 0
    assert agent("start", unblock) == 0
    assert can_connect(host, address)
    assert agent("stop", unblock) == 0
    assert not can_connect(host, address)
    assert agent("stop", block) == 0
    assert can_connect(host, address)
    assert tagged_rules(host, family) == []


def test_the_longest_port_list_on_the_longest_ipv6_address_fits_nfts_comment_limit(host, state_dir):
    ports = ",".join(str(65535 - n) for n in range(15))          # multiport's 15 slots, 5 digits each
    address = "fd00:77:ffff:ffff:ffff:ffff:ffff:ff01"
    host.run("ip", "-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad")
    for firewall in ("nft", "iptables"):
        p = {**params(firewall, "block", ip=address, portno=ports), "method": "reject"}
        start = run_agent("portblock", "start", p, ns=host, state=state_dir)
        assert start.rc == 0, start
        assert run_agent("portblock", "monitor", {**p, "status_check": "rule"}, ns=host, state=state_dir,
                         meta={"interval": "10000"}).rc == 0
        assert run_agent("portblock", "stop", p, ns=host, state=state_dir).rc == 0
        assert tagged_rules(host, 6) == []


def test_ports_are_ascii_digits(host, state_dir):
    result = run_agent("portblock", "validate-all", params("nft", "block", portno="\u0663\u0662\u0666\u0660"),
                       ns=host, state=state_dir)
    assert result.rc == 6 and "port" in result.exit_reason


# ------------------------------------------------- the pseudo monitor in sh

def monitor_traced(ns, state, agent_params: dict[str, str], meta: dict[str, str] | None = None,
                   through_python: bool = False) -> tuple[int, bool]:
    """(rc, whether Python ran) of one recurring monitor, traced with strace. With
    ``through_python`` the file is run by Python directly: the answer without sh."""
    argv = ["strace", "-f", "-qq", "-e", "trace=execve", "-o", str(state / "monitor.strace")]
    argv += ([sys.executable, "-IS"] if through_python else []) + [str(AGENTS / "portblock"), "monitor"]
    proc = subprocess.run(ns.exec_argv(*argv), env=agent_env(state, "p", agent_params,
                                                            {"interval": "10000", **(meta or {})}),
                          capture_output=True, text=True, timeout=60)
    trace = (state / "monitor.strace").read_text()
    return proc.returncode, "python3" in trace.split("agents/portblock", 1)[-1] or through_python


@pytest.mark.parametrize("extra", [
    {},                                                        # ip 0.0.0.0/0 by default
    {"ip": VIP},
    {"ip": VIP6, "portno": "3260,3261:3263", "direction": "both"},
    {"ip": f"{VIP}/32", "direction": "out", "method": "reject"},
])
@pytest.mark.parametrize("action", ["block", "unblock"])
def test_sh_answers_the_pseudo_monitor_of_a_started_instance_as_python_does(host, state_dir, action, extra):
    agent_params = {**params("iptables", action), **extra}
    if "ip" not in extra:
        del agent_params["ip"]
    assert run_agent("portblock", "start", agent_params, ns=host, state=state_dir, instance="p").rc == 0
    assert monitor_traced(host, state_dir, agent_params) == (0, False)
    assert monitor_traced(host, state_dir, agent_params, through_python=True)[0] == 0
    assert run_agent("portblock", "stop", agent_params, ns=host, state=state_dir, instance="p").rc == 0
    assert monitor_traced(host, state_dir, agent_params) == (7, True), "a stopped instance is Python's"


@pytest.mark.parametrize("extra, meta", [
    ({"status_check": "rule"}, {}),                            # the firewall decides
    ({"tickle_dir": "TICKLE"}, {}),                            # records the connections
])   # promotable clones: their monitor answers 8 when promoted, which sh never does (test above)
def test_every_other_monitor_is_pythons(host, state_dir, tmp_path, extra, meta):
    agent_params = {**params("iptables", "unblock"), **extra}
    if extra.get("tickle_dir"):
        agent_params["tickle_dir"] = str(tmp_path)
    assert run_agent("portblock", "start", agent_params, ns=host, state=state_dir, instance="p", meta=meta).rc == 0
    rc, python_ran = monitor_traced(host, state_dir, agent_params, meta)
    assert python_ran and rc == 0
    run_agent("portblock", "stop", agent_params, ns=host, state=state_dir, instance="p", meta=meta)


def test_sh_leaves_a_misconfigured_action_to_python(host, state_dir):
    """A state file that an odd action value would name is never taken as an answer."""
    agent_params = params("iptables", "block")
    run_agent("portblock", "start", agent_params, ns=host, state=state_dir, instance="p")
    rc, python_ran = monitor_traced(host, state_dir, {**agent_params, "action": "block/../portblock"})
    assert python_ran and rc == 6
    run_agent("portblock", "stop", agent_params, ns=host, state=state_dir, instance="p")
