"""ocf:tgtha:tgtd runs tgtd itself: ready when start returns, watched, stopped within bounds.

Real tgtd in a node namespace, real libiscsi initiators (iscsi-perf, qemu-io)
in a client namespace, the agents run as pacemaker-execd runs them.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, AgentRun, needs_root, run_agent, sh, veth_pair

sys.path.insert(0, str(REPO / "bench"))
from tgtd_cycles import tgtd_pids  # noqa: E402 - the benchmark's own count of tgtd processes

pytestmark = [needs_root, pytest.mark.skipif(shutil.which("tgtd") is None, reason="tgt not installed")]

NODE_IP, CLIENT_IP = "10.83.0.1", "10.83.0.2"
IQN = "iqn.2026-11.test.tgtha:daemon{}"
_ports = iter(range(2000 + os.getpid() % 5000, 40000))


class Node:
    """A node namespace whose tgtd is the tgtd agent's, and a client namespace beside it."""

    def __init__(self, make_netns, state: Path, tmp_path: Path) -> None:
        self.ns, self.client = make_netns("tnode"), make_netns("tcli")
        veth_pair(self.ns, self.client, f"{NODE_IP}/24", f"{CLIENT_IP}/24")
        self.state = state
        self.tmp_path = tmp_path
        self.port = next(_ports)
        self.params = {"control_port": str(self.port), "log_file": str(tmp_path / "tgtd.log"),
                       "tgtd_options": f"--iscsi portal={NODE_IP}:3260"}

    def tgtd(self, action: str, meta: dict[str, str] | None = None, **params: str) -> AgentRun:
        return run_agent("tgtd", action, {**self.params, **params}, ns=self.ns, state=self.state,
                         instance="p_tgtd", meta=meta)

    def agent(self, agent: str, action: str, params: dict[str, str]) -> AgentRun:
        return run_agent(agent, action, {"control_port": str(self.port), **params}, ns=self.ns,
                         state=self.state, instance=f"p_{agent}")

    def tgtadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("tgtadm", "-C", str(self.port), *args, check=check)

    def pids(self) -> list[int]:
        """Every tgtd process on this control port, zombies excluded."""
        return tgtd_pids(self.port)

    def leftovers(self) -> list[str]:
        return [p for p in (f"/var/run/tgtd/socket.{self.port}", f"/var/run/tgtd/socket.{self.port}.lock")
                if os.path.exists(p)]

    def cleanup(self) -> None:
        for pid in self.pids():
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        for path in self.leftovers():
            os.unlink(path)


@pytest.fixture
def node(make_netns, state_dir, tmp_path):
    node = Node(make_netns, state_dir, tmp_path)
    yield node
    node.cleanup()


def backing_file(node: Node, name: str) -> str:
    path = node.tmp_path / name
    with open(path, "wb") as disk:
        disk.truncate(64 << 20)
    return str(path)


# ---------------------------------------------------------------- start, monitor, stop

def test_start_returns_a_tgtd_that_answers_and_stop_leaves_nothing(node):
    assert node.tgtd("monitor", meta={"interval": "0"}).rc == 7
    start = node.tgtd("start")
    assert start.rc == 0, start
    # What is ordered after tgtd runs at once and must find it serving.
    assert "State: ready" in node.tgtadm("--mode", "sys", "--op", "show").stdout
    assert len(node.pids()) == 1
    assert node.tgtd("monitor", meta={"interval": "5000"}).rc == 0
    assert node.tgtd("start").rc == 0 and len(node.pids()) == 1      # idempotent: adopted
    stop = node.tgtd("stop")
    assert stop.rc == 0, stop
    assert node.pids() == [] and node.leftovers() == []
    assert node.tgtd("monitor", meta={"interval": "0"}).rc == 7
    assert node.tgtd("stop").rc == 0
    assert "--foreground" in (node.tmp_path / "tgtd.log").read_text()


def _login(node: Node, iqn: str) -> str:
    """What a libiscsi login from the client to ``iqn`` on the node says."""
    result = subprocess.run(node.client.exec_argv("timeout", "10", "iscsi-inq", "-i",
                                                  "iqn.2026-11.test.tgtha:client", f"iscsi://{NODE_IP}/{iqn}/0"),
                            capture_output=True, text=True)
    return result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("iscsi-inq") is None, reason="libiscsi-bin not installed")
