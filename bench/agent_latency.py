#!/usr/bin/python3
"""Latency of tgtha's portblock next to the stock ocf:heartbeat:portblock, same run.

Runs both agents in one throw-away network namespace, the way pacemaker-execd
runs them (one process per action, parameters in the environment), and prints
medians and the ratio ours/stock. A benchmark, not a test: nothing is asserted.

    sudo bench/agent_latency.py [--runs N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OURS = REPO / "agents" / "portblock"
STOCK = Path("/usr/lib/ocf/resource.d/heartbeat/portblock")
NS = f"tgtha-bench-{os.getpid()}"


def timed(agent: Path, action: str, env: dict[str, str]) -> tuple[float, int]:
    began = time.perf_counter()
    rc = subprocess.run(["ip", "netns", "exec", NS, str(agent), action], env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return (time.perf_counter() - began) * 1000, rc


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
        pairs = []
        for _ in range(runs):
            start, _ = timed(agent, "start", env)
            stop, _ = timed(agent, "stop", env)
            pairs.append(start + stop)
        result["start+stop"] = median_ms(pairs)
        timed(agent, "start", env)
        monitors = [timed(agent, "monitor", env) for _ in range(runs)]
        result["monitor"] = median_ms([ms for ms, _ in monitors])
        result["monitor rc"] = monitors[-1][1]
        timed(agent, "stop", env)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespace)")
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        base = {"protocol": "tcp", "portno": "3260", "ip": "10.80.0.1"}
        cases = [
            ("block (stock params)", {**base, "action": "block"}, {}),
            ("unblock (stock params)", {**base, "action": "unblock"}, {}),
            ("block, reject out", {**base, "action": "block", "method": "reject", "direction": "out"},
             {"status_check": "rule"}),
        ]
        print(f"portblock latency, median of {args.runs} runs each, ms (ratio = tgtha / stock)")
        print(f"{'case':34} {'op':11} {'stock':>8} {'tgtha':>8} {'ratio':>6}")
        for name, params, ours_extra in cases:
            stock = measure(STOCK, params, args.runs)
            ours = measure(OURS, {**params, **ours_extra}, args.runs)
            label = name + (" [tgtha status_check=rule]" if ours_extra else "")
            for op in ("monitor", "start+stop", "meta-data"):
                print(f"{label:34.34} {op:11} {stock[op]:8.1f} {ours[op]:8.1f} {ours[op] / stock[op]:6.2f}")
            if stock["monitor rc"] != ours["monitor rc"]:
                print(f"{'':34} note: monitor rc stock={stock['monitor rc']} tgtha={ours['monitor rc']}")
    finally:
        subprocess.run(["ip", "netns", "del", NS])
    return 0


if __name__ == "__main__":
    sys.exit(main())
