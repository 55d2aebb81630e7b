"""Pacemaker's Cluster Test Suite (CTS) against the lab's cluster.

CTS is a program that runs outside the cluster (the *exerciser*), drives the nodes
only through ``ssh root@NODE`` and decides every result from the nodes' logs. Debian
patches it out of its pacemaker packages, so its lab code (``cts/lab`` of the
installed Pacemaker's source) is fetched with ``apt-get source`` at build time and
laid out as ``make install`` would (never committed). The exerciser runs in its own
network namespace on the lab's switch (CTS pings the nodes), in its own mount and
uts namespaces (CTS resolves the node names and its own, which must differ), with
``cts-exerciser/ssh`` and ``scp`` first on its PATH: they enter a node's namespaces.
The nodes get CTS's helpers from ``cts-node/`` in their /usr/lib/pacemaker.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cluster import SUBNET, Cluster

LAB_DIR = Path(__file__).resolve().parent
EXERCISER_IP = f"{SUBNET}.2"
EXERCISER_NAME = "cts-exerciser"
# cts/lab's modules that Pacemaker 2.1's cts/lab/Makefile.am installs, and its generated files
MODULES = ("__init__", "CIB", "cib_xml", "ClusterManager", "CM_corosync", "CTS", "CTSaudits",
           "CTSscenarios", "CTStests", "environment", "logging", "patterns", "remote", "watcher")
# configure's values for Debian 12's pacemaker 2.1.5 build (what CTSvars.py.in asks for)
CONFIGURED = {
    "BASH_PATH": "/bin/bash", "datadir": "/usr/share", "PACKAGE": "pacemaker",
    "CRM_CONFIG_DIR": "/var/lib/pacemaker/cib", "CRM_LOG_DIR": "/var/log/pacemaker",
    "CRM_DAEMON_USER": "hacluster", "CRM_DAEMON_DIR": "/usr/lib/pacemaker",
    "OCF_ROOT_DIR": "/usr/lib/ocf", "PCMK__COROSYNC_CONF": "/etc/corosync/corosync.conf",
    "PYTHON": "/usr/bin/python3",
}
NODE_LOG = "/var/log/pacemaker/pacemaker.log"

# BadNews that a healthy cluster produces, each allowed by exact pattern (README says why).
ALLOWED_BADNEWS = {
    # pacemaker-based compares CIB versions right after a node joins; CTS lists it itself
    # as a known race of Pacemaker's, not of a resource (seen 1-2 times per --once run).
    "cib-version-race": re.compile(r"pacemaker-based.*Local CIB [0-9.]+ differs from \S+: [0-9.]+"),
}
# A failed FileAudit allowed (README says why): every file it found is a libqb IPC directory
# (/dev/shm/qb-<pid>-<pid>-...) of a daemon that CTS's ComponentFail killed with signal 9 on
# that node: a SIGKILLed process cannot remove its IPC files, and CTS removes them itself.
STALE_IPC = re.compile(r"Warning: Stale IPC file on (\S+): .* qb-(\d+)-(\d+)-")
KILLED = re.compile(r" (\S+) pacemakerd\[\d+\]:\s+\w+: \S+\[(\d+)\] terminated with signal 9")


def pacemaker_version() -> str:
    return subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "pacemaker"], check=True,
                          capture_output=True, text=True).stdout.strip()


def fetch_source(cache: Path, version: str) -> Path:
    """The installed Pacemaker's orig tarball, by apt from the mirror the machine's apt
    sources name, with an apt configuration of our own (the machine's is not touched)."""
    upstream = version.split("-")[0].split(":")[-1]
    tarball = cache / f"pacemaker_{upstream}.orig.tar.gz"
    if tarball.exists():
        return tarball
    (cache / "lists/partial").mkdir(parents=True, exist_ok=True)
    sources = Path("/etc/apt/sources.list.d/debian.sources").read_text()
    uri = re.search(r"^URIs:\s*(\S+)", sources, re.M)
    suite = re.search(r"^Suites:\s*(\S+)", sources, re.M)
    if not uri or not suite:
        raise RuntimeError("cannot find the Debian mirror in /etc/apt/sources.list.d/debian.sources")
    (cache / "sources.list").write_text(f"deb-src {uri.group(1)} {suite.group(1)} main\n")
    options = ["-o", f"Dir::Etc::sourcelist={cache / 'sources.list'}", "-o", "Dir::Etc::sourceparts=-",
               "-o", f"Dir::State::Lists={cache / 'lists'}"]
    for argv in (["apt-get", *options, "update", "-q"],
                 ["apt-get", *options, "source", "--download-only", f"pacemaker={version}"]):
        result = subprocess.run(argv, cwd=cache, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:1] + argv[-2:])}: {result.stderr.strip()[-800:]}")
    if not tarball.exists():
        raise RuntimeError(f"apt-get source did not leave {tarball.name}")
    return tarball


