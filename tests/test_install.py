"""make install puts runnable agents where Pacemaker looks for ocf:tgtha:*."""
from __future__ import annotations

import subprocess

from conftest import REPO


def test_installed_agent_runs_from_its_own_library(tmp_path):
    subprocess.run(["make", "-C", str(REPO), "install", f"DESTDIR={tmp_path}"], check=True,
                   capture_output=True)
    agent = tmp_path / "usr/lib/ocf/resource.d/tgtha/portblock"
    assert (tmp_path / "usr/lib/ocf/lib/tgtha/portblock.py").exists()
    env = {"OCF_ROOT": "/usr/lib/ocf", "PATH": "/bin:/usr/bin"}  # pcs runs agents with this PATH
    meta = subprocess.run([str(agent), "meta-data"], env=env, capture_output=True, text=True)
    assert meta.returncode == 0 and '<resource-agent name="portblock"' in meta.stdout
    bad = subprocess.run([str(agent), "validate-all"], env={**env, "OCF_RESKEY_protocol": "icmp"},
                         capture_output=True, text=True)
    assert bad.returncode == 6 and "protocol" in bad.stderr
    probe = subprocess.run([str(agent), "validate-all"],
                           env={**env, "OCF_RESKEY_protocol": "tcp", "OCF_RESKEY_portno": "3260",
                                "OCF_RESKEY_action": "block"}, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr


def test_every_installed_agent_prints_its_metadata(tmp_path):
    subprocess.run(["make", "-C", str(REPO), "install", f"DESTDIR={tmp_path}"], check=True,
                   capture_output=True)
    env = {"OCF_ROOT": "/usr/lib/ocf", "PATH": "/bin:/usr/bin"}
    for agent in sorted((REPO / "agents").iterdir()):
        installed = tmp_path / "usr/lib/ocf/resource.d/tgtha" / agent.name
        meta = subprocess.run([str(installed), "meta-data"], env=env, capture_output=True, text=True)
        assert meta.returncode == 0 and f'<resource-agent name="{agent.name}"' in meta.stdout
