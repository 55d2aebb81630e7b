"""ocf:tgtha:tgtd - the tgt daemon itself, run as a clone under every target.

Why not ``lsb:tgt`` or ``systemd:tgt``: Debian's init script starts tgtd in the
background and runs ``tgtadm`` at once; under load tgtd is not listening yet,
the script fails, and Pacemaker bans tgtd from the node (measured in the lab:
a total outage). systemd's unit is Type=notify, which is race-free, but it
exists only where systemd runs the node. This agent runs ``tgtd -f`` itself and
is done only when tgtd answers on its management socket with state ``ready``.

Data flow: parameters (binary, control_port, tgtd_options, log_file) ->
which tgtd holds the control port (tgtd's own lock file names its pid) ->
start: adopt it or spawn one and wait until it answers ready;
monitor: one request, answered in time, state ready;
stop: offline, sessions closed, targets deleted, shut down, SIGKILL last.

The placeholder target: tgt accepts a connection and closes it unanswered
while it has no target at all (iscsi_tcp.c accept_connection). A node whose
last target is being moved or restarted then hands every reconnecting
initiator exactly that, and open-iscsi 2.1.8 (Debian 12) can wedge a session
on it for good ("can't bind conn ... retcode -107"; fixed in 2.1.9), which
ends in a read-only file system at replacement_timeout. Measured in the lab's
static-portal variant. A target that admits nobody keeps the list from ever
being empty, so a login to an absent target is answered "target not found"
and the initiator retries.
"""
from __future__ import annotations

import fcntl
import os
import struct
import time

from . import ocf_runtime as ocf
from .ocf_runtime import ERR_CONFIGURED, ERR_GENERIC, ERR_INSTALLED, OCFError
from .tgtd import PLACEHOLDER_TID, TgtdControl, TgtdError, TgtdNotRunning, TgtdUnreachable, socket_path

# Options this agent sets itself: passing them again would run a tgtd it cannot find or watch.
RESERVED_OPTIONS = ("-f", "--foreground", "-D", "--nodaemonize", "-C", "--control-port",
                    "-p", "--pid-file", "-V", "--version", "-h", "--help")
POLL_S = 0.02
# struct flock on Linux (x86-64, arm64): l_type, l_whence, l_start, l_len, l_pid.
_FLOCK = struct.Struct("hhqqi4x")
PLACEHOLDER_IQN = "iqn.2026-12.org.tgtha:placeholder"


