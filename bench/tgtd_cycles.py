#!/usr/bin/python3
"""ocf:tgtha:tgtd start -> tgtadm -> monitor -> stop, many times in a row, on a busy machine.

The failure it looks for is lsb:tgt's: a tgtd that is not serving yet when its
start returns. Both cores are kept busy (one busy loop per core) while the
agent runs in a throw-away network namespace as pacemaker-execd runs it. After
every start, ``tgtadm`` (a separate program, as the next resource in the order
would be) must succeed at once; after every stop no tgtd may be left. Prints the
counts and the start/stop times; exits 1 if anything failed.

    sudo bench/tgtd_cycles.py [--cycles 100] [--busy 2]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AGENT = REPO / "agents" / "tgtd"


def busy_loop() -> None:
    while True:
        pass


def tgtd_pids(port: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if os.path.basename(argv[0]) == b"tgtd" and str(port).encode() in argv and state != "Z":
            found.append(int(entry))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy loops (default: one per core)")
    args = parser.parse_args()
    port = 30000 + os.getpid() % 2000
    ns = f"tgtha-cycles-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    loops = [multiprocessing.Process(target=busy_loop, daemon=True) for _ in range(args.busy)]
    for loop in loops:
        loop.start()
    failures: list[str] = []
    starts, stops = [], []
    with tempfile.TemporaryDirectory() as state:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "OCF_ROOT": "/usr/lib/ocf", "HA_RSCTMP": state,
               "OCF_RESOURCE_INSTANCE": "p_tgtd", "OCF_RESKEY_control_port": str(port),
               "OCF_RESKEY_log_file": f"{state}/tgtd.log", "OCF_RESKEY_CRM_meta_timeout": "20000"}

        def agent(action: str, interval: str = "0") -> tuple[int, float, str]:
            began = time.monotonic()
            result = subprocess.run(["ip", "netns", "exec", ns, str(AGENT), action], capture_output=True,
                                    text=True, env={**env, "OCF_RESKEY_CRM_meta_interval": interval})
            return result.returncode, time.monotonic() - began, result.stderr.strip()[-300:]

        try:
            for cycle in range(1, args.cycles + 1):
                rc, took, err = agent("start")
                starts.append(took)
                if rc != 0:
                    failures.append(f"cycle {cycle}: start rc {rc}: {err}")
                tgtadm = subprocess.run(["ip", "netns", "exec", ns, "tgtadm", "-C", str(port), "--mode", "sys",
                                         "--op", "show"], capture_output=True, text=True)
                if tgtadm.returncode != 0 or "State: ready" not in tgtadm.stdout:
                    failures.append(f"cycle {cycle}: tgtadm right after start: rc {tgtadm.returncode} "
                                    f"{tgtadm.stderr.strip()}")
                rc, _, err = agent("monitor", "5000")
                if rc != 0:
                    failures.append(f"cycle {cycle}: monitor rc {rc}: {err}")
                rc, took, err = agent("stop")
                stops.append(took)
                if rc != 0:
                    failures.append(f"cycle {cycle}: stop rc {rc}: {err}")
                left = tgtd_pids(port)
                if left:
                    failures.append(f"cycle {cycle}: tgtd left after stop: {left}")
        finally:
            for loop in loops:
                loop.terminate()
            for pid in tgtd_pids(port):
                os.kill(pid, 9)
            subprocess.run(["ip", "netns", "del", ns])
    print(f"tgtd agent, {args.cycles} start -> tgtadm -> monitor -> stop cycles with {args.busy} busy loops "
          f"on {os.cpu_count()} cores: {len(failures)} failures")
    print(f"  start: median {statistics.median(starts) * 1000:.0f} ms, max {max(starts) * 1000:.0f} ms; "
          f"stop: median {statistics.median(stops) * 1000:.0f} ms, max {max(stops) * 1000:.0f} ms")
    for failure in failures[:20]:
        print("  " + failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
