"""Initiator load that writes data and verifies it, and a prober for unauthenticated logins.

The initiator is QEMU's libiscsi driver (``qemu-io``), one long-lived session
per LUN with CHAP, as a VM's disk would be: on a lost connection libiscsi logs
in again and reissues what was in flight, and an error reaches us only when
the initiator gives up or the target answers with one. Each LUN runs, in a
loop: write a block with a pattern, read it back verifying the pattern, read
an older block verifying the pattern it was last written with (data written
before a failover must be there after it).
"""
from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PROMPT = b"qemu-io> "
BLOCK = 64 * 1024
BLOCKS = 256                      # 16 MiB of each LUN is exercised


@dataclass
class Lun:
    target_name: str
    iqn: str
    vip: str
    lun: int

    @property
    def name(self) -> str:
        return f"{self.target_name}/lun{self.lun}"


@dataclass
class IoLog:
    """What one initiator saw: completion times of good I/Os, errors, mismatches."""
    completions: list[float] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    mismatches: list[tuple[float, str]] = field(default_factory=list)
    retried: list[tuple[float, str]] = field(default_factory=list)

    def last_completion(self) -> float:
        return self.completions[-1] if self.completions else 0.0


class LunInitiator:
    """One qemu-io session on one LUN in the client namespace, driven op by op."""

    def __init__(self, lun: Lun, netns: str, user: str, secret_file: Path, gap_s: float,
                 seed: int) -> None:
        self.lun = lun
        self.netns = netns
        self.user = user
        self.secret_file = secret_file
        self.gap_s = gap_s
        self.log = IoLog()
        self.expected: dict[int, int] = {}
        self.random = random.Random(seed)
        self.generation = seed % 200
        self.proc: subprocess.Popen | None = None
        self._buffer = b""
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"io-{lun.name}", daemon=True)

    def argv(self) -> list[str]:
        image = ",".join([
            "driver=iscsi", "transport=tcp", f"portal={self.lun.vip}:3260", f"target={self.lun.iqn}",
            f"lun={self.lun.lun}", "initiator-name=iqn.2026-11.org.tgtha.lab:client",
            f"user={self.user}", "password-secret=chap"])
        return ["ip", "netns", "exec", self.netns, "qemu-io",
                "--object", f"secret,id=chap,file={self.secret_file}", "--image-opts", image]

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._end_process()
        self.thread.join(timeout=5)

    def _end_process(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._open()
                while not self._stop.is_set():
                    self._one_round()
                    if self.gap_s:
                        time.sleep(self.gap_s)
            except EOFError as err:
                # The session is gone (or never came up): an error the application sees.
                if not self._stop.is_set():
                    self.log.errors.append((time.monotonic(), f"qemu-io ended: {err}"))
                    self._stop.wait(1)

    def _open(self) -> None:
        self._end_process()
        self._buffer = b""
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, bufsize=0)
        self._until_prompt()

    def _one_round(self) -> None:
        block = self.random.randrange(BLOCKS)
        self.generation += 1
        pattern = (block * 7 + self.generation * 13) % 255 + 1
        if self._command(f"write -P {pattern} {block * BLOCK} {BLOCK}", "wrote"):
            self.expected[block] = pattern
            self._verify(block)
        else:
            self.expected.pop(block, None)      # a failed write leaves the block undefined
        older = self.random.choice(list(self.expected)) if self.expected else None
        if older is not None:
            self._verify(older)

    def _verify(self, block: int) -> None:
        self._command(f"read -P {self.expected[block]} {block * BLOCK} {BLOCK}", "read")

    def _command(self, command: str, success_word: str) -> bool:
        """Run one command; True when it completed without an error reaching qemu-io.

        QEMU's driver logs a UNIT ATTENTION it retries ("iSCSI CheckCondition:
        ... UNIT_ATTENTION") before the command's own result: a guest never
        sees it, so it is counted apart, as a transparent retry. So is its
        "iSCSI: NOP timeout. Reconnecting...": after three unanswered NOP-Outs
        (5 s apart) it reconnects on its own and resends the command, whose
        result follows (an outage that went unnoticed for ~15 s, e.g. a silent
        block while a group cannot start anywhere)."""
        try:
            self.proc.stdin.write(command.encode() + b"\n")
        except OSError as err:
            raise EOFError(f"qemu-io is gone: {err}") from None
        output = self._until_prompt()
        now = time.monotonic()
        lines = output.splitlines()
        retried = [line for line in lines if "UNIT_ATTENTION" in line or "NOP timeout. Reconnecting" in line]
        if retried:
            self.log.retried.append((now, retried[0]))
        if any("Pattern verification failed" in line for line in lines):
            self.log.mismatches.append((now, f"{command}: {output.strip()}"))
            return False
        result = [line for line in lines if line not in retried]
        if not result or not result[0].startswith(success_word) or any("failed" in line for line in result):
            self.log.errors.append((now, f"{command}: {output.strip()}"))
            return False
        self.log.completions.append(now)
        return True

    def _until_prompt(self) -> str:
        while PROMPT not in self._buffer:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise EOFError(self._buffer.decode(errors="replace").strip()[-300:] or "no output")
            self._buffer += chunk
        output, _, self._buffer = self._buffer.partition(PROMPT)
        return output.decode(errors="replace")


class UnauthenticatedProber:
    """Tries, in a loop, to log in to every target with no credentials (libiscsi's iscsi-inq)."""

    def __init__(self, targets: list[tuple[str, str]], netns: str, interval_s: float = 0.5) -> None:
        self.targets = targets          # (vip, iqn)
        self.netns = netns
        self.interval_s = interval_s
        self.attempts: list[float] = []
        self.successes: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=6)

    def _run(self) -> None:
        while not self._stop.is_set():
            for vip, iqn in self.targets:
                try:
                    result = subprocess.run(
                        ["ip", "netns", "exec", self.netns, "iscsi-inq", "-i",
                         "iqn.2026-11.org.tgtha.lab:prober", f"iscsi://{vip}/{iqn}/0"],
                        capture_output=True, timeout=5)
                    got_in = result.returncode == 0
                except subprocess.TimeoutExpired:
                    got_in = False
                self.attempts.append(time.monotonic())
                if got_in:
                    self.successes.append((time.monotonic(), iqn))
            self._stop.wait(self.interval_s)
