#!/usr/bin/python3
"""Latency of tgtha's agents next to the stock ocf:heartbeat: ones, same run.

Runs both in one throw-away network namespace, the way pacemaker-execd runs
them (one process per action, parameters in the environment), and prints
medians and the ratio ours/stock. A benchmark, not a test: nothing is asserted.
The iSCSITarget cases run a real tgtd on control port 0 (the one the stock
agent's tgtadm talks to) inside the namespace.

    sudo bench/agent_latency.py [--runs N] [--only portblock|IPaddr2|iSCSITarget|iSCSILogicalUnit|scale]

"scale" measures the iSCSITarget and iSCSILogicalUnit monitors of one target
with 6 and with 200 targets (400 LUNs) on the node. CPU is user+sys of the
agent and every process it waited for.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OURS = REPO / "agents"
STOCK = Path("/usr/lib/ocf/resource.d/heartbeat")
NS = f"tgtha-bench-{os.getpid()}"


CPU_MS: dict[tuple[str, str], list[float]] = {}     # (agent path, op) -> CPU ms (user+sys) per run
MONITOR_CPU_MS: dict[str, tuple[float, float]] = {}  # agent -> (stock, tgtha) median monitor CPU ms, first case


def timed(agent: Path, action: str, env: dict[str, str]) -> tuple[float, int]:
    """Wall ms and rc of one action; its CPU time (the agent and every process
    it waited for) goes to CPU_MS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    rc = subprocess.run(["ip", "netns", "exec", NS, str(agent), action], env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    wall = (time.perf_counter() - began) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000
    CPU_MS.setdefault((str(agent), action), []).append(cpu)
    return wall, rc


def cpu_ms(agent: Path, *actions: str) -> float:
    """Median CPU ms of the actions together (start+stop: the sum of their medians)."""
    return sum(statistics.median(CPU_MS.get((str(agent), a), [0.0])) for a in actions)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples)


def env_for(state: str, params: dict[str, str], interval: str = "10000") -> dict[str, str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "OCF_ROOT": "/usr/lib/ocf", "HA_RSCTMP": state,
           "OCF_RESOURCE_INSTANCE": "bench", "OCF_RESKEY_CRM_meta_interval": interval,
           "OCF_RESKEY_CRM_meta_timeout": "20000"}
    env.update({f"OCF_RESKEY_{k}": v for k, v in params.items()})
    return env


