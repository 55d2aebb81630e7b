"""make deb: a Debian package lintian accepts, that installs the agents as ocf:tgtha:* with
their man pages, that Pacemaker's tools read, and that a purge removes without a trace.

The package is really installed on this machine (dpkg -i), checked with crmsh and man,
and purged; `make install` then puts the checkout's agents back for the other tests
(so nothing else may use the installed agents meanwhile: no lab beside the tests).
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import REPO, needs_root

pytestmark = [needs_root, pytest.mark.skipif(
    not all(shutil.which(t) for t in ("dpkg-buildpackage", "dh", "lintian", "crm", "man")),
    reason="debhelper, lintian, crmsh or man-db not installed (make deps)")]

# What the agents need at run time; the tests' and the lab's packages must not be here.
NOT_RUN_TIME = ("pytest", "matplotlib", "qemu", "libiscsi", "corosync", "lxml", "hyperfine", "open-iscsi")


def run(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)


def test_make_deb_builds_installs_and_purges_cleanly(report):
    build = run("make", "-C", str(REPO), "deb")
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    lintian = [line for line in (build.stdout + build.stderr).splitlines() if line[:2] in ("E:", "W:")]
    assert not [line for line in lintian if line.startswith("E:")], lintian
    debs = sorted((REPO / "build" / "deb").glob("tgtha_*_all.deb"))
    assert len(debs) == 1
    deb = str(debs[0])
    depends = run("dpkg-deb", "-f", deb, "Depends").stdout
    assert "tgt" in depends and not any(name in depends for name in NOT_RUN_TIME), depends
    paths = [line.split()[-1].lstrip(".") for line in run("dpkg-deb", "-c", deb).stdout.splitlines()]
    files = [p for p in paths if not p.endswith("/")]
    for agent in ("tgtd", "tgtuser", "iSCSITarget", "iSCSILogicalUnit", "portblock", "IPaddr2"):
        assert f"/usr/lib/ocf/resource.d/tgtha/{agent}" in files
        assert f"/usr/share/man/man7/ocf_tgtha_{agent}.7.gz" in files
    assert "/usr/sbin/tgtha-from-stock" in files
    try:
        install = run("dpkg", "-i", deb)
        assert install.returncode == 0, install.stdout + install.stderr
        info = run("crm", "ra", "info", "ocf:tgtha:iSCSITarget")
        assert info.returncode == 0 and "incoming_username" in info.stdout, info.stderr
        assert "WARNING" not in info.stderr and "ERROR" not in info.stderr, info.stderr
        page = run("man", "-P", "cat", "ocf_tgtha_iSCSITarget", env={**os.environ, "MANWIDTH": "100"})
        assert page.returncode == 0 and "incoming_username" in page.stdout
        assert run("man", "-P", "cat", "tgtha-from-stock").returncode == 0
        assert run("/usr/sbin/tgtha-from-stock", "--help").returncode == 0   # finds its installed library
    finally:
        purge = run("dpkg", "--purge", "tgtha")
        # Nothing: not a file, nor a directory of its own (the bytecode Python wrote included).
        left = [p for p in paths if os.path.lexists(p) and "tgtha" in p]
        subprocess.run(["make", "-C", str(REPO), "install"], check=True, capture_output=True)
    assert purge.returncode == 0, purge.stdout + purge.stderr
    assert left == []
    report(f"make deb: {os.path.basename(deb)}, {len(files)} files, lintian: 0 errors, "
           f"{sum(line.startswith('W:') for line in lintian)} warnings; installed, read by crm ra info and man, purged")
