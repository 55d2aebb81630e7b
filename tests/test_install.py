"""make install puts runnable agents where Pacemaker looks for ocf:tgtha:*."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import AGENTS, REPO

AGENT_NAMES = sorted(p.name for p in AGENTS.iterdir() if p.is_file())


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``make install DESTDIR=...`` once for this module's tests."""
    root = tmp_path_factory.mktemp("destdir")
    subprocess.run(["make", "-C", str(REPO), "install", f"DESTDIR={root}"], check=True, capture_output=True)
    return root


def test_installed_agent_runs_from_its_own_library(installed):
    agent = installed / "usr/lib/ocf/resource.d/tgtha/portblock"
    assert (installed / "usr/lib/ocf/lib/tgtha/portblock.py").exists()
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


def executed_programs(argv: list[str], env: dict[str, str]) -> tuple[str, list[str]]:
    """What ``argv`` prints, and every program it executes (strace)."""
    trace = subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve", "-e", "signal=none", *argv],
                           env=env, capture_output=True, text=True, check=True)
    programs = [line.split('"')[1] for line in trace.stderr.splitlines()
                if "execve(" in line and "= 0" in line]
    return trace.stdout, programs


def test_every_agent_prints_its_metadata_with_no_python_installed_or_not(installed):
    # Pacemaker 2.1's controller refreshes an agent's metadata before each start
    # and waits for it: a Python start-up there lengthens every failover.
    env = {"OCF_ROOT": "/usr/lib/ocf", "PATH": "/bin:/usr/bin"}
    for agent in sorted((REPO / "agents").iterdir()):
        expected = (REPO / "metadata" / f"{agent.name}.xml").read_text()
        for path in (agent, installed / "usr/lib/ocf/resource.d/tgtha" / agent.name):
            out, programs = executed_programs([str(path), "meta-data"], env)   # rc 0, or it raises
            assert f'<resource-agent name="{agent.name}"' in out
            assert out == expected
            assert programs[-1] == "/bin/cat", programs  # not an interpreter: the file itself


def test_meta_data_falls_back_to_python_when_the_file_is_not_beside_the_agent(tmp_path):
    link = tmp_path / "portblock"  # a symlink: sh looks beside the link, Python beside its target
    link.symlink_to(REPO / "agents" / "portblock")
    out, programs = executed_programs([str(link), "meta-data"],
                                      {"OCF_ROOT": "/usr/lib/ocf", "PATH": "/bin:/usr/bin"})
    assert out == (REPO / "metadata" / "portblock.xml").read_text()
    assert any(Path(p).name.startswith("python") for p in programs)


@pytest.mark.skipif(shutil.which("pcs") is None, reason="pcs not installed")
def test_pcs_takes_a_stock_iscsilogicalunit_parameter_set_without_force(tmp_path, agents_installed):
    cib = tmp_path / "cib.xml"
    cib.write_text(subprocess.run(["cibadmin", "--empty"], capture_output=True, text=True, check=True).stdout)

    def create(name: str, *params: str) -> subprocess.CompletedProcess:
        return subprocess.run(["pcs", "-f", str(cib), "resource", "create", name, "ocf:tgtha:iSCSILogicalUnit",
                               "implementation=tgt", "target_iqn=iqn.2026-12.test:t", "path=/dev/null",
                               *params, "--no-default-ops"], capture_output=True, text=True)

    stock = create("lun1", "lun=1", "lio_iblock=0", "liot_bstype=block", "allowed_initiators=iqn.2026-12.test:i")
    assert stock.returncode == 0, stock.stderr
    unknown = create("lun2", "lun=2", "no_such_parameter=1")      # the control: pcs does check
    assert unknown.returncode != 0 and "no_such_parameter" in unknown.stderr