def test_a_tgtd_without_targets_answers_logins_target_not_found_instead_of_closing_them(node):
    """tgt closes every connection unanswered while it has no target (open-iscsi 2.1.8 can
    wedge a session on that); the placeholder keeps its list from being empty."""
    assert node.tgtd("start").rc == 0
    assert "Target not found" in _login(node, IQN.format("absent"))
    placeholder = "iqn.2026-12.org.tgtha:placeholder"
    assert "Target not found" in _login(node, placeholder)                  # it admits nobody
    discovery = subprocess.run(node.client.exec_argv("timeout", "10", "iscsi-ls", "-s", f"iscsi://{NODE_IP}"),
                               capture_output=True, text=True)
    assert discovery.returncode == 0 and placeholder not in discovery.stdout   # nor lists it
    # Deleted by hand: the next recurring monitor makes it again, a probe changes nothing.
    node.tgtadm("--mode", "target", "--op", "delete", "--tid", "2147483647")
    assert node.tgtd("monitor", meta={"interval": "0"}).rc == 0
    assert placeholder not in node.tgtadm("--mode", "target", "--op", "show").stdout
    assert node.tgtd("monitor", meta={"interval": "5000"}).rc == 0
    assert placeholder in node.tgtadm("--mode", "target", "--op", "show").stdout
    assert node.tgtd("stop").rc == 0 and node.pids() == []


@pytest.mark.skipif(shutil.which("iscsi-inq") is None, reason="libiscsi-bin not installed")
def test_without_the_placeholder_an_empty_tgtd_closes_logins_unanswered(node):
    """The negative control of the test above: the very failure the placeholder prevents."""
    assert node.tgtd("start", placeholder_target="false").rc == 0
    said = _login(node, IQN.format("absent"))
    assert "Target not found" not in said and said.strip(), said
    assert "placeholder" not in node.tgtadm("--mode", "target", "--op", "show").stdout
    assert node.tgtd("stop", placeholder_target="false").rc == 0


def test_a_tgtd_started_by_hand_is_adopted_not_doubled(node):
    log = open(node.tmp_path / "by-hand.log", "w")
    by_hand = subprocess.Popen(node.ns.exec_argv("tgtd", "-f", "-C", str(node.port)), stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while node.tgtadm("--mode", "sys", "--op", "show", check=False).returncode != 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        node.tgtadm("--mode", "sys", "--op", "update", "--name", "State", "-v", "offline")
        assert node.tgtd("monitor", meta={"interval": "5000"}).rc == 1       # offline is not serving
        start = node.tgtd("start")
        assert start.rc == 0, start
        assert node.pids() == [by_hand.pid]
        assert "State: ready" in node.tgtadm("--mode", "sys", "--op", "show").stdout
        assert node.tgtd("stop").rc == 0
        assert by_hand.wait(timeout=5) is not None and node.leftovers() == []
    finally:
        if by_hand.poll() is None:
            by_hand.kill()
        by_hand.wait()
        log.close()


def test_kill_9_is_seen_by_the_next_monitor_and_stop_cleans_up(node):
    assert node.tgtd("start").rc == 0
    [pid] = node.pids()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while node.pids():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    monitor = node.tgtd("monitor", meta={"interval": "5000"})
    assert monitor.rc == 7, monitor
    assert node.tgtd("stop").rc == 0 and node.leftovers() == []
    assert node.tgtd("start").rc == 0 and len(node.pids()) == 1


def test_a_hung_tgtd_fails_the_monitor_within_its_timeout_and_stop_kills_it(node):
    assert node.tgtd("start").rc == 0
    [pid] = node.pids()
    os.kill(pid, signal.SIGSTOP)
    began = time.monotonic()
    monitor = node.tgtd("monitor", meta={"interval": "5000", "timeout": "3000"})
    took = time.monotonic() - began
    assert monitor.rc == 1 and "hung" in monitor.exit_reason, monitor
    assert took < 3.0
    began = time.monotonic()
    stop = node.tgtd("stop", meta={"timeout": "5000"})
    assert stop.rc == 0, stop
    assert time.monotonic() - began < 5.0
    assert node.pids() == [] and node.leftovers() == []


def test_a_start_that_fails_leaves_no_tgtd_of_its_own(node, tmp_path):
    # A "tgtd" that never answers: the start times out and must take it down again.
    silent = tmp_path / "silent-tgtd"
    silent.write_text("#!/bin/sh\nexec sleep 600\n")
    silent.chmod(0o755)
    began = time.monotonic()
    start = node.tgtd("start", meta={"timeout": "3000"}, binary=str(silent))
    assert start.rc == 1 and "did not" in start.exit_reason, start
    assert time.monotonic() - began < 3.0
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).startswith(str(silent))]
    # One that exits at once: the reason carries tgtd's own words.
    start = node.tgtd("start", tgtd_options="--nr_iothreads 0")
    assert start.rc == 1 and "exited at start" in start.exit_reason, start
    assert "out of range" in start.exit_reason, start
    assert node.pids() == [] and node.leftovers() == []


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize("params, rc, reason", [
    ({"control_port": "x1"}, 6, "control_port"),
    ({"tgtd_options": "-C 7"}, 6, "control_port"),
    ({"tgtd_options": "--pid-file=/run/x"}, 6, "set by the agent"),
    ({"tgtd_options": "--iscsi 'portal=unclosed"}, 6, "cannot be parsed"),
    ({"binary": "tgtd"}, 6, "absolute"),
    ({"binary": "/nonexistent/tgtd"}, 5, "not installed"),
    ({"log_file": "/nonexistent/dir/tgtd.log"}, 5, "does not exist"),
    ({"placeholder_target": "maybe"}, 6, "not a boolean"),
])
def test_bad_input_is_refused_with_a_reason_and_starts_nothing(node, params, rc, reason):
    for action in ("validate-all", "start"):
        result = node.tgtd(action, **params)
        assert result.rc == rc and reason in result.exit_reason, (action, result)
    assert node.pids() == []
    assert node.tgtd("stop", **params).rc == 0


