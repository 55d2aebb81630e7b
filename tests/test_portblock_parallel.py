"""50 portblock instances started, then stopped, all at once: nothing fails, nothing is lost."""
from __future__ import annotations

import subprocess

import pytest

from conftest import AGENTS, agent_env, needs_root

pytestmark = needs_root

INSTANCES = 50


def run_all(ns, state_dir, firewall: str, action: str) -> list[tuple[int, str]]:
    procs = []
    for i in range(INSTANCES):
        params = {"protocol": "tcp", "portno": str(3300 + i), "ip": f"10.78.{i // 250}.{i % 250 + 1}",
                  "action": "block", "firewall": firewall, "direction": "both" if i % 2 else "in",
                  "method": "reject" if i % 3 else "drop"}
        procs.append(subprocess.Popen(ns.exec_argv(str(AGENTS / "portblock"), action),
                                      env=agent_env(state_dir, f"pb{i}", params, {"timeout": "120000"}),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return [(p.wait(180), p.stderr.read()) for p in procs]


def expected_rules() -> int:
    return sum(2 if i % 2 else 1 for i in range(INSTANCES))


@pytest.mark.parametrize("firewall", ["iptables", "iptables-legacy", "nft", "python-iptables"])
def test_fifty_parallel_starts_then_stops(netns, state_dir, firewall):
    started = run_all(netns, state_dir, firewall, "start")
    assert [err for rc, err in started if rc != 0] == []
    assert sum("tgtha-portblock:" in line for line in netns.iptables_save().splitlines()) == expected_rules()
    stopped = run_all(netns, state_dir, firewall, "stop")
    assert [err for rc, err in stopped if rc != 0] == []
    assert "tgtha-portblock:" not in netns.iptables_save()
