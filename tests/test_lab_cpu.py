"""The lab's CPU accounting (lab/cpu.py): CPU used between two samples lands in
the group of whoever used it, including processes that lived and died in
between (the agents, reaped by pacemaker-execd).

Real processes: a stand-in "pacemaker-execd" (a process that renames itself)
runs a short-lived CPU burner, as execd runs an agent.
"""
from __future__ import annotations

import subprocess
import sys
import time

from conftest import REPO

sys.path.insert(0, str(REPO / "lab"))
import cpu  # noqa: E402

BURN_S = 0.3


def run_named(comm: str) -> None:
    """A process called ``comm`` that runs a child burning BURN_S of CPU, reaps it and exits."""
    script = (f"open('/proc/self/comm', 'w').write({comm!r})\n"
              "import subprocess, sys\n"
              "subprocess.run([sys.executable, '-c', "
              f"'import time\\nt = time.process_time()\\nwhile time.process_time() - t < {BURN_S}: pass'])\n")
    # Alive across the second sample, so its reaped child's CPU is read from it.
    parent = subprocess.Popen([sys.executable, "-c", script + "import time; time.sleep(2)"])
    return parent


def cpu_of(comm: str) -> dict[str, float]:
    before = cpu.Sample()
    parent = run_named(comm)
    time.sleep(BURN_S + 1.0)
    after = cpu.Sample()
    parent.kill()
    parent.wait()
    return cpu.by_group(before, after)["cpu_s"]


def test_a_short_lived_child_of_pacemaker_execd_counts_as_agents():
    used = cpu_of("pacemaker-execd")
    assert used["agents"] >= BURN_S * 0.8


def test_the_same_child_of_another_process_is_not_an_agent():
    """Negative control: the same burner under a parent of another name."""
    used = cpu_of("not-execd")
    assert used["agents"] < 0.05
    assert used["lab"] >= BURN_S * 0.8       # this test's process started it: the lab's own


def test_busy_share_is_a_fraction():
    before = cpu.Sample()
    time.sleep(0.2)
    busy = cpu.by_group(before, cpu.Sample())["busy"]
    assert busy is not None and 0.0 <= busy <= 1.0