def build(tarball: Path, out: Path) -> Path:
    """CTS's lab code from the tarball into ``out``: the package ``out/cts`` with
    CTSlab.py, and ``out/cts-log-watcher``. Returns ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    (out / "cts").mkdir(parents=True)
    with tarfile.open(tarball) as archive:
        members = {Path(m.name).relative_to(Path(m.name).parts[0]).as_posix(): m for m in archive.getmembers()
                   if "/cts/lab/" in m.name and m.isfile()}

        def text(name: str) -> str:
            member = members.get(f"cts/lab/{name}")
            if member is None:
                raise RuntimeError(f"{tarball.name} has no cts/lab/{name}: not Pacemaker 2.1's layout")
            return archive.extractfile(member).read().decode()

        for module in MODULES:
            (out / "cts" / f"{module}.py").write_text(text(f"{module}.py"))
        for source, target in (("CTSvars.py.in", "cts/CTSvars.py"), ("CTSlab.py.in", "cts/CTSlab.py"),
                               ("cts-log-watcher.in", "cts-log-watcher")):
            content = re.sub(r"@([A-Za-z_]+)@", lambda m: CONFIGURED.get(m.group(1), m.group(0)), text(source))
            left = re.findall(r"@[A-Za-z_]+@", content)
            if left:
                raise RuntimeError(f"{source}: no value for {sorted(set(left))}")
            (out / target).write_text(content)
            (out / target).chmod(0o755)
    check = subprocess.run(["/usr/bin/python3", "-c", "import cts.CTSvars, cts.CTStests"], cwd=out,
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"CTS does not import: {check.stderr.strip()[-500:]}")
    return out


def prepare_nodes(cluster: Cluster, build_dir: Path) -> None:
    """CTS's helpers into what the nodes overlay onto /usr/lib/pacemaker (before they boot)."""
    cluster.libexec_dir.mkdir(parents=True, exist_ok=True)
    for helper in (LAB_DIR / "cts-node").iterdir():
        shutil.copy(helper, cluster.libexec_dir / helper.name)
    shutil.copy(build_dir / "cts-log-watcher", cluster.libexec_dir / "cts-log-watcher.upstream")


@dataclass
class CtsResult:
    mode: str                          # "once" or "N random"
    nodes: int
    seed: int
    returncode: int
    seconds: float
    results: dict = field(default_factory=dict)       # CTS's "Overall Results"
    tests: dict = field(default_factory=dict)         # test -> {"calls", "failure", "skipped", "auditfail"}
    failures: list[str] = field(default_factory=list)         # "Test X FAILED: why"
    badnews: list[str] = field(default_factory=list)          # not allowed
    allowed_badnews: dict = field(default_factory=dict)       # allowed pattern name -> count
    audit_failures: list[str] = field(default_factory=list)
    allowed_audit_failures: dict = field(default_factory=dict)   # why -> count

    @property
    def passed(self) -> int:
        return int(self.results.get("success", 0))

    @property
    def failed(self) -> int:
        # A run that ended without its results counts as one failure, whatever CTS returned.
        return int(self.results.get("failure", 1 if not self.results else 0))

    @property
    def ok(self) -> bool:
        return (self.returncode == 0 and bool(self.results) and self.failed == 0
                and not self.badnews and not self.audit_failures)

    def as_dict(self) -> dict:
        return {"mode": self.mode, "nodes": self.nodes, "seed": self.seed, "returncode": self.returncode,
                "seconds": round(self.seconds, 1), "passed": self.passed, "failed": self.failed,
                "results": self.results, "tests": self.tests, "failures": self.failures,
                "badnews": self.badnews, "allowed_badnews": self.allowed_badnews,
                "audit_failures": self.audit_failures, "allowed_audit_failures": self.allowed_audit_failures,
                "ok": self.ok}


