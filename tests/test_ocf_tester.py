"""resource-agents' ocf-tester passes for every portblock flavour and leaves no rule behind."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import AGENTS, needs_root, run_agent

pytestmark = [needs_root, pytest.mark.skipif(shutil.which("ocf-tester") is None, reason="no ocf-tester")]


@pytest.mark.parametrize("options", [
    {"action": "block"},
    {"action": "unblock"},
    {"action": "block", "method": "reject", "direction": "out"},
    {"action": "unblock", "direction": "both", "firewall": "nft", "status_check": "rule"},
    {"action": "block", "ip": "fd00:77::1", "firewall": "iptables"},
])
def test_ocf_tester_passes(netns, state_dir, options):
    params = {"protocol": "tcp", "portno": "3260", "ip": "10.77.0.1", **options}
    argv = netns.exec_argv("ocf-tester", "-v", "-n", "pb-tester",
                           *[arg for k, v in params.items() for arg in ("-o", f"{k}={v}")], str(AGENTS / "portblock"))
    result = subprocess.run(argv, capture_output=True, text=True,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HA_RSCTMP": str(state_dir),
                                 "OCF_ROOT": "/usr/lib/ocf"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed all tests" in result.stdout
    family = 6 if ":" in params["ip"] else 4
    if params["action"] == "unblock":
        # A stopped unblock instance is a blocked port, by definition; its block
        # partner's stop (last in the group) removes the rule.
        rules = [line for line in netns.iptables_save(family).splitlines() if "tgtha-portblock:" in line]
        assert len(rules) == (2 if params.get("direction") == "both" else 1)
        partner = {**params, "action": "block"}
        assert run_agent("portblock", "stop", partner, ns=netns, state=state_dir).rc == 0
    assert "tgtha-portblock:" not in netns.iptables_save(family)