class TgtdAgent(ocf.Agent):
    NAME = "tgtd"
    PARAMETERS = {
        "binary": "/usr/sbin/tgtd",
        "control_port": "0",
        "tgtd_options": "",
        "log_file": "",
        "placeholder_target": "true",
        "watch_exit": "true",
    }

    # ------------------------------------------------------------ parameters

    @property
    def binary(self) -> str:
        path = self.param("binary")
        if not path.startswith("/"):
            raise OCFError(ERR_CONFIGURED, f"binary={path!r} must be an absolute path")
        if not os.access(path, os.X_OK) or os.path.isdir(path):
            raise OCFError(ERR_INSTALLED, f"{path} is not installed on this node (Debian package: tgt)")
        return path

    @property
    def control_port(self) -> int:
        value = self.param("control_port")
        if not value.isdigit() or not value.isascii() or int(value) > 32767:
            # tgtd keeps it in a short int
            raise OCFError(ERR_CONFIGURED, f"control_port={value!r} must be a number 0-32767")
        return int(value)

    @property
    def tgtd_options(self) -> list[str]:
        from .proc import split_words
        try:
            options = split_words(self.param("tgtd_options"))
        except ValueError as err:
            raise OCFError(ERR_CONFIGURED, f"tgtd_options cannot be parsed: {err}") from None
        for option in options:
            name = option.split("=", 1)[0]
            if name in RESERVED_OPTIONS or (name.startswith(("-C", "-p")) and not name.startswith("--")):
                raise OCFError(ERR_CONFIGURED, f"tgtd_options: {option!r} is set by the agent "
                                               "(use the control_port parameter; tgtd runs in the "
                                               "foreground so the agent can watch it)")
        return options

    @property
    def log_file(self) -> str:
        path = self.param("log_file") or f"/var/log/tgtd.{self.control_port}.log"
        if not path.startswith("/"):
            raise OCFError(ERR_CONFIGURED, f"log_file={path!r} must be an absolute path")
        return path

    @property
    def placeholder_target(self) -> bool:
        return ocf.boolean("placeholder_target", self.param("placeholder_target"))

    @property
    def watch_exit(self) -> bool:
        return ocf.boolean("watch_exit", self.param("watch_exit"))

    # ------------------------------------------------------------ derived state

    @property
    def lock_path(self) -> str:
        """tgtd takes a POSIX lock on this file for as long as it runs."""
        return socket_path(self.control_port) + ".lock"

    def holder_pid(self) -> int | None:
        """The pid of the tgtd holding this control port (its lock); 0 when the
        holder is in another pid namespace; None when no tgtd holds it."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
            l_type, _, _, _, pid = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_GETLK, query))
        finally:
            os.close(fd)
        return None if l_type == fcntl.F_UNLCK else max(pid, 0)

    def control(self) -> TgtdControl:
        return TgtdControl(self.control_port, self.deadline)

    # ---------------------------------------------------------------- actions

    def validate_all(self) -> int:
        self.binary, self.control_port, self.tgtd_options, self.placeholder_target, self.watch_exit
        log_dir = os.path.dirname(self.log_file)
        if not os.path.isdir(log_dir):
            raise OCFError(ERR_INSTALLED, f"log_file: directory {log_dir} does not exist on this node")
        return ocf.SUCCESS

    def monitor(self) -> int:
        self.binary  # not installed: a probe says "not running" (ocf_runtime)
        ctl = self.control()
        try:
            state = ctl.system_state()
        except TgtdNotRunning:
            return ocf.NOT_RUNNING
        except TgtdUnreachable as err:
            raise OCFError(ERR_GENERIC, f"tgtd (pid {self.holder_pid()}) is hung: {err}") from None
        if state != "ready":
            raise OCFError(ERR_GENERIC, f"tgtd on control port {self.control_port} is {state or 'in no state'}, "
                                        "not ready: it closes every new connection")
        if not self.is_probe and self.placeholder_target:
            try:
                self._ensure_placeholder(ctl)
            except (TgtdError, TgtdUnreachable) as err:
                # tgtd answered its state: it runs. A placeholder it refused (or a slow
                # answer) is not worth a restart of every target on the node; the next
                # monitor tries again.
                ocf.log_warning(f"the placeholder target could not be made again: {err}")
        if not self.is_probe:
            self._ensure_watcher()
        return ocf.SUCCESS

    def start(self) -> int:
        self.validate_all()
        if self.holder_pid() is not None:
            return self._adopt()
        child = self._spawn()
        try:
            self._wait_until_ready(child)
            if self.placeholder_target:
                self._ensure_placeholder(self.control())
        except BaseException:
            self._kill(child)
            raise
        self._ensure_watcher()
        return ocf.SUCCESS

    def stop(self) -> int:
        self.control_port  # a bad one: nothing can have been started (ocf_runtime answers 0)
        from .tgtd_watch import end
        try:
            end(self.control_port)      # a tgtd stopped on purpose is no failure to report
        except OSError as err:
            # Left running, it finds the resource stopped here when tgtd exits, and says nothing.
            ocf.log_warning(f"tgtd's exit watcher could not be ended: {err}")
        pid = self.holder_pid()
        if pid is None:
            self._remove_leftovers()
            return ocf.SUCCESS
        # Keep time for the last resort: the kill and the wait for the exit.
        reserve = min(2.0, self.timeout_s * 0.1)
        ctl = TgtdControl(self.control_port, self.deadline - reserve)
        try:
            self._shut_down(ctl)
        except (TgtdUnreachable, TgtdError, OCFError) as err:
            ocf.log_warning(f"tgtd (pid {pid}) did not shut down cleanly: {err}; killing it")
        if not self._wait_for_exit(pid, self.deadline - reserve):
            ocf.log_warning(f"tgtd (pid {pid}) still runs; sending SIGKILL")
            self._signal(pid, 9)
            if not self._wait_for_exit(pid, self.deadline):
                raise OCFError(ERR_GENERIC, f"tgtd (pid {pid}) did not exit even after SIGKILL")
        self._remove_leftovers()
        return ocf.SUCCESS

    # ---------------------------------------------------------------- start

    def _adopt(self) -> int:
        """A tgtd already holds the control port (an earlier start, or started
        by hand): take it over rather than run a second one that cannot bind."""
        try:
            ctl = self.control()
            if ctl.system_state() != "ready":
                ctl.set_system_state("ready")
            if self.placeholder_target:
                self._ensure_placeholder(ctl)
        except (TgtdUnreachable, TgtdError) as err:
            raise OCFError(ERR_GENERIC, f"a tgtd (pid {self.holder_pid()}) holds control port "
                                        f"{self.control_port} but does not serve it: {err}") from None
        ocf.log_info(f"tgtd (pid {self.holder_pid()}) already runs on control port {self.control_port}: adopted")
        self._ensure_watcher()
        return ocf.SUCCESS

    def _spawn(self) -> int:
        from .proc import spawn_detached
        argv = [self.binary, "--foreground", "--control-port", str(self.control_port), *self.tgtd_options]
        log_fd = os.open(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        null_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        os.write(log_fd, f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {self.resource_name}: "
                         f"{' '.join(argv)}\n".encode())
        try:
            return spawn_detached(argv, {0: null_fd, 1: log_fd, 2: log_fd})
        finally:
            os.close(log_fd)
            os.close(null_fd)

    def _wait_until_ready(self, child: int) -> None:
        ctl = self.control()
        while True:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid:
                raise OCFError(ERR_GENERIC, f"tgtd exited at start ({_describe(status)}): "
                                            f"{self._log_tail()}")
            try:
                state = ctl.system_state()
                if state == "ready":
                    return
                ctl.set_system_state("ready")
            except TgtdNotRunning:
                pass  # still starting: it listens only once its lock and socket exist
            except (TgtdUnreachable, TgtdError) as err:
                if time.monotonic() >= self.deadline:
                    raise OCFError(ERR_GENERIC, f"tgtd (pid {child}) did not become ready: {err}") from None
            if time.monotonic() >= self.deadline:
                raise OCFError(ERR_GENERIC, f"tgtd (pid {child}) did not answer on "
                                            f"{socket_path(self.control_port)} before the start timeout")
            time.sleep(POLL_S)

    def _ensure_placeholder(self, ctl: TgtdControl) -> None:
        """The target that admits nobody (see the module docstring): no ACL, so
        tgt hides it from discovery and refuses every login to it."""
        if ctl.tid_exists(PLACEHOLDER_TID):
            return
        ctl.create_target(PLACEHOLDER_TID, PLACEHOLDER_IQN)
        ocf.log_info(f"placeholder target {PLACEHOLDER_IQN} (tid {PLACEHOLDER_TID}) made: tgtd answers "
                     "logins to absent targets \"target not found\" instead of closing them")

    def _ensure_watcher(self) -> None:
        """The exit watcher (tgtd_watch) of the running tgtd, when Pacemaker runs this
        action (it passes the node's name) and watch_exit is on."""
        node = self.meta("on_node")
        if not (node and self.watch_exit):
            return
        from . import tgtd_watch
        tgtd = self.holder_pid()
        if not tgtd:
            return  # none, or in another pid namespace: nothing this node can watch
        watched = tgtd_watch.watching(self.control_port)
        if watched is None or watched[1] != tgtd:
            try:
                tgtd_watch.spawn(self.control_port, tgtd, self.resource_name, node)
            except OSError as err:
                # A helper: without it the monitor still sees a dead tgtd, only later.
                ocf.log_warning(f"tgtd's exit watcher could not be started: {err}")

    def _kill(self, child: int) -> None:
        """A failed start leaves no tgtd of its own behind."""
        self._signal(child, 9)
        try:
            os.waitpid(child, 0)
        except ChildProcessError:
            pass
        self._remove_leftovers()

    def _log_tail(self) -> str:
        try:
            with open(self.log_file, "rb") as log:
                log.seek(max(0, os.fstat(log.fileno()).st_size - 400))
                lines = log.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return f"see {self.log_file}"
        return " / ".join([line for line in lines if not line.startswith("--- ")][-3:])

    # ---------------------------------------------------------------- stop

    def _shut_down(self, ctl: TgtdControl) -> None:
        """The orderly way out: no new connection, no session, no target, then exit."""
        from .sessions import close_sessions
        targets = [t for t in ctl.targets() if t.tid != PLACEHOLDER_TID]
        if targets:
            # Offline: tgtd closes every new connection at accept while these go.
            ctl.set_system_state("offline")
            ocf.log_warning(f"stopping tgtd with {len(targets)} target(s) still defined: "
                            + ", ".join(t.iqn for t in targets))
            for target in targets:
                ctl.set_target_state(target.tid, "offline")
            for target in targets:
                close_sessions(ctl, target, [], ctl.deadline)   # through tgtd's own portals
            for target in targets:
                ctl.delete_target(target.tid)
        # The placeholder goes last, right before the exit: no window of an empty
        # target list (connections closed unanswered) but the one between two requests.
        ctl.delete_target(PLACEHOLDER_TID)
        ctl.shut_down()

    def _wait_for_exit(self, pid: int, until: float) -> bool:
        while self.holder_pid() == pid:
            if time.monotonic() >= until:
                return False
            time.sleep(POLL_S)
        return True

    @staticmethod
    def _signal(pid: int, signal_number: int) -> None:
        if pid <= 0:
            return  # never 0 or -1: those mean our process group, or everything
        try:
            os.kill(pid, signal_number)
        except ProcessLookupError:
            pass

    def _remove_leftovers(self) -> None:
        """tgtd leaves its socket and lock file behind when it is killed."""
        if self.holder_pid() is not None:
            return
        for path in (socket_path(self.control_port), self.lock_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def main() -> None:
    ocf.main(TgtdAgent)