def test_make_install_puts_a_man_page_for_every_agent_that_renders_and_lists_every_parameter(installed):
    from lxml import etree
    for agent in sorted((REPO / "agents").iterdir()):
        page = installed / "usr/share/man/man7" / f"ocf_tgtha_{agent.name}.7"
        shown = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True,
                               env={"PATH": "/usr/bin:/bin", "MANWIDTH": "100", "LANG": "C.UTF-8"})
        assert shown.returncode == 0 and shown.stderr == "", (agent.name, shown.stderr)
        assert f"ocf_tgtha_{agent.name} - " in shown.stdout
        metadata = etree.parse(str(REPO / "metadata" / f"{agent.name}.xml")).getroot()
        for parameter in metadata.iter("parameter"):
            assert f"\n       {parameter.get('name')}" in shown.stdout, (agent.name, parameter.get("name"))
        for action in metadata.iter("action"):
            assert f"\n       {action.get('name')} " in shown.stdout, (agent.name, action.get("name"))
        reloadable = sum(1 for p in metadata.iter("parameter") if p.get("reloadable") == "1")
        assert shown.stdout.count("reloadable: a change is applied") == reloadable, agent.name


# What crm_resource --validate runs (validate-all, as the cluster would) and what it must answer.
VALIDATE_CASES = [
    ("tgtd", {}, 0),
    ("tgtd", {"control_port": "x1"}, 6),
    ("portblock", {"protocol": "tcp", "portno": "3260", "action": "block", "ip": "192.0.2.1"}, 0),
    ("portblock", {"protocol": "tcp", "portno": "99999", "action": "block"}, 6),
    ("IPaddr2", {"ip": "192.0.2.10", "cidr_netmask": "24"}, 0),
    ("IPaddr2", {"ip": "192.0.2.300"}, 6),
    ("iSCSITarget", {"iqn": "iqn.2026-12.test:t1"}, 0),
    ("iSCSITarget", {"iqn": "not-an-iqn"}, 6),
    ("iSCSILogicalUnit", {"target_iqn": "iqn.2026-12.test:t1", "lun": "1", "path": "/dev/null"}, 0),
    ("iSCSILogicalUnit", {"target_iqn": "iqn.2026-12.test:t1", "lun": "x", "path": "/dev/null"}, 6),
    ("tgtuser", {"username": "cluster", "password": "a-long-enough-secret"}, 0),
    ("tgtuser", {"username": "a,b", "password": "a-long-enough-secret"}, 6),
]


@pytest.mark.skipif(shutil.which("crm_resource") is None, reason="pacemaker-cli-utils not installed")
@pytest.mark.parametrize("agent, params, rc", VALIDATE_CASES,
                         ids=[f"{a}-{'good' if rc == 0 else 'bad'}" for a, _, rc in VALIDATE_CASES])
def test_crm_resource_validate_answers_0_for_good_parameters_and_6_for_bad(agent, params, rc,
                                                                          agents_installed):
    """Pacemaker's own validation entry point, without a cluster: the installed agent's validate-all."""
    argv = ["crm_resource", "--validate", "--class", "ocf", "--provider", "tgtha", "--agent", agent]
    for name, value in params.items():
        argv += ["--option", f"{name}={value}"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == rc, result.stdout + result.stderr
    assert "a-long-enough-secret" not in result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("pcs") is None or shutil.which("crm") is None, reason="pcs or crmsh not installed")
@pytest.mark.parametrize("agent", AGENT_NAMES)
def test_pcs_and_crmsh_describe_every_installed_agent_without_a_warning(agent, agents_installed):
    pcs = subprocess.run(["pcs", "resource", "describe", f"ocf:tgtha:{agent}"], capture_output=True, text=True)
    assert pcs.returncode == 0 and "Warning" not in pcs.stdout + pcs.stderr, pcs.stdout + pcs.stderr
    crm = subprocess.run(["crm", "ra", "info", f"ocf:tgtha:{agent}"], capture_output=True, text=True)
    assert crm.returncode == 0 and "WARNING" not in crm.stdout + crm.stderr.upper(), crm.stdout + crm.stderr
    assert agent in crm.stdout
