"""ocf:tgtha:portblock - block and unblock ports around a service's failover.

Data flow of every action: parameters are parsed into properties (a bad one
raises OCFError(ERR_CONFIGURED)) -> the firewall backend is chosen -> the
rules are changed under the node-wide firewall mutex -> the result is read
back and checked -> for a TCP block, the connections on the port are closed.
"""
from __future__ import annotations

import os
import sys
import time

from . import ocf_runtime as ocf
from .mutex import state_dir
from .netaddr import Network, PortSet
from .ocf_runtime import ERR_CONFIGURED, ERR_GENERIC, ERR_INSTALLED, OCFError

TYPE_CHECKING = False  # typing costs ~16 ms to import; type checkers read this as typing's
if TYPE_CHECKING:
    from .firewall import BlockRule, Firewall

PROMOTION_SCORE_PROMOTED = "10"
PROMOTION_SCORE_UNPROMOTED = "5"

# After an unblock's start its clients reconnect over the next seconds (open-iscsi
# 2 s after its connection error, libiscsi at its next retry): recorded then, not
# only at the next monitor (an interval later), they are tickled by the node that
# takes the address over after a power-off soon after this start.
RECORD_AFTER_START_S = (3.0, 7.0)
# A stop waits this long at most for a record in progress (a hung shared
# tickle_dir must not make a stop fail); past it, the stop goes on without.
RECORD_LOCK_WAIT_S = 2.0


