"""README's crm and pcs examples run as printed, so they cannot rot.

Every top-level ``crm configure ...`` and ``pcs ...`` line of README's shell
blocks (continuations joined) is run against a CIB file, as an administrator
would against a cluster: crmsh with ``CIB_file``, pcs with ``-f``. The
examples are spread over the agents' sections, each showing its own part, so
resources are made before the groups, clones and constraints that name them.
The result must be a CIB that Pacemaker itself accepts (``crm_verify``).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("crm", "pcs", "cibadmin", "crm_verify")),
                                reason="crmsh, pcs or pacemaker-cli-utils not installed")


def readme_commands(tool: str) -> list[str]:
    """Every command line of ``tool`` at the start of a line in README's ```sh blocks."""
    commands, in_block, pending = [], False, ""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            in_block, pending = line == "```sh", ""
            continue
        if not in_block:
            continue
        if pending:
            pending += " " + line.strip()
        elif line.startswith(tool + " "):
            pending = line
        else:
            continue
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
        else:
            command = re.sub(r"\s+#.*$", "", pending)
            if command not in commands:          # the same line shown in two sections runs once
                commands.append(command)
            pending = ""
    return commands


def empty_cib(tmp_path) -> str:
    """An empty CIB without fencing and quorum: the examples leave the fencing device
    to the site, and a CIB file has no cluster (crmsh's check of each change complains
    of both otherwise)."""
    cib = tmp_path / "cib.xml"
    cib.write_text(subprocess.run(["cibadmin", "--empty"], capture_output=True, text=True, check=True).stdout)
    for name, value in (("stonith-enabled", "false"), ("no-quorum-policy", "ignore")):
        subprocess.run(["crm_attribute", "-t", "crm_config", "-n", name, "-v", value],
                       env={**os.environ, "CIB_file": str(cib)}, check=True, capture_output=True)
    return str(cib)


def verified(cib: str) -> None:
    """Pacemaker's own check of the result."""
    result = subprocess.run(["crm_verify", "-V", "-x", cib], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module", autouse=True)
def installed(agents_installed):
    """The agents where crmsh, pcs and crm_verify look for them."""


def test_the_readme_has_crm_and_pcs_examples():
    assert len(readme_commands("crm")) >= 12 and len(readme_commands("pcs")) >= 8


def test_every_crm_example_loads_and_the_result_verifies(tmp_path):
    cib = empty_cib(tmp_path)
    first = ("primitive",), ("clone", "group")
    commands = readme_commands("crm")
    ordered = [c for kinds in first for c in commands if shlex.split(c)[2] in kinds]
    ordered += [c for c in commands if c not in ordered]
    for command in ordered:
        result = subprocess.run(["crm", *shlex.split(command)[1:]], env={**os.environ, "CIB_file": cib},
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "ERROR" not in result.stderr, (command, result.stderr)
    verified(cib)


def test_every_pcs_example_runs_and_the_result_verifies(tmp_path):
    cib = empty_cib(tmp_path)
    commands = readme_commands("pcs")
    ordered = [c for c in commands if shlex.split(c)[1:3] == ["resource", "create"]]
    ordered += [c for c in commands if c not in ordered]
    for command in ordered:
        result = subprocess.run(["pcs", "-f", cib, *shlex.split(command)[1:]], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, (command, result.stderr)
    verified(cib)
