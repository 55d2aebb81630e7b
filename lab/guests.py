"""Kernel initiators: Linux guests (QEMU, TCG) running open-iscsi, a filesystem
on every LUN and the lab's writer (guest/writer.c) on each.

Each guest boots Debian's kernel with the lab's initramfs (guest_image.py) in
the client namespace, its tap on a bridge there with the client's own link
to the lab's switch, and its own address. Three serial ports: the kernel
console (kept as ``guest-<n>.dmesg`` and read for kernel errors as it comes),
a command channel, and the writers' record lines, which the host timestamps
as they arrive (the guest's clock is not trusted). Every guest logs in to
every target with the one shared CHAP account; each LUN's filesystem is
mounted and written by one guest only (ext4 and xfs are not cluster file
systems): LUN k of the run goes to guest k mod guests, ext4 on even k, xfs on
odd.

With multipath (LAB_MULTIPATH) a guest has a second NIC on the second
network, logs in to every target through both of its portals, and runs udevd
and multipathd (``no_path_retry queue``): each LUN's file system sits on its
dm-multipath map, whose WWID and paths the lab checks after every failover.
"""
from __future__ import annotations

import base64
import shlex
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from initiators import IoLog, Lun

GUEST_MEMORY_MB = 160
# udevd, its workers (each running multipath -u) and multipathd (which locks its memory):
# at 160 MiB the OOM killer took iscsid, and no session came back.
MULTIPATH_GUEST_MEMORY_MB = 320
# Each LUN is a session, a mounted ext4 or xfs and a writer: at 160 MiB a guest with 48
# LUNs (the scale lab's 96 over two guests) had iscsid taken by the OOM killer.
GUEST_MEMORY_MB_PER_LUN_OVER_6 = 10
RECORDS = 1024                    # ring of 4 KiB records per LUN: 4 MiB written round and round
ERRNO_EROFS = 30

# What the kernel says when an I/O error, a read-only remount or an xfs
# shutdown reaches a file system (the failures this lab exists to rule out).
KERNEL_IO_ERRORS = ("I/O error", "rejecting I/O to offline device", "Logical unit not supported")
READ_ONLY = ("Remounting filesystem read-only", "xfs_do_force_shutdown", "Filesystem has been shut down",
             "Corruption of in-memory data detected")
# open-iscsi 2.1.8's endless reconnect loop (fixed in 2.1.9): the session never comes back.
ISCSID_WEDGED = ("can't bind conn",)


@dataclass
class KernelEvent:
    at: float
    kind: str                     # "io_error", "path_error", "read_only" or "wedged"
    line: str


class KernelLun:
    """One LUN as its guest's writer sees it; the lab reads ``log`` like a libiscsi initiator's."""

    def __init__(self, lun: Lun, guest: "Guest", filesystem: str) -> None:
        self.lun = lun
        self.guest = guest
        self.filesystem = filesystem
        self.log = IoLog()
        self.device = ""
        self.wwid = ""

    @property
    def mount_point(self) -> str:
        return "/mnt/" + self.lun.name.replace("/", "-")

    def start(self) -> None:
        """The writer runs in the guest from setup on."""

    def stop(self) -> None:
        """The guest's end stops its writers."""