def measure(agent: Path, params: dict[str, str], runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as state:
        env = env_for(state, params)
        result = {}
        result["meta-data"] = median_ms([timed(agent, "meta-data", env)[0] for _ in range(runs)])
        starts, stops = [], []
        for _ in range(runs):
            starts.append(timed(agent, "start", env)[0])
            stops.append(timed(agent, "stop", env)[0])
        result["start"], result["stop"] = median_ms(starts), median_ms(stops)
        result["start+stop"] = median_ms([start + stop for start, stop in zip(starts, stops)])
        timed(agent, "start", env)
        monitors = [timed(agent, "monitor", env) for _ in range(runs)]
        result["monitor"] = median_ms([ms for ms, _ in monitors])
        result["monitor rc"] = monitors[-1][1]
        timed(agent, "stop", env)
    return result


def compare(title: str, agent: str, cases, runs: int) -> None:
    print(f"\n{title}, median of {runs} runs each, ms (ratio = tgtha / stock); CPU = user+sys of the"
          " agent and the processes it ran")
    print(f"{'case':40} {'op':11} {'stock':>8} {'tgtha':>8} {'ratio':>6} {'CPU stock':>10} {'tgtha':>8}")
    for name, stock_params, our_params in cases:
        CPU_MS.clear()
        stock = measure(STOCK / agent, stock_params, runs)
        stock_left = rules_left_and_flushed() if agent == "portblock" else 0
        ours = measure(OURS / agent, our_params, runs)
        ours_left = rules_left_and_flushed() if agent == "portblock" else 0
        for op in ("monitor", "start", "stop", "start+stop", "meta-data"):
            actions = ("start", "stop") if op == "start+stop" else (op,)
            print(f"{name:40.40} {op:11} {stock[op]:8.1f} {ours[op]:8.1f} {ours[op] / stock[op]:6.2f}"
                  f" {cpu_ms(STOCK / agent, *actions):10.1f} {cpu_ms(OURS / agent, *actions):8.1f}")
        MONITOR_CPU_MS.setdefault(agent, (cpu_ms(STOCK / agent, "monitor"), cpu_ms(OURS / agent, "monitor")))
        if stock_left or ours_left:
            # A block's stop removes its rule, an unblock's stop leaves one: more
            # than that is a start or stop that did not do what it says.
            print(f"{'':40} note: firewall rules left after the runs (the last one ends with a stop):"
                  f" stock {stock_left}, tgtha {ours_left}")
        if stock["monitor rc"] != ours["monitor rc"]:
            print(f"{'':40} note: monitor rc stock={stock['monitor rc']} tgtha={ours['monitor rc']}")


def rules_left_and_flushed() -> int:
    """Rules in the bench namespace's filter tables (nft and legacy), then none."""
    left = 0
    for program in ("iptables-nft", "iptables-legacy"):
        listing = subprocess.run(["ip", "netns", "exec", NS, f"{program}-save", "-t", "filter"],
                                 capture_output=True, text=True).stdout
        left += sum(1 for line in listing.splitlines() if line.startswith("-A "))
        subprocess.run(["ip", "netns", "exec", NS, program, "-F"], capture_output=True)
    return left


def portblock_cases():
    base = {"protocol": "tcp", "portno": "3260", "ip": "10.80.0.1"}
    block, unblock = {**base, "action": "block"}, {**base, "action": "unblock"}
    reject = {**base, "action": "block", "method": "reject", "direction": "out"}
    return [("block (stock params)", block, block),
            ("unblock (stock params)", unblock, unblock),
            ("block, reject out [tgtha status_check=rule]", reject, {**reject, "status_check": "rule"})]


def iscsitarget_cases():
    stock_own = {"implementation": "tgt", "iqn": "iqn.2026-11.bench.tgtha:t1", "tid": "1",
                 "incoming_username": "own", "incoming_password": "Bench-Secret-1"}
    shared = {"iqn": "iqn.2026-11.bench.tgtha:t1", "tid": "1", "incoming_username": "shared"}
    return [("own account (stock params)", stock_own, stock_own),
            ("own account [tgtha: shared, tgtuser]", stock_own, shared)]


def ipaddr2_cases():
    params = {"ip": "10.80.0.50", "cidr_netmask": "24", "nic": "bench0"}
    return [("IPv4 address on a veth (stock params)", params, params)]


def logicalunit_cases(backing: str):
    params = {"implementation": "tgt", "target_iqn": "iqn.2026-11.bench.tgtha:luns", "lun": "1",
              "path": backing}
    return [("LUN 1, file backed (stock params)", params, params)]


class Tgtd:
    """tgtd on control port 0 in the bench namespace (what the stock agent talks to)."""

    SOCKET = "/var/run/tgtd/socket.0"

    def __enter__(self):
        if os.path.exists(self.SOCKET):
            sys.exit(f"{self.SOCKET} exists: a tgtd on control port 0 is running; stop it first")
        self.proc = subprocess.Popen(["ip", "netns", "exec", NS, "tgtd", "-f", "--iscsi", "portal=127.0.0.1:3260"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while subprocess.run(["tgtadm", "--op", "show", "--mode", "sys"], capture_output=True).returncode:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.proc.kill()  # tgtd ignores SIGTERM
        self.proc.wait()
        for leftover in (self.SOCKET, self.SOCKET + ".lock"):
            if os.path.exists(leftover):
                os.unlink(leftover)


def tgtadm(*args: str) -> None:
    subprocess.run(["tgtadm", "--lld", "iscsi", *args], check=True, capture_output=True)


def monitor_cost_at_scale(runs: int) -> None:
    """iSCSITarget and iSCSILogicalUnit monitors of one target with 6 targets
    / 12 LUNs on the node, then with 200 / 400 (goal: within 1.5x)."""
    print(f"\nmonitor cost as the node grows, median of {runs} runs, ms (ratio = 200 targets / 6)")
    print(f"{'monitor':40} {'6 targets':>10} {'200':>8} {'ratio':>6}")
    with Tgtd(), tempfile.TemporaryDirectory() as state:
        backing = os.path.join(state, "lun.img")
        with open(backing, "wb") as image:
            image.truncate(16 << 20)
        target_env = env_for(state, {"iqn": "iqn.2026-11.bench.tgtha:watched"})
        lun_env = env_for(state, {"target_iqn": "iqn.2026-11.bench.tgtha:watched", "lun": "1", "path": backing})
        subprocess.run(["ip", "netns", "exec", NS, str(OURS / "iSCSITarget"), "start"], env=target_env, check=True)
        subprocess.run(["ip", "netns", "exec", NS, str(OURS / "iSCSILogicalUnit"), "start"], env=lun_env,
                       check=True)
        made = 1

        def grow_to(count: int) -> None:
            nonlocal made
            for n in range(made, count):
                tid = 100 + n
                tgtadm("--op", "new", "--mode", "target", "--tid", str(tid), "-T", f"iqn.2026-11.bench.tgtha:o{n}")
                for lun in (1, 2):
                    tgtadm("--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", str(lun),
                           "-b", backing)
                tgtadm("--op", "bind", "--mode", "target", "--tid", str(tid), "-I", "ALL")
            made = count

        results = {}
        for count in (6, 200):
            grow_to(count)
            for name, agent, env in (("iSCSITarget", "iSCSITarget", target_env),
                                     ("iSCSILogicalUnit", "iSCSILogicalUnit", lun_env)):
                results[(name, count)] = median_ms([timed(OURS / agent, "monitor", env)[0] for _ in range(runs)])
        for name in ("iSCSITarget", "iSCSILogicalUnit"):
            small, large = results[(name, 6)], results[(name, 200)]
            print(f"{name:40} {small:10.1f} {large:8.1f} {large / small:6.2f}")
        for tid in range(101, 100 + made):
            subprocess.run(["tgtadm", "--lld", "iscsi", "--op", "delete", "--mode", "target", "--force",
                            "--tid", str(tid)], capture_output=True)
        subprocess.run(["ip", "netns", "exec", NS, str(OURS / "iSCSILogicalUnit"), "stop"], env=lun_env)
        subprocess.run(["ip", "netns", "exec", NS, str(OURS / "iSCSITarget"), "stop"], env=target_env)


def print_monitor_projection(luns: int = 256, targets: int = 64) -> None:
    """The monitors' share of one core on a node with ``luns`` LUN and ``targets``
    target resources, from the measured CPU per monitor (each monitor is a process)."""
    if not {"iSCSITarget", "iSCSILogicalUnit"} <= MONITOR_CPU_MS.keys():
        return
    print(f"\nprojected monitor CPU, {luns} LUN + {targets} target resources on one node"
          " (share of one core; CPU per monitor as measured above)")
    for interval_s in (10, 30, 60):
        shares = [(luns * MONITOR_CPU_MS["iSCSILogicalUnit"][side] + targets * MONITOR_CPU_MS["iSCSITarget"][side])
                  / (interval_s * 1000) for side in (0, 1)]
        print(f"  interval {interval_s:2} s: stock {shares[0]:6.1%}  tgtha {shares[1]:6.1%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--only", choices=["portblock", "IPaddr2", "iSCSITarget", "iSCSILogicalUnit", "scale"])
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespace)")
    subprocess.run(["ip", "netns", "add", NS], check=True)
    subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True)
    try:
        if args.only in (None, "portblock"):
            compare("portblock", "portblock", portblock_cases(), args.runs)
        if args.only in (None, "IPaddr2"):
            subprocess.run(["ip", "-n", NS, "link", "add", "bench0", "type", "veth", "peer", "name", "bench1"],
                           check=True)
            for dev in ("bench0", "bench1"):
                subprocess.run(["ip", "-n", NS, "link", "set", dev, "up"], check=True)
            compare("IPaddr2", "IPaddr2", ipaddr2_cases(), args.runs)
        if args.only in (None, "iSCSITarget"):
            with Tgtd(), tempfile.TemporaryDirectory() as state:
                account = env_for(state, {"username": "shared", "password": "Bench-Secret-1"})
                subprocess.run(["ip", "netns", "exec", NS, str(OURS / "tgtuser"), "start"], env=account, check=True)
                compare("iSCSITarget (implementation tgt)", "iSCSITarget", iscsitarget_cases(), args.runs)
                subprocess.run(["ip", "netns", "exec", NS, str(OURS / "tgtuser"), "stop"], env=account, check=True)
        if args.only in (None, "iSCSILogicalUnit"):
            with Tgtd(), tempfile.TemporaryDirectory() as state:
                backing = os.path.join(state, "lun1.img")
                with open(backing, "wb") as image:
                    image.truncate(64 << 20)
                target = env_for(state, {"iqn": "iqn.2026-11.bench.tgtha:luns", "tid": "1"})
                subprocess.run(["ip", "netns", "exec", NS, str(OURS / "iSCSITarget"), "start"], env=target, check=True)
                compare("iSCSILogicalUnit (implementation tgt)", "iSCSILogicalUnit", logicalunit_cases(backing),
                        args.runs)
                subprocess.run(["ip", "netns", "exec", NS, str(OURS / "iSCSITarget"), "stop"], env=target, check=True)
        if args.only in (None, "scale"):
            monitor_cost_at_scale(args.runs)
        print_monitor_projection()
    finally:
        subprocess.run(["ip", "netns", "del", NS])
    return 0


if __name__ == "__main__":
    sys.exit(main())