def test_probe_on_a_node_without_tgt_says_not_running(node):
    probe = node.tgtd("monitor", meta={"interval": "0"}, binary="/nonexistent/tgtd")
    assert probe.rc == 7, probe


def test_start_monitor_stop_cycles_on_a_busy_machine_never_fail(report):
    """The benchmark's check (bench/tgtd_cycles.py, 100 cycles in make bench), shorter."""
    result = subprocess.run([sys.executable, str(REPO / "bench" / "tgtd_cycles.py"), "--cycles", "20"],
                            capture_output=True, text=True, timeout=300)
    report(result.stdout.strip())
    assert result.returncode == 0 and ": 0 failures" in result.stdout, result.stdout + result.stderr


# ---------------------------------------------------------------- stop under load

@pytest.mark.skipif(shutil.which("iscsi-perf") is None, reason="libiscsi-bin not installed")
def test_stop_with_six_targets_twelve_luns_and_loaded_initiators_takes_under_two_seconds(node, report):
    assert node.tgtd("start").rc == 0
    targets = [{"iqn": IQN.format(n), "portals": f"{NODE_IP}:3260", "allowed_initiators": CLIENT_IP}
               for n in range(1, 7)]
    for target in targets:
        assert node.agent("iSCSITarget", "start", target).rc == 0
        for lun in (1, 2):
            assert node.agent("iSCSILogicalUnit", "start", {
                "target_iqn": target["iqn"], "lun": str(lun),
                "path": backing_file(node, f"{target['iqn'][-7:]}-{lun}.img")}).rc == 0
    log = open(node.tmp_path / "perf.log", "w")
    loaders = [subprocess.Popen(node.client.exec_argv(
        "iscsi-perf", "-i", "iqn.2026-11.test.tgtha:loader", "-m", "16", "-b", "256", "-x", "-1",
        f"iscsi://{NODE_IP}/{t['iqn']}/{lun}"), stdout=log, stderr=subprocess.STDOUT)
        for t in targets for lun in (1, 2)]
    try:
        deadline = time.monotonic() + 20
        while node.tgtadm("--mode", "target", "--op", "show").stdout.count("I_T nexus: ") < 12:
            assert time.monotonic() < deadline, "not every initiator logged in"
            time.sleep(0.1)
        time.sleep(1)
        began = time.monotonic()
        stop = node.tgtd("stop")
        took = time.monotonic() - began
    finally:
        for loader in loaders:
            loader.kill()
            loader.wait()
        log.close()
    assert stop.rc == 0, stop
    assert node.pids() == [] and node.leftovers() == []
    report(f"tgtd stop with 6 targets, 12 LUNs, 12 iscsi-perf sessions: {took:.2f} s")
    assert took < 2.0