def parse_output(output: str, result: CtsResult, debug_log: str = "") -> CtsResult:
    """CTS's printed output: its results, each test's summary, the failures, BadNews, audits
    (``debug_log``, CTS's own log, tells which daemons it killed). CTS's exit status counts
    failed tests only, so BadNews and audits are read here."""
    killed = set(KILLED.findall(debug_log))            # (node, pid)
    stale: list[tuple[str, str, str]] = []             # the FileAudit's findings since the last audit
    other_warnings = False                             # e.g. a core file: never allowed
    for line in output.splitlines():
        text = line.split("\t", 1)[-1]
        if text.startswith("Overall Results:"):
            result.results = ast.literal_eval(text.partition(":")[2].strip())
        elif text.startswith("Test ") and ":" in text and "{" in text:
            name, _, figures = text[len("Test "):].partition(":")
            try:
                result.tests[name.strip()] = ast.literal_eval(figures.strip())
            except (ValueError, SyntaxError):
                pass
        elif re.match(r"Test \S+\s+FAILED", text):
            result.failures.append(text.strip())
        elif text.startswith("BadNews:"):
            news = text[len("BadNews:"):].strip()
            allowed = next((name for name, pattern in ALLOWED_BADNEWS.items() if pattern.search(news)), None)
            if allowed:
                result.allowed_badnews[allowed] = result.allowed_badnews.get(allowed, 0) + 1
            else:
                result.badnews.append(news)
        elif STALE_IPC.match(text):
            stale.append(STALE_IPC.match(text).groups())
        elif text.startswith("Warning:"):
            other_warnings = True
        elif re.match(r"Audit \S+ FAILED", text):
            if text.startswith("Audit FileAudit ") and stale and not other_warnings and all(
                    (node, a) in killed or (node, b) in killed for node, a, b in stale):
                why = "stale-ipc-of-killed-daemon"
                result.allowed_audit_failures[why] = result.allowed_audit_failures.get(why, 0) + 1
            else:
                result.audit_failures.append(text.strip())
        if re.match(r"Audit \S+ (FAILED|passed)", text):
            stale, other_warnings = [], False
    return result


class Exerciser:
    """Where CTS runs: a host of its own on the lab's switch."""

    def __init__(self, cluster: Cluster, build_dir: Path, out: Path) -> None:
        self.cluster = cluster
        self.build_dir = build_dir
        self.out = out
        self.netns = f"{cluster.prefix}-x"
        self.hosts = out / "exerciser-hosts"

    def up(self) -> None:
        self.cluster.plug(self.netns, "vx", EXERCISER_IP)
        self.hosts.write_text("127.0.0.1 localhost\n" + f"{EXERCISER_IP} {EXERCISER_NAME}\n"
                              + "".join(f"{n.ip} {n.name}\n" for n in self.cluster.nodes))

    def run(self, nodes: list[str], mode: str, seed: int, iterations: int, tests: tuple[str, ...],
            timeout_s: float) -> CtsResult:
        """One CTS run: ``mode`` "once" (every test CTS offers for these nodes) or "random"
        (``iterations`` tests chosen by ``seed``, among ``tests`` if any are named). Its output
        goes to ``out/cts-*.out``, its debug log to ``out/cts-*.log``."""
        label = "once" if mode == "once" else f"{iterations}-random"
        stem = f"cts-{len(nodes)}nodes-{label}"
        tmp = self.out / "cts-tmp"            # CTS leaves an empty tmpXXXX.cts per test list built
        tmp.mkdir(parents=True, exist_ok=True)
        argv = ["--nodes", " ".join(nodes), "--stack", "corosync", "--logfile", NODE_LOG,
                "--at-boot", "0", "--stonith", "yes", "--yes", "--seed", str(seed),
                "--outputfile", str(self.out / f"{stem}.log")]
        for test in tests:
            argv += ["--choose", test]
        argv += ["--once"] if mode == "once" else [str(iterations)]
        environment = ["env", "-i", f"PATH={LAB_DIR / 'cts-exerciser'}:/usr/sbin:/usr/bin:/sbin:/bin",
                       "HOME=/root", "LANG=C.UTF-8", f"TMPDIR={tmp}",
                       f"LAB_RUN_DIR={self.cluster.run_dir}", f"LAB_PREFIX={self.cluster.prefix}"]
        # Mount events of the host reach the exerciser (slave propagation): a fenced node's
        # network namespace is made anew, and ssh finds it by its new /run/netns entry.
        script = ('mount --bind "$1" /etc/hosts && hostname "$2" || exit 1; shift 2; '
                  'cd "$1" && shift && exec "$@"')
        command = ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--uts", "--propagation", "slave",
                   "/bin/bash", "-c", script, "_", str(self.hosts), EXERCISER_NAME, str(self.out),
                   *environment, "/usr/bin/python3", "-u", str(self.build_dir / "cts" / "CTSlab.py"), *argv]
        began = time.monotonic()
        printed = self.out / f"{stem}.out"
        with open(printed, "w") as sink:
            try:
                returncode = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT,
                                            timeout=timeout_s).returncode
            except subprocess.TimeoutExpired:
                returncode = 124
        result = CtsResult(mode=mode if mode == "once" else f"{iterations} random", nodes=len(nodes),
                           seed=seed, returncode=returncode, seconds=time.monotonic() - began)
        debug_log = self.out / f"{stem}.log"
        return parse_output(printed.read_text(errors="replace"), result,
                            debug_log.read_text(errors="replace") if debug_log.exists() else "")

    def down(self) -> None:
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)


