"""The shared "disks" of the lab: one file per LUN that every node sees (standing in for DRBD or a SAN).

By default they live on a tmpfs mounted for the lab (``LAB_DISKS=tmpfs``): with
write cache off, tgt syncs every write, and on this machine's virtual disk
twelve LUNs under load kept tgtd in the kernel most of the time (host CPU 75 %
system, 25 % I/O wait), which slowed every Pacemaker action on the two shared
cores. The lab measures the agents and Pacemaker, not the host's fsync; data
is verified all the same. ``LAB_DISKS=host`` keeps the files on the host's
file system. The mount is made before the nodes boot, so each node's mount
namespace has it, and goes at teardown (also one left by a killed run).
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


class SharedDisks:
    def __init__(self, prefix: str, kind: str, size_bytes: int) -> None:
        self.source = f"{prefix}-disks"
        self.kind = kind
        self.remove_leftovers()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-disks-"))
        if kind == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes + (64 << 20)},mode=0700",
                            self.source, str(self.dir)], check=True)

    def file(self, name: str, size_bytes: int) -> Path:
        path = self.dir / name
        with open(path, "wb") as disk:
            disk.truncate(size_bytes)
        return path

    def directory(self, name: str) -> Path:
        """A shared directory (portblock's tickle_dir lives on the shared storage, as stock's does)."""
        path = self.dir / name
        path.mkdir(exist_ok=True)
        return path

    def remove(self) -> None:
        if self.kind == "tmpfs":
            subprocess.run(["umount", "-l", str(self.dir)], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def remove_leftovers(self) -> None:
        """A tmpfs of this prefix left mounted by a run that was killed."""
        with open("/proc/self/mounts") as mounts:
            stale = [line.split()[1] for line in mounts if line.split()[0] == self.source]
        for mountpoint in stale:
            subprocess.run(["umount", "-l", mountpoint], check=False)
            shutil.rmtree(mountpoint, ignore_errors=True)

    def describe(self) -> str:
        where = "a tmpfs" if self.kind == "tmpfs" else "the host's file system"
        return f"files on {where} seen by every node (standing in for DRBD or a SAN)"