@pytest.mark.skipif(shutil.which("qemu-io") is None, reason="qemu-utils not installed")
def test_in_the_normal_order_restarting_tgtd_costs_initiators_a_pause_never_an_error(node, report):
    """Group stop (block, LUNs, target, VIP stays), tgtd stop and start, group start (unblock),
    three times, under verified qemu-io writes: no error reaches the initiator."""
    sys.path.insert(0, str(REPO / "lab"))
    from initiators import Lun, LunInitiator
    target = {"iqn": IQN.format(1), "portals": f"{NODE_IP}:3260", "allowed_initiators": CLIENT_IP}
    luns = [{"target_iqn": target["iqn"], "lun": str(n), "path": backing_file(node, f"n{n}.img")}
            for n in (1, 2)]
    block = {"protocol": "tcp", "portno": "3260", "ip": NODE_IP, "method": "reject", "direction": "both"}

    def group(action: str) -> None:
        members = [("portblock", {**block, "action": "block"}), ("iSCSITarget", target),
                   *[("iSCSILogicalUnit", lun) for lun in luns], ("portblock", {**block, "action": "unblock"})]
        for agent, params in (members if action == "start" else reversed(members)):
            result = node.agent(agent, action, params)
            assert result.rc == 0, (agent, action, result)

    assert node.tgtd("start").rc == 0
    group("start")
    secret = node.tmp_path / "no-secret"
    secret.write_text("unused")
    initiators = [LunInitiator(Lun("t1", target["iqn"], NODE_IP, n), node.client.name, "", secret, 0.02, n)
                  for n in (1, 2)]
    for initiator in initiators:
        initiator.argv = _without_chap(initiator.argv)
        initiator.start()
    try:
        _wait(lambda: all(len(i.log.completions) > 20 for i in initiators), 30)
        for _ in range(3):
            group("stop")
            assert node.tgtd("stop").rc == 0 and node.pids() == []
            time.sleep(0.5)
            assert node.tgtd("start").rc == 0
            group("start")
            resumed_after = time.monotonic()
            _wait(lambda: all(i.log.last_completion() > resumed_after for i in initiators), 60)
    finally:
        for initiator in initiators:
            initiator.stop()
    errors = [e for i in initiators for e in i.log.errors + i.log.mismatches]
    report(f"tgtd restarted 3 times in the normal order under qemu-io writes: "
           f"{sum(len(i.log.completions) for i in initiators)} verified I/Os, {len(errors)} errors")
    assert errors == []
    assert all(i.log.last_completion() > resumed_after for i in initiators)


def _without_chap(argv_method):
    def argv() -> list[str]:
        return [a if not a.startswith("driver=iscsi") else
                ",".join(p for p in a.split(",") if not p.startswith(("user=", "password-secret=")))
                for a in argv_method()]
    return argv