def initiator_counts(run) -> dict[str, int]:
    """What the lab's initiators and prober have seen so far."""
    prober = run.prober
    return {"io_errors": sum(len(i.log.errors) for i in run.initiators),
            "mismatches": sum(len(i.log.mismatches) for i in run.initiators),
            "unauth_logins": len(prober.successes) if prober else 0,
            "unauth_attempts": len(prober.attempts) if prober else 0}


def longest_pause(completions: list[float], start: float, end: float) -> float:
    """The longest time without a completed I/O between ``start`` and ``end``."""
    marks = [start, *[t for t in completions if start < t < end], end]
    return max(b - a for a, b in zip(marks, marks[1:]))


class CtsJob:
    """The lab's job for ``make cts``: CTS runs against the serving lab, the initiators
    writing and verifying throughout; what they saw is reported per CTS run."""

    stack_at_boot = False         # CTS's --at-boot 0: a fenced node comes back without the stack

    def __init__(self, runs: list[tuple[str, int]], seed: int, build_dir: Path, progress,
                 tests: tuple[str, ...] = ()) -> None:
        self.runs = runs              # ("once", 0) or ("random", iterations)
        self.tests = tests            # the random runs choose among these only (all when empty)
        self.seed = seed
        self.build_dir = build_dir
        self.progress = progress
        self.results: list[dict] = []

    def describe(self, settings) -> str:
        return "then CTS: " + ", ".join("every test once" if mode == "once" else f"{n} random tests (seed {self.seed})"
                                        for mode, n in self.runs)

    def prepare(self, cluster: Cluster) -> None:
        prepare_nodes(cluster, self.build_dir)

    def work(self, settings, cluster: Cluster, lab, run) -> None:
        run.extra["cts"] = self.results          # filled run by run: an interrupted make cts reports them
        exerciser = Exerciser(cluster, self.build_dir, settings.out)
        exerciser.up()
        try:
            for mode, iterations in self.runs:
                self.progress(f"CTS on {settings.nodes} nodes: "
                              + ("every test once" if mode == "once" else f"{iterations} random tests, seed {self.seed}"))
                began, before = time.monotonic(), initiator_counts(run)
                # A bound, so that a cluster CTS waits on for ever still ends in a report:
                # a test takes 10-130 s here, CTS's own waits are 300 s at most.
                bound_s = 900 + 300 * (iterations or 16)
                result = exerciser.run([n.name for n in cluster.nodes], mode, self.seed, iterations,
                                       () if mode == "once" else self.tests, timeout_s=bound_s)
                ended, after = time.monotonic(), initiator_counts(run)
                figures = result.as_dict()
                pauses = {i.lun.name: longest_pause(i.log.completions, began, ended) for i in run.initiators}
                worst = max(pauses, key=pauses.get) if pauses else None
                figures["initiators"] = {
                    **{name: after[name] - before[name] for name in after},
                    "io_completed": sum(1 for i in run.initiators for t in i.log.completions if began < t < ended),
                    "longest_pause_s": round(pauses[worst], 1) if worst else None,
                    "longest_pause_lun": worst,
                }
                self.results.append(figures)
                run.extra_lines.append(summary_line(figures))
                self.progress(summary_line(figures))
        finally:
            exerciser.down()


