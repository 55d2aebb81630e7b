"""resource-agents' ocft, the field's own test tool for agents, on every tgtha
agent (configurations in tests/ocft/, run against this checkout), and the stock
portblock configuration against our portblock.

Each run has a network namespace of its own (the agents change firewall rules,
addresses and tgtd's portal there) and a private HA_RSCTMP.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import AGENTS, REPO, needs_root, sh

pytestmark = [needs_root, pytest.mark.skipif(shutil.which("ocft") is None, reason="resource-agents not installed")]

CONFIGS = REPO / "tests" / "ocft"
STOCK_PORTBLOCK = Path("/usr/share/resource-agents/ocft/configs/portblock")
CONTROL_PORT = 9000 + os.getpid() % 5000


def run_ocft(netns, state: Path, config_dir: Path, agent: str) -> str:
    """``ocft make`` then ``ocft test`` for one agent; returns what ocft printed.
    ocft keeps its generated cases in one system directory: they are made anew."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HA_RSCTMP": str(state), "OCF_ROOT": "/usr/lib/ocf"}
    sh("ocft", "clean", agent)
    made = subprocess.run(netns.exec_argv("ocft", "make", "-d", str(config_dir), agent), env=env,
                          capture_output=True, text=True)
    assert made.returncode == 0 and "ERROR" not in made.stderr, made.stdout + made.stderr
    ran = subprocess.run(netns.exec_argv("ocft", "test", agent), env=env, capture_output=True, text=True,
                         timeout=900)
    out = re.sub(r"\x1b\[[0-9;]*m", "", ran.stdout + ran.stderr)     # ocft colours its verdicts
    assert ran.returncode == 0 and "FAILED" not in out and "ERROR" not in out, out
    sh("ocft", "clean", agent)
    return out


def configured(agent: str, tmp_path: Path) -> Path:
    """tests/ocft/<agent> with this run's paths and control ports filled in."""
    text = (CONFIGS / agent).read_text()
    for placeholder, value in (("@AGENTS@", str(AGENTS)), ("@WORK@", str(tmp_path)),
                               ("@PORT@", str(CONTROL_PORT)), ("@OTHER_PORT@", str(CONTROL_PORT + 1))):
        text = text.replace(placeholder, value)
    directory = tmp_path / "ocft-configs"
    directory.mkdir()
    (directory / agent).write_text(text)
    return directory


@pytest.mark.parametrize("agent", sorted(p.name for p in CONFIGS.iterdir()))
def test_ocft_passes_every_case_of_our_configuration(agent, netns, state_dir, tmp_path, report):
    out = run_ocft(netns, state_dir, configured(agent, tmp_path), agent)
    checks = out.count("OK.")
    assert checks >= 8, out
    report(f"ocft {agent}: {checks} checked return codes, 0 failed")


@pytest.mark.skipif(not STOCK_PORTBLOCK.exists(), reason="resource-agents' ocft configs not installed")
def test_the_stock_portblock_ocft_configuration_passes_against_ours(netns, state_dir, tmp_path, report):
    """Theirs as shipped, but for where the agent is (and no package install in each case)."""
    directory = tmp_path / "stock"
    directory.mkdir()
    lines = [line.replace("/usr/lib/ocf/resource.d/heartbeat", str(AGENTS))
             for line in STOCK_PORTBLOCK.read_text().splitlines() if "InstallPackage" not in line]
    assert any(str(AGENTS) in line for line in lines), "the stock configuration changed: AgentRoot not found"
    (directory / "portblock").write_text("\n".join(lines) + "\n")
    out = run_ocft(netns, state_dir, directory, "portblock")
    report(f"ocft, resource-agents' own portblock configuration against ours: {out.count('OK.')} checks passed")


def test_a_wrong_expectation_fails_the_check(netns, state_dir, tmp_path):
    """Negative control: ocft's verdict reaches this test."""
    directory = tmp_path / "wrong"
    directory.mkdir()
    (directory / "portblock").write_text(
        f"CONFIG\n\tAgent portblock\n\tAgentRoot {AGENTS}\n\tHangTimeout 20\n\n"
        "CASE \"a block that never started is not running, expected to run\"\n"
        "\tEnv OCF_RESKEY_protocol=tcp\n\tEnv OCF_RESKEY_portno=3260\n\tEnv OCF_RESKEY_action=block\n"
        "\tAgentRun monitor OCF_SUCCESS\n")
    with pytest.raises(AssertionError, match="FAILED"):
        run_ocft(netns, state_dir, directory, "portblock")
    sh("ocft", "clean", "portblock")