def _wait(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# ------------------------------------------------------------ the exit watcher
#
# The watcher's process life (spawned beside tgtd, woken by its exit, ended by
# stop, made again by a monitor) with the real tgtd. Pacemaker's side (the
# failure reported with crm_resource --fail, the recovery it starts) is proven
# in the lab's kill-tgtd scenario with a real cluster; here crm_mon and
# crm_resource are stand-ins that answer with crm_mon 2.1.5's own output
# (captured from the lab) and record how they were called.

def _crm_mon_xml(managed: str, node_name: str = "node1") -> str:
    """crm_mon --output-as=xml of 2.1.5, cut to what the watcher reads: the tgtd clone's
    instance on ``node_name`` with crm_mon's managed flag (false in maintenance of the
    cluster, of the node or of the resource, and when unmanaged)."""
    return f"""<pacemaker-result api-version="2.25" request="crm_mon -1 --output-as=xml">
  <resources>
    <clone id="cl_tgtd" multi_state="false" unique="false" managed="true" disabled="false" failed="false" failure_ignored="false">
      <resource id="p_tgtd" resource_agent="ocf:tgtha:tgtd" role="Started" active="true" orphaned="false" blocked="false" managed="{managed}" failed="false" failure_ignored="false" nodes_running_on="1">
        <node name="{node_name}" id="1" cached="true"/>
      </resource>
      <resource id="p_tgtd" resource_agent="ocf:tgtha:tgtd" role="Started" active="true" orphaned="false" blocked="false" managed="true" failed="false" failure_ignored="false" nodes_running_on="1">
        <node name="other" id="2" cached="true"/>
      </resource>
    </clone>
  </resources>
  <status code="0" message="OK"/>
</pacemaker-result>
"""


class Pacemaker:
    """crm_mon and crm_resource stand-ins on PATH: what the watcher asked, what it was told."""

    def __init__(self, tmp_path: Path, managed: str = "true") -> None:
        self.dir = tmp_path / "pacemaker-tools"
        self.dir.mkdir()
        self.calls = self.dir / "calls"
        self.log = tmp_path / "ha.log"
        (self.dir / "crm_mon.xml").write_text(_crm_mon_xml(managed))
        for tool, body in (("crm_mon", f'cat "{self.dir}/crm_mon.xml"'), ("crm_resource", "true")):
            script = self.dir / tool
            script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{self.calls}"\n{body}\n')
            script.chmod(0o755)

    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.dir}:/usr/sbin:/usr/bin:/sbin:/bin", "HA_LOGFILE": str(self.log)}

    def asked(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


_watched_netns: set[int] = set()     # the test nodes' network namespaces (a lab may run beside)


def _watcher_pids() -> list[int]:
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            netns = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue
        if netns in _watched_netns and "tgtha.tgtd_watch" in _cmdline(pid):
            found.append(int(pid))
    return found


def _in_cluster(node: Node, pacemaker: Pacemaker, action: str, **params: str) -> AgentRun:
    """An action as pacemaker-execd runs it: with the node's name."""
    _watched_netns.add(os.stat(f"/run/netns/{node.ns.name}").st_ino)
    return run_agent("tgtd", action, {**node.params, **params}, ns=node.ns, state=node.state,
                     instance="p_tgtd", meta={"on_node": "node1", "interval": "1000"}, env=pacemaker.env())


@pytest.fixture
def no_watchers_left():
    before = set(_watcher_pids())
    yield
    _wait(lambda: set(_watcher_pids()) <= before, 5)
    assert set(_watcher_pids()) <= before


def test_a_killed_tgtd_is_reported_to_pacemaker_at_once(node, tmp_path, no_watchers_left):
    pacemaker = Pacemaker(tmp_path)
    assert _in_cluster(node, pacemaker, "start").rc == 0
    [watcher] = _watcher_pids()
    # It holds nothing of the agent's (pacemaker-execd waits for the end of its pipes):
    # /dev/null, tgtd's pidfd, and at most a module file it is still reading.
    held = {fd: os.readlink(f"/proc/{watcher}/fd/{fd}") for fd in os.listdir(f"/proc/{watcher}/fd")}
    assert [held[fd] for fd in ("0", "1", "2", "3")] == ["/dev/null"] * 3 + ["anon_inode:[pidfd]"], held
    assert not [target for target in held.values() if target.startswith(("pipe:", "socket:"))], held
    assert pacemaker.asked() == []
    [tgtd] = node.pids()
    os.kill(tgtd, signal.SIGKILL)
    began = time.monotonic()
    _wait(lambda: any(call.startswith("crm_resource") for call in pacemaker.asked()), 5)
    took = time.monotonic() - began
    assert pacemaker.asked() == ["crm_mon --one-shot --output-as=xml",
                                 "crm_resource --fail --resource p_tgtd --node node1"]
    assert took < 1.5, took          # the stand-ins' time; the lab measures it with Pacemaker
    assert f"tgtd (pid {tgtd}) exited unexpectedly: reported to Pacemaker" in pacemaker.log.read_text()
    _wait(lambda: not _watcher_pids(), 5)
    assert _in_cluster(node, pacemaker, "stop").rc == 0 and node.leftovers() == []


def test_nothing_is_reported_while_the_resource_is_in_maintenance_or_unmanaged(node, tmp_path, no_watchers_left):
    """maintenance-mode, node maintenance, resource maintenance, is-managed=false: crm_mon 2.1.5
    shows each as managed="false" on the instance (captured in the lab); Pacemaker runs no
    monitor in maintenance, and a failure recorded then would restart the node's targets
    when maintenance ends."""
    pacemaker = Pacemaker(tmp_path, managed="false")
    assert _in_cluster(node, pacemaker, "start").rc == 0
    [tgtd] = node.pids()
    os.kill(tgtd, signal.SIGKILL)
    _wait(lambda: not _watcher_pids(), 5)
    assert pacemaker.asked() == ["crm_mon --one-shot --output-as=xml"]
    assert "not managed on node1" in pacemaker.log.read_text()
    assert _in_cluster(node, pacemaker, "stop").rc == 0


def test_a_stop_ends_the_watcher_first_and_reports_nothing(node, tmp_path, no_watchers_left):
    pacemaker = Pacemaker(tmp_path)
    assert _in_cluster(node, pacemaker, "start").rc == 0
    assert len(_watcher_pids()) == 1
    assert _in_cluster(node, pacemaker, "stop").rc == 0
    assert node.pids() == [] and _watcher_pids() == []
    time.sleep(0.3)
    assert pacemaker.asked() == []


def test_a_monitor_brings_back_a_missing_watcher_and_a_restart_watches_the_new_tgtd(node, tmp_path,
                                                                                   no_watchers_left):
    pacemaker = Pacemaker(tmp_path)
    assert _in_cluster(node, pacemaker, "start").rc == 0
    [first] = _watcher_pids()
    assert _in_cluster(node, pacemaker, "monitor").rc == 0
    assert _watcher_pids() == [first]                        # one is enough
    os.kill(first, signal.SIGKILL)
    _wait(lambda: not _watcher_pids(), 5)
    assert _in_cluster(node, pacemaker, "monitor").rc == 0
    [second] = _watcher_pids()
    assert second != first
    # A probe (interval 0) only looks.
    os.kill(second, signal.SIGKILL)
    _wait(lambda: not _watcher_pids(), 5)
    probe = run_agent("tgtd", "monitor", node.params, ns=node.ns, state=node.state, instance="p_tgtd",
                      meta={"on_node": "node1", "interval": "0"}, env=pacemaker.env())
    assert probe.rc == 0 and _watcher_pids() == []
    assert pacemaker.asked() == []
    assert _in_cluster(node, pacemaker, "stop").rc == 0


def test_no_watcher_outside_pacemaker_or_when_switched_off(node, tmp_path, no_watchers_left):
    pacemaker = Pacemaker(tmp_path)
    _watched_netns.add(os.stat(f"/run/netns/{node.ns.name}").st_ino)
    assert node.tgtd("start").rc == 0                       # no node name: ocf-tester, by hand
    assert _watcher_pids() == []
    assert node.tgtd("stop").rc == 0
    assert _in_cluster(node, pacemaker, "start", watch_exit="false").rc == 0
    assert _in_cluster(node, pacemaker, "monitor", watch_exit="false").rc == 0
    assert _watcher_pids() == []
    assert _in_cluster(node, pacemaker, "stop", watch_exit="false").rc == 0
    assert node.tgtd("validate-all", watch_exit="maybe").rc == 6


def test_a_watcher_that_cannot_be_started_fails_no_action(node, tmp_path, no_watchers_left):
    """The watcher is a helper: where it cannot run (here its state directory is a file),
    start, monitor and stop still answer for tgtd alone, with a warning."""
    pacemaker = Pacemaker(tmp_path)
    (node.state / "tgtha").write_text("not a directory")
    for action in ("start", "monitor"):
        result = _in_cluster(node, pacemaker, action)
        assert result.rc == 0 and "exit watcher could not be started" in result.stderr, (action, result)
    assert _watcher_pids() == []
    assert _in_cluster(node, pacemaker, "stop").rc == 0 and node.pids() == []
