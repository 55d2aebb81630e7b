"""Shared test fixtures: network namespaces, tgtd, running agents.

Everything here is real: namespaces made with iproute2, the real tgtd, the
agents run as Pacemaker would run them (environment variables, one action).
Tests that need root skip themselves elsewhere; CI runs as root.
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
AGENTS = REPO / "agents"
OCF_ROOT = "/usr/lib/ocf"
_counter = itertools.count()

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


def sh(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    # errors="replace": tgtd prints initiator names verbatim, bytes that are no UTF-8 included.
    return subprocess.run(argv, check=check, capture_output=True, text=True, errors="replace", **kw)


class Netns:
    """A network namespace of our own, with lo up; deleted at the end."""

    def __init__(self, name: str) -> None:
        self.name = name
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def exec_argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return sh(*self.exec_argv(*argv), check=check, **kw)

    def add_address(self, cidr: str, dev: str = "lo") -> None:
        self.run("ip", "addr", "add", cidr, "dev", dev)

    def iptables_save(self, family: int = 4) -> str:
        """Every rule of every backend, as text (legacy, nft-variant, native nft)."""
        v6 = "6" if family == 6 else ""
        parts = [self.run(f"ip{v6}tables-nft-save", check=False).stdout,
                 self.run(f"ip{v6}tables-legacy-save", check=False).stdout,
                 self.run("nft", "list", "ruleset", check=False).stdout]
        return "\n".join(parts)

    def delete(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)


def veth_pair(left: Netns, right: Netns, left_cidr: str, right_cidr: str) -> tuple[str, str]:
    """Connect two namespaces with a veth pair; returns the device names."""
    n = next(_counter)
    a, b = f"tv{os.getpid() % 10000}a{n}", f"tv{os.getpid() % 10000}b{n}"
    sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    sh("ip", "link", "set", a, "netns", left.name)
    sh("ip", "link", "set", b, "netns", right.name)
    left.run("ip", "addr", "add", left_cidr, "dev", a)
    right.run("ip", "addr", "add", right_cidr, "dev", b)
    left.run("ip", "link", "set", a, "up")
    right.run("ip", "link", "set", b, "up")
    return a, b


@pytest.fixture
def make_netns():
    made: list[Netns] = []

    def make(tag: str = "t") -> Netns:
        ns = Netns(f"tgtha-{tag}-{os.getpid()}-{next(_counter)}")
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.delete()


@pytest.fixture
def netns(make_netns) -> Netns:
    return make_netns()


@pytest.fixture(scope="session")
def agents_installed() -> None:
    """``make install`` into this machine's OCF root, once per test run: where
    Pacemaker's tools, pcs and crmsh look for ocf:tgtha:*."""
    subprocess.run(["make", "-C", str(REPO), "install"], check=True, capture_output=True)


@pytest.fixture
def state_dir(tmp_path) -> Path:
    """A private HA_RSCTMP, so tests never share agent state or locks with the host."""
    path = tmp_path / "rsctmp"
    path.mkdir()
    return path


@pytest.fixture
def unanswered_filesystem(tmp_path):
    """A directory whose server never answers, as a shared tickle_dir whose NFS
    server is away: a FUSE mount nobody serves. Every access to it (stat, open,
    read, write) waits; a killed process is let go. Unmounted (the waiters fail)
    at the end."""
    import ctypes
    mountpoint = tmp_path / "unanswered"
    mountpoint.mkdir()
    device = os.open("/dev/fuse", os.O_RDWR)
    libc = ctypes.CDLL(None, use_errno=True)
    options = f"fd={device},rootmode=40000,user_id=0,group_id=0".encode()
    if libc.mount(b"tgtha-test", str(mountpoint).encode(), b"fuse", 0, options) != 0:
        os.close(device)
        pytest.skip(f"cannot mount FUSE: {os.strerror(ctypes.get_errno())}")
    try:
        yield mountpoint
    finally:
        libc.umount2(str(mountpoint).encode(), 2)   # MNT_DETACH
        os.close(device)                            # the connection ends: every waiter fails


class AgentRun:
    """One agent action, run the way pacemaker-execd runs it."""

    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    @property
    def exit_reason(self) -> str:
        for line in self.stderr.splitlines():
            if line.startswith("ocf-exit-reason:"):
                return line[len("ocf-exit-reason:"):]
        return ""

    def __repr__(self) -> str:
        return f"AgentRun(rc={self.rc}, stderr={self.stderr[-2000:]!r})"


def agent_env(state: Path, instance: str, params: dict[str, str], meta: dict[str, str] | None = None
              ) -> dict[str, str]:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "OCF_ROOT": OCF_ROOT,
        "HA_RSCTMP": str(state),
        "OCF_RESOURCE_INSTANCE": instance,
    }
    env.update({f"OCF_RESKEY_{k}": v for k, v in params.items()})
    env.update({f"OCF_RESKEY_CRM_meta_{k}": v for k, v in (meta or {}).items()})
    return env