def _mtime_ns(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


class Portblock(ocf.Agent):
    NAME = "portblock"
    PARAMETERS = {
        "protocol": "",
        "portno": "",
        "action": "",
        "ip": "0.0.0.0/0",
        "direction": "in",
        "method": "drop",
        "status_check": "pseudo",
        "firewall": "auto",
        "close_connections": "true",
        "reset_local_on_unblock_stop": "false",
        "tickle_dir": "",
        "sync_script": "",
    }
    ACTIONS = {**ocf.Agent.ACTIONS, "promote": "promote", "demote": "demote"}

    # ------------------------------------------------------------ parameters

    @property
    def protocol(self) -> str:
        value = self.param("protocol")
        if value not in ("tcp", "udp"):
            raise OCFError(ERR_CONFIGURED, f"protocol={value!r}: must be tcp or udp")
        return value

    @property
    def ports(self) -> PortSet:
        try:
            return PortSet.parse(self.param("portno"))
        except ValueError as err:
            raise OCFError(ERR_CONFIGURED, f"portno: {err}") from None

    @property
    def network(self) -> Network:
        try:
            return Network.parse(self.param("ip"))
        except ValueError as err:
            raise OCFError(ERR_CONFIGURED, f"ip: {err}") from None

    @property
    def configured_action(self) -> str:
        value = self.param("action")
        if value not in ("block", "unblock"):
            raise OCFError(ERR_CONFIGURED, f"action={value!r}: must be block or unblock")
        return value

    @property
    def direction(self) -> str:
        value = self.param("direction")
        if value not in ("in", "out", "both"):
            raise OCFError(ERR_CONFIGURED, f"direction={value!r}: must be in, out or both")
        return value

    @property
    def method(self) -> str:
        value = self.param("method")
        if value not in ("drop", "reject", "silent", "reset"):
            raise OCFError(ERR_CONFIGURED, f"method={value!r}: must be drop, reject, silent or reset")
        if value == "silent" and (self.protocol != "tcp" or self.direction != "both"):
            # in alone lets the resets of closed connections out; out alone lets clients reach the service
            raise OCFError(ERR_CONFIGURED, "method=silent needs protocol=tcp and direction=both")
        if value == "reset" and (self.protocol != "tcp" or self.direction != "in"):
            raise OCFError(ERR_CONFIGURED, "method=reset needs protocol=tcp and direction=in")
        return value

    @property
    def status_check(self) -> str:
        value = self.param("status_check")
        if value not in ("pseudo", "rule"):
            raise OCFError(ERR_CONFIGURED, f"status_check={value!r}: must be pseudo or rule")
        return value

    @property
    def close_connections(self) -> bool:
        return ocf.boolean("close_connections", self.param("close_connections"))

    @property
    def reset_local_on_unblock_stop(self) -> bool:
        return ocf.boolean("reset_local_on_unblock_stop", self.param("reset_local_on_unblock_stop"))

    @property
    def tickle_dir(self) -> str:
        return self.param("tickle_dir")

    @property
    def sync_command(self) -> list[str]:
        """sync_script split as a shell would; [] when unset. The program must run here."""
        value = self.param("sync_script")
        if not value:
            return []
        from .proc import split_words
        try:
            argv = split_words(value)
        except ValueError as err:
            raise OCFError(ERR_CONFIGURED, f"sync_script cannot be parsed: {err}") from None
        from .proc import find_binary
        if not argv or find_binary(argv[0]) is None:
            raise OCFError(ERR_INSTALLED, f"sync_script: {argv[0] if argv else value!r} is not an "
                                          "executable program on this node")
        return argv

    # --------------------------------------------------------- derived state

    @property
    def rules(self) -> list[BlockRule]:
        from .firewall import BlockRule
        chains = {"in": ["INPUT"], "out": ["OUTPUT"], "both": ["INPUT", "OUTPUT"]}[self.direction]
        protocol, ports, network, method = self.protocol, self.ports, self.network, self.method
        if method == "silent":
            # Clients' packets dropped; the service's side rejected (a local reset), resets
            # kept in; new connection attempts refused at once (ICMP: a reset would stay in),
            # or a client already reconnecting would back off on unanswered SYNs (1, 2, 4, 8 s:
            # a 17 s pause was seen). Inserted last: above the drop.
            return [BlockRule("INPUT", protocol, ports, network, "drop"),
                    BlockRule("OUTPUT", protocol, ports, network, "reject", resets_pass=False),
                    BlockRule("INPUT", protocol, ports, network, "reject", syn_only=True)]
        if method == "reset":
            # A client's packets on a connection it believes open are answered with a
            # reset: on a node taking the address over (no such connection here) it
            # learns at once that its old one is gone, and reconnects while the
            # service is still being made; its connection attempts are dropped
            # until the unblock, as with drop.
            return [BlockRule("INPUT", protocol, ports, network, "drop", syn_only=True),
                    BlockRule("INPUT", protocol, ports, network, "reject", not_syn=True)]
        return [BlockRule(chain, protocol, ports, network, method) for chain in chains]

    @property
    def backend(self) -> str:
        """The concrete firewall backend: the one recorded when the rule pair
        first started, for as long as one of the pair runs (iptables may be
        switched between nft and legacy, installed or removed meanwhile: the
        rule stays where it was made), else what ``firewall`` means now."""
        if not hasattr(self, "_backend"):
            from .firewall import resolve
            recorded = self._recorded_backend()
            self._backend = recorded or resolve(self.param("firewall"), self.network.family)
        return self._backend

    @property
    def firewall(self) -> Firewall:
        if not hasattr(self, "_firewall"):
            from .firewall import select_firewall
            self._firewall = select_firewall(self.backend, self.network.family)
        return self._firewall

    @property
    def _backend_file(self) -> str:
        return f"{self._state_base}_firewall"

    def _recorded_backend(self) -> str | None:
        from .firewall import FIREWALLS
        try:
            with open(self._backend_file) as record:
                name = record.read().strip()
        except (OSError, ValueError):
            return None
        return name if name in FIREWALLS and name != "auto" else None

    def _record_backend(self) -> None:
        if self._recorded_backend() != self.backend:
            os.makedirs(os.path.dirname(self._backend_file), exist_ok=True)
            temporary = f"{self._backend_file}.{os.getpid()}"
            with open(temporary, "w") as record:
                record.write(self.backend + "\n")
            os.replace(temporary, self._backend_file)

    def _sweep_other_backends(self) -> None:
        """Remove copies of our rules that another backend holds: left there
        when the node's iptables changed while no record said where they were."""
        from .firewall import concrete_backends, resolve, select_firewall
        now = resolve(self.param("firewall"), self.network.family)
        others = [b for b in concrete_backends(self.network.family) if b not in (self.backend, now)]
        if self._recorded_backend() is not None and now == self.backend:
            return  # nothing changed since the record: nothing can be elsewhere
        for name in others + ([now] if now != self.backend else []):
            try:
                other = select_firewall(name, self.network.family)
                with other.locked(self.deadline):
                    for rule in self.rules:
                        for _copy in range(other.count(rule, self.deadline)):
                            other.delete(rule, self.deadline)
                            ocf.log_warning(f"{self._describe()}: removed a stale copy from {name}")
            except OCFError as err:
                ocf.log_warning(f"{self._describe()}: cannot look for stale rules in {name}: {err.reason}")

    @property
    def _state_base(self) -> str:
        # Derived from the parameters the block and unblock instances share,
        # not from the resource name: each instance must see the other's state.
        raw = "portblock_%s_%s_%s_%s" % (self.param("protocol"), self.param("portno"),
                                         self.param("ip"), self.param("direction"))
        safe = "".join(c if c.isalnum() or c in "._" else "_" for c in raw)
        return os.path.join(state_dir(), safe)

    def _state_file(self, action: str) -> str:
        return f"{self._state_base}_{action}"

    @property
    def _role_file(self) -> str:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in self.resource_name)
        return os.path.join(state_dir(), f"portblock-role_{safe}")

    # ---------------------------------------------------------------- actions

    def validate_all(self) -> int:
        self._validate()
        return ocf.SUCCESS

    def _validate(self) -> None:
        self.rules  # protocol, ports, ip, direction, method
        self.status_check
        self.close_connections
        action = self.configured_action
        if self.reset_local_on_unblock_stop and action != "unblock":
            raise OCFError(ERR_CONFIGURED, "reset_local_on_unblock_stop is only relevant with action=unblock")
        if self.tickle_dir:
            if action != "unblock":
                raise OCFError(ERR_CONFIGURED, "tickle_dir is only useful with action=unblock")
            from .tickle import checked_tickle_dir
            checked_tickle_dir(self.tickle_dir)
        self.sync_command
        self.firewall

    def start(self) -> int:
        self._validate()
        if self.is_promotable:
            self._record_backend()
            self._apply(self._opposite(self.configured_action))
            self._set_role("unpromoted", PROMOTION_SCORE_UNPROMOTED)
            return ocf.SUCCESS
        action = self.configured_action
        self._record_backend()
        self._apply(action)
        if action == "unblock":
            self._sweep_other_backends()
            self._forget_time_wait()
            self._tickle_remote()
        started = self._touch(self._state_file(action))
        if action == "unblock":
            self._record_connections_later(started)
        return ocf.SUCCESS

    def stop(self) -> int:
        action = self.configured_action
        if action == "unblock":
            self._save_connections_at_stop()
            self._block(stopping_unblock=True)
        else:
            self._unblock()
            self._sweep_other_backends()
        if self.is_promotable:
            self._forget_role()
        else:
            self._remove(self._state_file(action))
        if not any(os.path.exists(self._state_file(a)) for a in ("block", "unblock")):
            self._remove(self._backend_file)    # the pair is down: the next start decides anew
        return ocf.SUCCESS

    def _require_promotable(self) -> None:
        if not self.is_promotable:
            raise OCFError(ocf.ERR_UNIMPLEMENTED, f"{self.action} needs a promotable clone")

    def promote(self) -> int:
        self._require_promotable()
        self._validate()
        self._apply(self.configured_action)
        self._set_role("promoted", PROMOTION_SCORE_PROMOTED)
        return ocf.SUCCESS

    def demote(self) -> int:
        self._require_promotable()
        self._validate()
        self._apply(self._opposite(self.configured_action))
        self._set_role("unpromoted", PROMOTION_SCORE_UNPROMOTED)
        return ocf.SUCCESS

    def monitor(self) -> int:
        self._validate_cheaply()
        if self.is_promotable:
            return self._monitor_promotable()
        action = self.configured_action
        own = _mtime_ns(self._state_file(action))
        if self.status_check == "pseudo":
            # The stock semantics: a pseudo resource, running while started.
            if own is not None and action == "unblock" and self.tickle_dir and not self.is_probe:
                self._save_connections()
            return ocf.SUCCESS if own is not None else ocf.NOT_RUNNING
        other = _mtime_ns(self._state_file(self._opposite(action)))
        taken_over = own is not None and other is not None and other > own
        if action == "block":
            if taken_over:
                return ocf.SUCCESS  # the unblock partner removed our rule after we set it
            if self._rules_present() == "all":
                return ocf.SUCCESS
            if own is not None:
                ocf.log_warning(f"{self._describe()}: block rule missing (removed outside the cluster?)")
            return ocf.NOT_RUNNING
        if own is None:
            return ocf.NOT_RUNNING
        if self._rules_present() != "none":
            ocf.log_warning(f"{self._describe()}: unblocked, but a block rule is present")
            return ocf.NOT_RUNNING
        if self.tickle_dir and not self.is_probe:
            self._save_connections()
        return ocf.SUCCESS

    def _validate_cheaply(self) -> None:
        """What monitor checks on every call: the parameters parse (no firewall access)."""
        self.protocol, self.ports, self.network, self.direction, self.method, self.status_check

    def _monitor_promotable(self) -> int:
        try:
            with open(self._role_file) as role_file:
                role = role_file.read().strip()
        except FileNotFoundError:
            return ocf.NOT_RUNNING
        promoted = role == "promoted"
        expected = self.configured_action if promoted else self._opposite(self.configured_action)
        present = self._rules_present()
        if present == ("all" if expected == "block" else "none"):
            return ocf.RUNNING_PROMOTED if promoted else ocf.SUCCESS
        reason = f"{self._describe()}: {role} instance should {expected}, but rules present: {present}"
        if promoted:
            raise OCFError(ocf.FAILED_PROMOTED, reason)
        ocf.log_warning(reason)
        return ocf.NOT_RUNNING

    # ---------------------------------------------------------- the firewall

    def _apply(self, action: str) -> None:
        if action == "block":
            self._block(stopping_unblock=False)
        else:
            self._unblock()

    def _rules_present(self) -> str:
        """"all", "none" or "some" of our rules are in the firewall."""
        firewall, deadline = self.firewall, self.deadline
        with firewall.locked(deadline):
            counts = firewall.counts(self.rules, deadline)
        if all(counts):
            return "all"
        return "some" if any(counts) else "none"

    def _block(self, stopping_unblock: bool) -> None:
        rules, firewall, deadline = self.rules, self.firewall, self.deadline
        resetting = stopping_unblock and self.protocol == "tcp" and self.reset_local_on_unblock_stop
        temporary: list[BlockRule] = []
        if resetting:
            from .firewall import BlockRule
            reset = BlockRule("OUTPUT", "tcp", self.ports, self.network, "reject",
                              resets_pass=self.method != "silent")
            if reset.tag not in {r.tag for r in rules}:
                temporary = [reset]     # only while the connections close
        with firewall.locked(deadline):
            self._ensure_counts(temporary, rules, [])
        if self.protocol == "tcp" and (self.close_connections or resetting):
            self._close_connections()
        if temporary:
            with firewall.locked(deadline):
                self._ensure_counts([], [], temporary)

    def _unblock(self) -> None:
        with self.firewall.locked(self.deadline):
            self._ensure_counts([], [], self.rules)

    def _ensure_counts(self, first: list[BlockRule], present: list[BlockRule],
                       absent: list[BlockRule]) -> None:
        """Make the firewall hold exactly one copy of each rule in ``first`` and
        ``present`` (``first`` inserted before the others) and none of ``absent``.
        One listing before; the changes' exit status is the proof, except for a
        backend whose changes must be read back."""
        firewall, deadline = self.firewall, self.deadline
        wanted = [(rule, 1) for rule in first + present] + [(rule, 0) for rule in absent]
        counts = firewall.counts([rule for rule, _ in wanted], deadline)
        inserts = [rule for (rule, want), count in zip(wanted, counts) if count < want]
        deletes = [rule for (rule, want), count in zip(wanted, counts) for _extra in range(count - want)]
        if inserts or deletes:
            firewall.apply(inserts, deletes, deadline)
        if not ((inserts or deletes) and firewall.changes_need_read_back):
            return
        after = firewall.counts([rule for rule, _ in wanted], deadline)
        for (rule, want), count in zip(wanted, after):
            if count != want:
                raise OCFError(ERR_GENERIC, f"{firewall.name}: expected {want} cop{'y' if want == 1 else 'ies'}"
                                            f" of rule [{rule}], found {count} after the change")

    # -------------------------------------------------------- the connections

    def _close_connections(self) -> None:
        from .sockdiag import SocketDestroyUnsupported, close_sockets
        began = time.monotonic()
        try:
            closed, remaining = close_sockets(self.network, self.ports, self.deadline)
        except SocketDestroyUnsupported as err:
            ocf.log_warning(f"{self._describe()}: the kernel cannot close sockets ({err});"
                            " relying on the firewall rule")
            return
        except OSError as err:
            ocf.log_warning(f"{self._describe()}: cannot list or close sockets ({err});"
                            " relying on the firewall rule")
            return
        took_ms = (time.monotonic() - began) * 1000
        if remaining:
            ocf.log_warning(f"{self._describe()}: {len(remaining)} connection(s) still open at the"
                            f" deadline: {', '.join(map(str, remaining[:5]))}")
        elif closed:
            ocf.log_info(f"{self._describe()}: closed {closed} connection(s) in {took_ms:.0f} ms")

    def _save_connections(self) -> None:
        """Record the established connections for tickle ACKs after failover."""
        if not self.tickle_dir or self.protocol != "tcp":
            return
        from .sockdiag import TCP_ESTABLISHED, list_sockets
        try:
            established = list_sockets(self.network, self.ports, states=1 << TCP_ESTABLISHED)
        except OSError as err:
            ocf.log_warning(f"cannot list connections for tickle_dir: {err}")
            return
        lines = "".join(f"{s.local_text}\t{s.remote_text}\n" for s in established)
        try:
            sync_command = self.sync_command
        except OCFError as err:
            # Checked at start; if it broke since, the record stays local.
            ocf.log_warning(err.reason)
            sync_command = []
        from .tickle import RECORD_WRITE_WAIT_S, write_record
        # Synced unless a sync_script copies it: a shared dir must have it on disk before a failover.
        problem = write_record(self.tickle_dir, self.network.address, lines, durable=not sync_command,
                               wait_s=min(RECORD_WRITE_WAIT_S, self.seconds_left()))
        if problem:
            ocf.log_warning(problem)
            return
        if sync_command:
            # Detached: a script that hangs or fails costs this action nothing;
            # the firewall alone decides the outcome (a stop must block even so).
            from .proc import find_binary, spawn_detached
            argv = [find_binary(sync_command[0]) or sync_command[0], *sync_command[1:],
                    os.path.join(self.tickle_dir, self.network.address)]
            try:
                with open(os.devnull, "r+b") as null:
                    spawn_detached(argv, {0: null.fileno(), 1: null.fileno(), 2: null.fileno()})
            except OSError as err:
                ocf.log_warning(f"sync_script {sync_command[0]} could not run: {err}")

    @property
    def _recording_file(self) -> str:
        """Names the start whose delayed records may still be written (its stamp)."""
        return f"{self._state_base}_unblock_recording"

    def _record_lock(self, wait_s: float):
        from .mutex import FileMutex
        return FileMutex(f"{self._state_base}_record.lock", min(self.deadline, time.monotonic() + wait_s))

    def _record_connections_later(self, started: str) -> None:
        """Leave a detached process that records the connections at each of
        RECORD_AFTER_START_S, while this start's instance runs (``record_after_start``)."""
        if not self.tickle_dir or self.protocol != "tcp":
            return
        from .proc import python_call, spawn_detached
        with open(self._recording_file, "w") as recording:
            recording.write(started)
        # sh sleeps first: Python's start (~15 ms of CPU) comes after the failover, not in it.
        first, *later = RECORD_AFTER_START_S
        argv = ["/bin/sh", "-c", 'sleep "$1"; shift; exec "$@"', "sh", str(first),
                *python_call("tgtha.portblock", "record_after_start"), started, "0",
                *(str(d - first) for d in later)]
        null_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            spawn_detached(argv, {0: null_fd, 1: null_fd, 2: null_fd})
        except OSError as err:
            ocf.log_warning(f"{self._describe()}: connections are recorded at the next monitor only"
                            f" (cannot start the recorder: {err})")
        finally:
            os.close(null_fd)

    def record_if_started(self, started: str) -> bool:
        """One delayed record (in the recorder); False once the start that left it is
        stopped or replaced: the stop's record of the connections must stay the last."""
        with self._record_lock(RECORD_LOCK_WAIT_S):
            try:
                with open(self._recording_file) as recording:
                    if recording.read().strip() != started:
                        return False
            except FileNotFoundError:
                return False
            self._save_connections()
        return True

    def _save_connections_at_stop(self) -> None:
        """The stop's record: after any delayed record of the start, and ending them."""
        if not self.tickle_dir:
            return
        try:
            lock = self._record_lock(RECORD_LOCK_WAIT_S)
            lock.__enter__()
        except OCFError as err:
            ocf.log_warning(f"{self._describe()}: recording without the record lock ({err.reason})")
            lock = None
        try:
            self._remove(self._recording_file)
            self._save_connections()
        finally:
            if lock is not None:
                lock.__exit__(None, None, None)

    def _forget_time_wait(self) -> None:
        """Before initiators are let in (and tickled): TIME-WAIT sockets this node
        kept from its last time with this address would answer their
        connections with ACKs instead of resets (sockdiag.forget_time_wait)."""
        if self.protocol != "tcp":
            return
        from .sockdiag import forget_time_wait
        try:
            dropped, left = forget_time_wait(self.network, self.ports)
        except OSError as err:
            ocf.log_warning(f"cannot list TIME-WAIT sockets: {err}")
            return
        if left:
            ocf.log_warning(f"{self._describe()}: {left} TIME-WAIT socket(s) could not be dropped (kernel without"
                            " SOCK_DESTROY for them): initiators whose connections match them wait for"
                            " their own timeouts")
        elif dropped:
            ocf.log_info(f"{self._describe()}: dropped {dropped} TIME-WAIT socket(s)")

    def _tickle_remote(self) -> None:
        """Send tickle ACKs to the clients recorded by the previous node, now and once more."""
        if not self.tickle_dir:
            return
        from .tickle import recorded_connections, tickle_later, tickle_now
        data = recorded_connections(self.tickle_dir, self.network.address)
        if data and tickle_now(data, self.deadline):
            tickle_later(data)

    # -------------------------------------------------------------- plumbing

    @staticmethod
    def _opposite(action: str) -> str:
        return "unblock" if action == "block" else "block"

    def _describe(self) -> str:
        return f"{self.param('protocol')} port {self.param('portno')} on {self.param('ip')} ({self.param('direction')})"

    @staticmethod
    def _touch(path: str) -> str:
        """Write the state file; returns what it holds (the time, unique per start)."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        stamp = f"{time.time():.6f}"
        with open(path, "w") as state:
            state.write(stamp + "\n")
        return stamp

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _set_role(self, role: str, score: str) -> None:
        self._crm_promotion_score(["-v", score])
        os.makedirs(os.path.dirname(self._role_file), exist_ok=True)
        with open(self._role_file, "w") as role_file:
            role_file.write(role + "\n")

    def _forget_role(self) -> None:
        self._crm_promotion_score(["-D"])
        self._remove(self._role_file)

    def _crm_promotion_score(self, args: list[str]) -> None:
        from .proc import run
        result = run(["crm_attribute", "--promotion", "-l", "reboot", *args], self.deadline)
        if not result.ok:
            raise OCFError(ERR_GENERIC, f"crm_attribute --promotion {' '.join(args)} failed:"
                                        f" {result.err.strip()}")


def record_after_start() -> None:
    """The process an unblock's start leaves (``Portblock._record_connections_later``):
    argv is the start's stamp, then the delays in seconds from now."""
    sys.argv[0] = "portblock"  # the name in its log lines
    started, delays = sys.argv[1], [float(arg) for arg in sys.argv[2:]]
    began = time.monotonic()
    for delay in delays:
        time.sleep(max(0.0, began + delay - time.monotonic()))
        try:
            if not Portblock("record").record_if_started(started):
                return
        except OCFError as err:
            ocf.log_warning(f"delayed record of the connections: {err.reason}")
            return


def main() -> None:
    ocf.main(Portblock)
