"""The node-wide firewall mutex: exclusive, shared with filelock, never stuck after kill -9."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tgtha.mutex import FileMutex
from tgtha.ocf_runtime import OCFError

HOLD = """
import sys, time
sys.path.insert(0, sys.argv[2])
from tgtha.mutex import FileMutex
with FileMutex(sys.argv[1], time.monotonic() + 5):
    print("held", flush=True)
    time.sleep(60)
"""


def holder(path, repo_lib):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), repo_lib], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def lib_dir():
    import tgtha
    return os.path.dirname(os.path.dirname(tgtha.__file__))


def test_a_second_holder_waits_and_times_out_naming_the_holder(tmp_path, lib_dir):
    lock = tmp_path / "firewall.lock"
    proc = holder(lock, lib_dir)
    try:
        with pytest.raises(OCFError) as err:
            with FileMutex(str(lock), time.monotonic() + 0.3):
                pass
        assert f"held by pid {proc.pid}" in err.value.reason
    finally:
        proc.kill()
        proc.wait()


def test_kill_9_of_the_holder_releases_the_lock(tmp_path, lib_dir):
    lock = tmp_path / "firewall.lock"
    proc = holder(lock, lib_dir)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with FileMutex(str(lock), time.monotonic() + 1):
        pass


def test_the_lock_is_the_same_as_filelocks(tmp_path):
    """A tool using the filelock package on our lock file excludes us, and we it."""
    filelock = pytest.importorskip("filelock")
    lock = tmp_path / "firewall.lock"
    with filelock.FileLock(str(lock)):
        with pytest.raises(OCFError):
            with FileMutex(str(lock), time.monotonic() + 0.2):
                pass
    with FileMutex(str(lock), time.monotonic() + 1):
        with pytest.raises(filelock.Timeout):
            filelock.FileLock(str(lock)).acquire(timeout=0.2)