class Guest:
    def __init__(self, index: int, address: str, prefix_length: int, netns: str, bridge: str,
                 image: tuple[Path, Path], run_dir: Path, address2: str = "", bridge2: str = "") -> None:
        self.index = index
        self.address2 = address2        # on bridge2: the second network (multipath)
        self.bridge2 = bridge2
        self.name = f"guest{index}"
        self.address = address
        self.prefix_length = prefix_length
        self.netns = netns
        self.bridge = bridge
        self.kernel, self.initramfs = image
        self.run_dir = run_dir
        self.tap = f"tg{index}"
        self.luns: dict[str, KernelLun] = {}
        self.events: list[KernelEvent] = []
        self.login_failures: list[str] = []
        self.missing_luns: list[str] = []
        self.proc: subprocess.Popen | None = None
        self._command: socket.socket | None = None
        self._command_buffer = b""
        self._sequence = 0
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.lun_count = 0                      # set by start_guests: its share of the LUNs

    @property
    def initiator_name(self) -> str:
        return f"iqn.2026-11.org.tgtha.lab:{self.name}"

    def _socket_path(self, what: str) -> Path:
        return self.run_dir / f"{self.name}.{what}.sock"

    # ------------------------------------------------------------ life

    @property
    def multipath(self) -> bool:
        return bool(self.address2)

    def _taps(self) -> list[tuple[str, str]]:
        return [(self.tap, self.bridge)] + ([(self.tap + "b", self.bridge2)] if self.multipath else [])

    @property
    def memory_mb(self) -> int:
        base = MULTIPATH_GUEST_MEMORY_MB if self.multipath else GUEST_MEMORY_MB
        return base + GUEST_MEMORY_MB_PER_LUN_OVER_6 * max(0, self.lun_count - 6)

    def start(self) -> None:
        for tap, bridge in self._taps():
            subprocess.run(["ip", "-n", self.netns, "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
            subprocess.run(["ip", "-n", self.netns, "link", "set", tap, "master", bridge, "up"], check=True)
        sockets = {what: self._socket_path(what) for what in ("console", "command", "records")}
        for path in sockets.values():
            path.unlink(missing_ok=True)
        argv = ["ip", "netns", "exec", self.netns, "qemu-system-x86_64",
                "-accel", "tcg,tb-size=32", "-cpu", "max", "-smp", "1",
                "-m", str(self.memory_mb), "-M", "pc",
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-kernel", str(self.kernel), "-initrd", str(self.initramfs),
                "-append", f"console=ttyS0 panic=-1 lab_name={self.name} "
                           f"lab_ip={self.address}/{self.prefix_length}"
                           + (f" lab_ip2={self.address2}/{self.prefix_length}" if self.multipath else "")]
        for number, what in enumerate(("console", "command", "records")):
            argv += ["-chardev", f"socket,id={what},path={sockets[what]},server=on,wait=off",
                     "-serial", f"chardev:{what}"]
        for number, (tap, _) in enumerate(self._taps()):
            argv += ["-netdev", f"tap,id=net{number},ifname={tap},script=no,downscript=no",
                     "-device", f"virtio-net-pci,netdev=net{number},mac=52:54:00:77:{number:02x}:{self.index:02x}"]
        log = open(self.run_dir / f"{self.name}.qemu.log", "w")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self._threads = [threading.Thread(target=self._read_console, name=f"{self.name}-console", daemon=True),
                         threading.Thread(target=self._read_records, name=f"{self.name}-records", daemon=True)]
        for thread in self._threads:
            thread.start()
        self._command = self._connect(sockets["command"], 30)
        self._expect_ready(120)

    def stop(self) -> None:
        self._stopping.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()
        if self._command is not None:
            self._command.close()
        for thread in self._threads:
            thread.join(timeout=5)
        for tap, _ in self._taps():
            subprocess.run(["ip", "-n", self.netns, "link", "del", tap], capture_output=True)

    def _connect(self, path: Path, seconds: float) -> socket.socket:
        deadline = time.monotonic() + seconds
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                    raise RuntimeError(f"{self.name}: QEMU did not open {path.name} "
                                       f"(see {self.name}.qemu.log)") from None
                time.sleep(0.1)

    # ------------------------------------------------------------ command channel

    def _line(self, seconds: float) -> str:
        self._command.settimeout(seconds)
        while b"\n" not in self._command_buffer:
            chunk = self._command.recv(65536)
            if not chunk:
                raise RuntimeError(f"{self.name}: command channel closed")
            self._command_buffer += chunk
        line, _, self._command_buffer = self._command_buffer.partition(b"\n")
        return line.decode(errors="replace").strip()

    def _expect_ready(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._line(max(0.1, deadline - time.monotonic())).startswith("READY"):
            pass

    def run(self, script: str, seconds: float = 60) -> tuple[int, str]:
        """Run a shell script in the guest (busybox sh); (exit status, output).
        A script still running after ``seconds`` raises RuntimeError; its late
        answer is recognised by its id and skipped by the next call."""
        self._sequence += 1
        payload = base64.b64encode(script.encode()).decode()
        self._command.sendall(f"RUN {self._sequence} {payload}\n".encode())
        deadline = time.monotonic() + seconds
        while True:
            try:
                line = self._line(max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                raise RuntimeError(f"{self.name}: no answer in {seconds:.0f}s") from None
            words = line.split(" ", 3)
            if words[0] == "DONE" and len(words) >= 3 and words[1] == str(self._sequence):
                return int(words[2]), base64.b64decode(words[3] if len(words) == 4 else "").decode(errors="replace")

    def check(self, script: str, seconds: float = 60) -> str:
        rc, output = self.run(script, seconds)
        if rc != 0:
            raise RuntimeError(f"{self.name}: exit {rc}: {output.strip()[-800:]}")
        return output

    # ------------------------------------------------------------ what comes out

    def _lines(self, what: str):
        """(arrival time, line) from one of the guest's serial ports until QEMU goes."""
        buffer = b""
        with self._connect(self._socket_path(what), 30) as sock:
            while True:
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                now = time.monotonic()
                for raw in lines:
                    yield now, raw.decode(errors="replace").rstrip("\r")

    def _read_console(self) -> None:
        with open(self.run_dir / f"guest-{self.index}.dmesg", "w") as dmesg:
            for now, line in self._lines("console"):
                dmesg.write(line + "\n")
                dmesg.flush()
                if any(marker in line for marker in KERNEL_IO_ERRORS):
                    # Under multipath an error on one path (an sd device) goes back to
                    # dm-multipath, which retries or queues it: counted apart. One on
                    # the map or the file system is the application's.
                    on_a_path = self.multipath and " sd" in line.replace(",", " ")
                    self.events.append(KernelEvent(now, "path_error" if on_a_path else "io_error", line))
                if any(marker in line for marker in READ_ONLY):
                    self.events.append(KernelEvent(now, "read_only", line))
                if any(marker in line for marker in ISCSID_WEDGED):
                    self.events.append(KernelEvent(now, "wedged", line))

    def _read_records(self) -> None:
        for now, line in self._lines("records"):
            self._record(now, line.strip())

    def _record(self, now: float, line: str) -> None:
        words = line.split()
        if len(words) < 3 or words[1] not in self.luns:
            return
        log = self.luns[words[1]].log
        kind = words[0]
        if kind in ("W", "R"):
            log.completions.append(now)
        elif kind == "M":
            log.mismatches.append((now, line))
        elif kind == "E":
            log.errors.append((now, line))
            if len(words) >= 5 and words[4] == str(ERRNO_EROFS):
                self.events.append(KernelEvent(now, "read_only", line))

    # ------------------------------------------------------------ iSCSI and file systems

    def log_in(self, targets: list[tuple[list[str], str, str]], password: str, replacement_timeout_s: int,
               time2wait: str = "") -> None:
        """CHAP in iscsid.conf (the one credential slot: the first target's account), a
        session per target and portal (``targets``: (portal addresses, IQN, CHAP user));
        a target with another account gets it in its node record."""
        default_user = targets[0][2]
        settings = {"node.session.auth.authmethod": "CHAP", "node.session.auth.username": default_user,
                    "node.session.auth.password": password,
                    "node.session.timeo.replacement_timeout": str(replacement_timeout_s)}
        if time2wait:
            settings["node.session.iscsi.DefaultTime2Wait"] = time2wait
        lines = ["cat >> /etc/iscsi/iscsid.conf <<'EOF'"] + [f"{k} = {v}" for k, v in settings.items()] + ["EOF"]
        lines += [f"echo InitiatorName={self.initiator_name} > /etc/iscsi/initiatorname.iscsi",
                  "modprobe iscsi_tcp && modprobe sd_mod",
                  # In the foreground iscsid writes its warnings and errors to stderr (a daemon's
                  # go to syslog, which the guest has not): into the kernel log with them, where
                  # the host reads them as they come (ISCSID_WEDGED) and keeps them in guest-N.dmesg.
                  "(iscsid -f 2>&1 >/dev/null | while IFS= read -r line; do echo \"$line\" >/dev/kmsg; done)"
                  " </dev/null >/dev/null 2>&1 &",
                  "sleep 0.5"]
        if self.multipath:
            # udevd first: multipath takes only devices udev has seen.
            lines += ["/lib/systemd/systemd-udevd --daemon --children-max=2",
                      "modprobe dm_multipath && modprobe dm_service_time && modprobe dm_round_robin",
                      "multipathd"]
        self.check("set -e\n" + "\n".join(lines), 60)
        self.login_failures = []
        for portals, iqn, user in targets:
            for portal in portals:
                node = f"-m node -T {shlex.quote(iqn)} -p {portal}:3260"
                own = "" if user == default_user else \
                    f" && iscsiadm {node} -o update -n node.session.auth.username -v {shlex.quote(user)}"
                # open-iscsi retries a first login 8 x 15 s: bounded here, and reported (its LUNs
                # stay without I/O), not fatal: STACK=stock gets here.
                rc, output = self.run(f"iscsiadm {node} -o new >/dev/null{own} && timeout 40 iscsiadm {node} --login",
                                      60)
                if rc != 0:
                    last = output.strip().splitlines()[-1] if output.strip() else f"exit {rc} (timed out?)"
                    self.login_failures.append(f"{iqn}: {portal}: {last}")

    def devices(self) -> dict[tuple[str, int], tuple[str, str]]:
        """(target IQN, LUN) -> (block device, WWID), from sysfs: the SCSI disk, or with
        multipath the dm map holding its paths (WWID: the map's, as multipath names it).
        Each disk is rescanned first: the kernel reads VPD page 0x83 when it finds a
        disk and keeps it, so a LUN deleted and made again with another identity under
        the same number would show its first WWID forever (the migrate scenario's
        no-identity control found it: 12 LUNs made again with new WWIDs, 0 seen)."""
        listing = self.check(
            "for s in /sys/class/iscsi_session/session*; do [ -e $s ] || continue; t=$(cat $s/targetname);"
            " for b in $s/device/target*/*:*:*:*/block/*; do [ -e $b ] || continue;"
            " l=${b%/block/*}; l=${l##*:}; d=${b##*/};"
            # only a disk whose session is up: a blocked one would hold the rescan until it is back
            " [ \"$(cat /sys/block/$d/device/state)\" = running ] && echo 1 > /sys/block/$d/device/rescan 2>/dev/null;"
            " h=$(ls /sys/block/$d/holders | head -1);"
            " u=-; [ -n \"$h\" ] && u=$(cat /sys/block/$h/dm/uuid);"
            " echo $t $l $d ${h:--} $u $(cat /sys/block/$d/device/wwid); done; done")
        found = {}
        for line in listing.splitlines():
            words = line.split(maxsplit=5)
            if len(words) != 6 or not words[1].isdigit():
                continue
            iqn, lun, disk, holder, uuid, wwid = words
            if not self.multipath:
                found[(iqn, int(lun))] = (disk, wwid)
            elif holder != "-" and uuid.startswith("mpath-"):
                found[(iqn, int(lun))] = (holder, uuid.removeprefix("mpath-"))
        return found

    def paths_not_active(self, wait_s: float = 30) -> list[str]:
        """Multipath maps with fewer active paths than the guest has networks (a path
        per portal), after up to ``wait_s`` for multipathd's checker to reinstate the
        failed ones."""
        portals = len(self._taps())
        deadline = time.monotonic() + wait_s
        while True:
            output = self.check("dmsetup status --target multipath", 30)
            short = []
            for line in output.splitlines():
                name, _, status = line.partition(": ")
                words = status.split()
                # ... <major:minor> <A|F> <fail count> ... per path
                active = sum(1 for word, state in zip(words, words[1:]) if ":" in word and state == "A")
                if active < portals:
                    short.append(f"{name}: {active} of {portals} paths active")
            if not short or time.monotonic() > deadline:
                return short
            time.sleep(1)

    def mount_and_write(self, gap_ms: int) -> None:
        """mkfs, mount and a writer on each of this guest's LUNs (devices found first:
        the kernel scans a new session's LUNs after the login returns)."""
        logged_in = {lun.lun.iqn for lun in self.luns.values()
                     if not any(f.startswith(lun.lun.iqn + ":") for f in self.login_failures)}
        wanted = {(lun.lun.iqn, lun.lun.lun) for lun in self.luns.values() if lun.lun.iqn in logged_in}
        deadline = time.monotonic() + 60
        devices = self.devices()
        while not wanted <= devices.keys() and time.monotonic() < deadline:
            time.sleep(0.5)
            devices = self.devices()
        script = ["set -e"]
        for lun in self.luns.values():
            if (lun.lun.iqn, lun.lun.lun) not in devices:
                self.missing_luns.append(lun.lun.name)     # reported: no I/O on it
                continue
            lun.device, lun.wwid = devices[(lun.lun.iqn, lun.lun.lun)]
            dev = f"/dev/{lun.device}"
            if lun.filesystem == "ext4":
                script.append(f"mkfs.ext4 -q -F {dev}")
                options = "-o errors=remount-ro"
            else:
                # xfsprogs refuses file systems under 300 MB but for its test suites.
                script.append(f"TEST_DIR=1 TEST_DEV=1 QA_CHECK_FS=1 mkfs.xfs -q -f {dev}")
                options = ""
            script += [f"mkdir -p {lun.mount_point}", f"mount -t {lun.filesystem} {options} {dev} {lun.mount_point}",
                       f"writer {shlex.quote(lun.lun.name)} {lun.mount_point}/records {RECORDS} {gap_ms}"
                       " >/dev/ttyS2 2>&1 &"]
        self.check("\n".join(script), max(180, 8 * len(self.luns)))   # mkfs under TCG: ~2 s a LUN

    def sessions_not_logged_in(self, wait_s: float = 30) -> list[str]:
        """Targets whose session is not LOGGED_IN, after up to ``wait_s`` for them to be:
        a session with no I/O of its own notices a failover only at its next NOP-Out."""
        deadline = time.monotonic() + wait_s
        while True:
            output = self.check("for s in /sys/class/iscsi_session/session*; do [ -e $s ] || continue;"
                                " echo $(cat $s/targetname) $(cat $s/state); done", 30)
            down = [line.split()[0] for line in output.splitlines() if line.split()[1:] != ["LOGGED_IN"]]
            if not down or time.monotonic() > deadline:
                return down
            time.sleep(1)


@dataclass
class GuestFleet:
    """The guests of a run, and the LUN views the lab measures."""
    guests: list[Guest] = field(default_factory=list)
    luns: list[KernelLun] = field(default_factory=list)

    def events_between(self, start: float, end: float, kind: str) -> list[KernelEvent]:
        return [e for g in self.guests for e in g.events if start <= e.at <= end and e.kind == kind]

    def stop(self) -> None:
        for guest in self.guests:
            guest.stop()


def start_guests(count: int, addresses: list[str], prefix_length: int, netns: str, bridge: str,
                 run_dir: Path, progress=print, addresses2: list[str] = (), bridge2: str = "",
                 luns: int = 0) -> GuestFleet:
    """``addresses2`` and ``bridge2``: a second NIC each, on the second network (multipath);
    ``luns``: how many LUNs the fleet will have (each guest's memory grows with its share)."""
    from guest_image import ensure_image
    image = ensure_image(progress)
    fleet = GuestFleet()
    try:
        for index in range(count):
            guest = Guest(index + 1, addresses[index], prefix_length, netns, bridge, image, run_dir,
                          addresses2[index] if addresses2 else "", bridge2)
            guest.lun_count = -(-luns // count)
            fleet.guests.append(guest)
            guest.start()
    except BaseException:
        fleet.stop()
        raise
    return fleet


def assign_luns(fleet: GuestFleet, luns: list[Lun]) -> None:
    for number, lun in enumerate(luns):
        guest = fleet.guests[number % len(fleet.guests)]
        view = KernelLun(lun, guest, "ext4" if number % 2 == 0 else "xfs")
        guest.luns[lun.name] = view
        fleet.luns.append(view)