def summary_line(figures: dict) -> str:
    """``CTS: <passed> passed, <failed> failed`` and what the initiators saw meanwhile."""
    i = figures["initiators"]
    allowed = sum(figures["allowed_badnews"].values())
    allowed_audits = sum(figures["allowed_audit_failures"].values())
    return (f"CTS: {figures['passed']} passed, {figures['failed']} failed "
            f"({figures['mode']}, {figures['nodes']} nodes, seed {figures['seed']}, {figures['seconds'] / 60:.1f} min); "
            f"BadNews {len(figures['badnews'])}" + (f" (+{allowed} allowed)" if allowed else "")
            + f", audit failures {len(figures['audit_failures'])}"
            + (f" (+{allowed_audits} allowed)" if allowed_audits else "") + f"; initiators: {i['io_completed']} I/Os verified, "
            f"I/O errors {i['io_errors']}, mismatches {i['mismatches']}, unauthenticated logins "
            f"{i['unauth_logins']} of {i['unauth_attempts']}, longest pause {i['longest_pause_s']} s")


def main() -> int:
    """make cts: every test CTS offers once on CTS_ONCE_NODES (2) nodes, then CTS_ITERATIONS
    (30) random tests seeded by CTS_SEED on LAB_NODES (2) nodes, chosen among CTS_TESTS (names
    separated by spaces; default every test; CTS_ONCE_NODES=0 skips the --once run); the lab's other knobs apply
    (LAB_INITIATOR defaults to libiscsi here). Exit status 0 only when every CTS run passed
    with no BadNews, no failed audit and no initiator error."""
    import lab as lab_main        # the lab's runner; imported here, it is a script of its own

    # make exports every knob, set or not: an empty one counts as unset
    environment = {name: value for name, value in os.environ.items() if value}
    environment.setdefault("LAB_INITIATOR", "libiscsi")
    environment.setdefault("LAB_REBOOT_DELAY_S", "1")
    environment.setdefault("LAB_OUT", "cts-out")
    nodes = int(environment.get("LAB_NODES") or "2")
    once_nodes = int(environment.get("CTS_ONCE_NODES") or "2")
    iterations = int(environment.get("CTS_ITERATIONS") or "30")
    seed = int(environment.get("CTS_SEED") or str(int(time.time())))
    tests = tuple((environment.get("CTS_TESTS") or "").split())
    plan: dict[int, list[tuple[str, int]]] = {}
    if once_nodes:
        plan.setdefault(once_nodes, []).append(("once", 0))
    if iterations:
        plan.setdefault(nodes, []).append(("random", iterations))
    progress = lab_main.Progress()
    cache = Path(environment.get("CTS_CACHE") or LAB_DIR.parent / "build" / "cts")
    version = pacemaker_version()
    build_dir = build(fetch_source(cache, version), cache / "lab")
    progress(f"CTS of Pacemaker {version} (Debian's source, cts/lab) built in {build_dir}")
    all_results, status = [], 0
    for count, runs in plan.items():
        settings = lab_main.Settings({**environment, "LAB_NODES": str(count),
                                      "LAB_OUT": str(Path(environment["LAB_OUT"]) / f"{count}nodes")})
        job = CtsJob(runs, seed, build_dir, progress, tests)
        status = lab_main.run_lab(settings, progress, job) or status
        all_results += job.results
        if len(job.results) < len(runs):
            status = status or 1
    print()
    for figures in all_results:
        print(summary_line(figures))
    ok = all(f["ok"] and not f["initiators"]["io_errors"] and not f["initiators"]["mismatches"]
             and not f["initiators"]["unauth_logins"] for f in all_results)
    return status or (0 if ok and all_results else 1)


if __name__ == "__main__":
    raise SystemExit(main())
