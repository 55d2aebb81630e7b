"""An action imports only what it needs: on a failover dozens of agents start at
once, and a heavy standard module (tempfile pulls in shutil, re, random ...) costs
more CPU than the work itself. Checked with Python's own import log."""
from __future__ import annotations

import subprocess

import pytest

from conftest import AGENTS, agent_env, needs_root, veth_pair

pytestmark = needs_root

# Each of these cost 4-18 ms of CPU to import here (python3 -X importtime).
HEAVY = {"tempfile", "shutil", "typing", "hashlib", "_hashlib", "re", "subprocess", "shlex", "random",
         "logging", "json", "ipaddress", "socket", "enum", "argparse", "datetime"}


def imported(ns, state, agent: str, action: str, params: dict[str, str], meta=None) -> set[str]:
    argv = ns.exec_argv("/usr/bin/python3", "-IS", "-X", "importtime", str(AGENTS / agent), action)
    run = subprocess.run(argv, env=agent_env(state, "rsc", params, meta), capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, (agent, action, run.stderr[-2000:])
    modules = {line.rpartition("|")[2].strip() for line in run.stderr.splitlines()
               if line.startswith("import time:")}
    assert "os" in modules, "no import log: the check is broken"
    return modules


def test_portblock_and_ipaddr2_actions_import_nothing_heavy(make_netns, state_dir, tmp_path):
    node, client = make_netns("node"), make_netns("client")
    nic, _ = veth_pair(node, client, "10.83.0.1/24", "10.83.0.2/24")
    tickles = tmp_path / "tickles"
    tickles.mkdir()
    (tickles / "10.83.0.1").write_text("10.83.0.1:3260 10.83.0.2:40001\n")
    block = {"protocol": "tcp", "portno": "3260", "ip": "10.83.0.1", "method": "silent",
             "direction": "both", "action": "block"}
    unblock = {**block, "action": "unblock", "tickle_dir": str(tickles)}
    vip = {"ip": "10.83.0.10", "cidr_netmask": "24", "nic": nic}
    for agent, params in (("portblock", block), ("portblock", unblock), ("IPaddr2", vip)):
        for action, meta in (("start", None), ("monitor", {"interval": "10000"}), ("stop", None)):
            heavy = imported(node, state_dir, agent, action, params, meta) & HEAVY
            assert not heavy, (agent, params.get("action"), action, heavy)


def test_tgt_agents_actions_import_nothing_heavy(iscsi_lab):
    lab = iscsi_lab
    port = {"control_port": str(lab.tgtd.control_port)}
    backing = lab.make_backing_file("cost.img")
    account = {**port, "username": "cost", "password": "Cost-Secret-0123"}
    target = {**port, "iqn": "iqn.2026-12.test.tgtha:cost", "tid": "5", "incoming_username": "cost",
              "allowed_initiators": lab.CLIENT_IP, "portals": f"{lab.TARGET_IP}:3260"}
    lun = {**port, "target_iqn": target["iqn"], "lun": "1", "path": str(backing)}
    steps = [("tgtuser", account), ("iSCSITarget", target), ("iSCSILogicalUnit", lun)]
    for agent, params in steps:
        for action, meta in (("start", None), ("monitor", {"interval": "10000"})):
            heavy = imported(lab.node, lab.state, agent, action, params, meta) & HEAVY
            assert not heavy, (agent, action, heavy)
    for agent, params in reversed(steps):
        heavy = imported(lab.node, lab.state, agent, "stop", params) & HEAVY
        assert not heavy, (agent, "stop", heavy)
    # the tgtd agent itself, on a second control port and portal of the same node
    daemon = {"control_port": str(lab.tgtd.control_port + 7), "log_file": str(lab.tmp_path / "tgtd2.log"),
              "tgtd_options": f"--iscsi portal={lab.TARGET_IP}:3261"}
    try:
        for action, meta in (("start", None), ("monitor", {"interval": "2000"})):
            heavy = imported(lab.node, lab.state, "tgtd", action, daemon, meta) & HEAVY
            assert not heavy, ("tgtd", action, heavy)
    finally:
        heavy = imported(lab.node, lab.state, "tgtd", "stop", daemon) & HEAVY
    assert not heavy, ("tgtd", "stop", heavy)


def test_the_check_sees_a_heavy_import():
    """Negative control: the import log does show a module that is imported."""
    run = subprocess.run(["/usr/bin/python3", "-IS", "-X", "importtime", "-c", "import tempfile"],
                         capture_output=True, text=True, check=True)
    assert "tempfile" in {line.rpartition("|")[2].strip() for line in run.stderr.splitlines()}


def test_split_words_splits_exactly_as_shlex_does():
    """proc.split_words skips shlex for plain words: the same answer, always."""
    import random
    import shlex

    from tgtha.proc import split_words
    alphabet = "ab=-:./ \t\n\r\x0b\x0c\x1f'\"\\#é\u2028"
    rng = random.Random(20261202)
    for _ in range(5000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        try:
            expected = shlex.split(value)
        except ValueError:
            with pytest.raises(ValueError):
                split_words(value)
            continue
        assert split_words(value) == expected, repr(value)