def run_agent(agent: str, action: str, params: dict[str, str], *, ns: Netns | None, state: Path,
              instance: str = "rsc", meta: dict[str, str] | None = None, timeout: float = 60,
              env: dict[str, str] | None = None) -> AgentRun:
    argv = [str(AGENTS / agent), action]
    if ns is not None:
        argv = ns.exec_argv(*argv)
    proc = subprocess.run(argv, env={**agent_env(state, instance, params, meta), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
    return AgentRun(proc)


def ocf_tester(ns: Netns, state: Path, agent: str, params: dict[str, str]) -> subprocess.CompletedProcess:
    """resource-agents' ocf-tester on one of our agents, inside ``ns``."""
    argv = ns.exec_argv("ocf-tester", "-v", "-n", f"{agent}-tester",
                        *[arg for k, v in params.items() for arg in ("-o", f"{k}={v}")], str(AGENTS / agent))
    return subprocess.run(argv, capture_output=True, text=True,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HA_RSCTMP": str(state),
                               "OCF_ROOT": "/usr/lib/ocf"})


# ------------------------------------------------------------------ tgtd

class Tgtd:
    """A real tgtd in a namespace, on its own control port, portal on ``portal_ip``."""

    def __init__(self, ns: Netns, control_port: int, portal: str, logfile: Path) -> None:
        self.ns = ns
        self.control_port = control_port
        self.log = open(logfile, "w")
        self.proc = subprocess.Popen(
            ns.exec_argv("tgtd", "-f", "--control-port", str(control_port), "--iscsi", f"portal={portal}"),
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.tgtadm("--op", "show", "--mode", "sys", check=False).returncode == 0:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("tgtd did not come up")

    def tgtadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("tgtadm", "-C", str(self.control_port), "--lld", "iscsi", *args, check=check)

    def stop(self) -> None:
        # tgtd ignores SIGTERM (it leaves on "tgtadm --op delete --mode system",
        # which waits for sessions); nothing of a test's tgtd needs a clean exit.
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        for leftover in (f"/var/run/tgtd/socket.{self.control_port}",
                         f"/var/run/tgtd/socket.{self.control_port}.lock"):
            if os.path.exists(leftover):
                os.unlink(leftover)


_control_ports = itertools.count(100 + os.getpid() % 5000)


@pytest.fixture
def start_tgtd(tmp_path):
    started: list[Tgtd] = []

    def start(ns: Netns, portal_ip: str, port: int = 3260) -> Tgtd:
        if shutil.which("tgtd") is None:
            pytest.skip("tgtd not installed")
        portal = f"[{portal_ip}]:{port}" if ":" in portal_ip else f"{portal_ip}:{port}"
        tgtd = Tgtd(ns, next(_control_ports), portal, tmp_path / f"tgtd{len(started)}.log")
        started.append(tgtd)
        return tgtd

    yield start
    for tgtd in started:
        tgtd.stop()


class IscsiLab:
    """A target node (namespace + real tgtd) and an initiator namespace, joined by a veth.

    ``agent()`` runs an agent action on the target node against this tgtd;
    ``login()`` is a real libiscsi login from the initiator namespace.
    """

    TARGET_IP, CLIENT_IP = "10.82.0.1", "10.82.0.2"

    def __init__(self, make_netns, start_tgtd, state: Path, tmp_path: Path) -> None:
        self.node, self.client = make_netns("node"), make_netns("client")
        veth_pair(self.node, self.client, f"{self.TARGET_IP}/24", f"{self.CLIENT_IP}/24")
        self.tgtd = start_tgtd(self.node, self.TARGET_IP)
        self.state = state
        self.tmp_path = tmp_path
        self.agent_runs: list[AgentRun] = []

    def agent(self, agent: str, action: str, params: dict[str, str], instance: str = "rsc",
              meta: dict[str, str] | None = None, env: dict[str, str] | None = None) -> AgentRun:
        params = {"control_port": str(self.tgtd.control_port), **params}
        result = run_agent(agent, action, params, ns=self.node, state=self.state, instance=instance,
                           meta=meta, env=env)
        self.agent_runs.append(result)
        return result

    def show(self) -> str:
        return self.tgtd.tgtadm("--mode", "target", "--op", "show").stdout

    def accounts(self) -> list[str]:
        out = self.tgtd.tgtadm("--mode", "account", "--op", "show").stdout
        return [line.strip() for line in out.splitlines() if line.startswith(" ")]

    def url(self, iqn: str, lun: int = 0, user: str = "", password: str = "") -> str:
        credentials = f"{user}%{password}@" if user else ""
        return f"iscsi://{credentials}{self.TARGET_IP}/{iqn}/{lun}"

    def login(self, iqn: str, user: str = "", password: str = "") -> bool:
        """A full libiscsi login and INQUIRY (iscsi-inq) from the initiator namespace.
        Credentials go through libiscsi's environment variables: its URLs are cut at 255 bytes."""
        env = dict(os.environ, LIBISCSI_CHAP_USERNAME=user, LIBISCSI_CHAP_PASSWORD=password) if user \
            else None
        result = self.client.run("iscsi-inq", "-i", "iqn.2026-11.test.tgtha:client",
                                 self.url(iqn, 0), check=False, timeout=30, env=env)
        return result.returncode == 0

    def make_backing_file(self, name: str, size_mib: int = 64) -> Path:
        path = self.tmp_path / name
        with open(path, "wb") as backing:
            backing.truncate(size_mib << 20)
        return path


@pytest.fixture
def iscsi_lab(make_netns, start_tgtd, state_dir, tmp_path) -> IscsiLab:
    if shutil.which("iscsi-inq") is None:
        pytest.skip("libiscsi-bin not installed")
    return IscsiLab(make_netns, start_tgtd, state_dir, tmp_path)


# ------------------------------------------------------------------ report

_report_lines: list[str] = []


@pytest.fixture
def report():
    """Figures a test measured, printed at the end of the run (the test report)."""
    return _report_lines.append


def pytest_terminal_summary(terminalreporter):
    if _report_lines:
        terminalreporter.section("measured")
        for line in _report_lines:
            terminalreporter.write_line(line)
