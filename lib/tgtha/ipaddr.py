"""ocf:tgtha:IPaddr2 - a target's service address, with the stock agent's parameters.

Why not ``ocf:heartbeat:IPaddr2``: in the lab its start was the slowest action
of every target group (0.5-0.9 s on a loaded two-core node, against 0.1-0.3 s
for each of our agents), because it runs about 43 processes per start (8 ``ip``,
9 ``grep``, 8 ``date``, ``tty``, ``cut``, ``sed``, ``awk``...) and as many per
monitor. This agent does the same job through rtnetlink (no process at all
for a monitor, one for a start: the announcement), the same gratuitous ARP sender (``send_arp``, or ``send_ua`` for
IPv6) in the background, and the stock parameter names, so switching is
``ocf:heartbeat:IPaddr2`` -> ``ocf:tgtha:IPaddr2``. What it does not do (LVS,
cluster IP, routes, label, ...) is refused by name, never silently ignored.
"""
from __future__ import annotations

import _socket
import os
import _signal
import time

from . import ocf_runtime as ocf
from . import rtnl
from .mutex import state_dir
from .netaddr import Network
from .ocf_runtime import ERR_CONFIGURED, ERR_GENERIC, ERR_INSTALLED, NOT_RUNNING, SUCCESS, OCFError
from .proc import run

HA_BIN = "/usr/libexec/heartbeat"
# Stock parameters this agent does not implement: set, they are an error, not a no-op.
UNSUPPORTED = ("lvs_support", "lvs_ipv6_addrlabel", "lvs_ipv6_addrlabel_value", "clusterip_hash",
               "unique_clone_address", "iflabel", "flush_routes", "network_namespace", "preferred_lft",
               "arp_sender", "arp_bg", "arp_mac", "arp_count_refresh", "send_arp_opts", "mac", "noprefixroute")
DAD_WAIT_S = 3.0     # IPv6 duplicate address detection takes about one second


class IPaddr2(ocf.Agent):
    NAME = "IPaddr2"
    PARAMETERS = {
        "ip": "",
        "cidr_netmask": "",
        "nic": "",
        "broadcast": "",
        "arp_count": "5",
        "arp_interval": "200",
        "nodad": "false",
        "run_arping": "false",
        "tickle_dir": "",
        **{name: "" for name in UNSUPPORTED},
    }

    # ------------------------------------------------------------ parameters

    @property
    def address(self) -> Network:
        text = self.param("ip")
        if not text or "/" in text:
            raise OCFError(ERR_CONFIGURED, f"ip={text!r}: must be one IPv4 or IPv6 address"
                                           " (the prefix goes in cidr_netmask)")
        try:
            return Network.parse(text)
        except ValueError as err:
            raise OCFError(ERR_CONFIGURED, f"ip: {err}") from None

    @property
    def family(self) -> int:
        return self.address.family

    @property
    def prefixlen(self) -> int:
        text = self.param("cidr_netmask")
        bits = 32 if self.family == 4 else 128
        if not text:
            return self._connected_route()[1]
        if text.isascii() and text.isdigit() and 1 <= int(text) <= bits:
            return int(text)
        if self.family == 4 and text.count(".") == 3:
            try:
                mask = int.from_bytes(Network.parse(text).packed, "big")
            except ValueError:
                mask = -1
            ones = bin(mask).count("1") if mask > 0 else 0
            if mask > 0 and mask == ((1 << 32) - 1) ^ ((1 << (32 - ones)) - 1):
                return ones
        raise OCFError(ERR_CONFIGURED, f"cidr_netmask={text!r}: must be a prefix length 1-{bits}"
                                       + (" or a dotted netmask" if self.family == 4 else ""))

    @property
    def nic(self) -> str:
        name = self.param("nic")
        if not name:
            return self._connected_route()[0]
        if not name.isascii() or not name.isprintable() or "/" in name or " " in name or len(name) > 15:
            raise OCFError(ERR_CONFIGURED, f"nic={name!r} is not an interface name")
        if not os.path.exists(f"/sys/class/net/{name}"):
            # Wrong here only: another node may have it (rc 6 would ban the resource everywhere).
            raise OCFError(ERR_INSTALLED, f"nic {name} does not exist on this node")
        return name

    def _connected_route(self) -> tuple[str, int]:
        """(interface, prefix length) of the directly connected network holding ``ip``."""
        if not hasattr(self, "_route"):
            family = "-6" if self.family == 6 else "-4"
            listing = run(["ip", family, "-o", "route", "show", "scope", "link"], self.deadline)
            for line in listing.out.splitlines():
                words = line.split()
                if not words or "dev" not in words or words[0] == "default":
                    continue
                try:
                    network = Network.parse(words[0])
                except ValueError:
                    continue
                if network.prefixlen and network.contains(self.address.packed):
                    self._route = (words[words.index("dev") + 1], network.prefixlen)
                    break
            else:
                raise OCFError(ERR_INSTALLED, f"no directly connected network holds {self.address.address}"
                                              " on this node: set nic and cidr_netmask")
        return self._route

    @property
    def arp_count(self) -> int:
        return self._whole("arp_count", 0, 100)

    @property
    def arp_interval_ms(self) -> int:
        return self._whole("arp_interval", 1, 10_000)

    def _whole(self, name: str, low: int, high: int) -> int:
        text = self.param(name)
        if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
            raise OCFError(ERR_CONFIGURED, f"{name}={text!r}: must be a whole number {low}-{high}")
        return int(text)

    @property
    def nodad(self) -> bool:
        value = self.param("nodad").lower()
        if value not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            raise OCFError(ERR_CONFIGURED, f"nodad={value!r}: must be true or false")
        return value in ("true", "yes", "1", "on")

    # ------------------------------------------------------------ derived state

    @property
    def _sender_pidfile(self) -> str:
        return os.path.join(state_dir(), f"IPaddr2-sender-{self.address.address}")

    def _held(self) -> list[rtnl.Address]:
        """Our address wherever it is on this node (normally one interface, or none)."""
        try:
            held = rtnl.addresses(self.family, timeout_s=max(0.5, self.seconds_left()))
        except OSError as err:
            raise OCFError(ERR_GENERIC, f"cannot list the addresses of this node: {err}") from None
        return [a for a in held if a.packed == self.address.packed]

    def _broadcast(self, prefixlen: int) -> bytes | None:
        if self.family != 4:
            return None
        if self.param("broadcast"):
            return Network.parse(self.param("broadcast")).packed
        host_bits = (1 << (32 - prefixlen)) - 1
        return (int.from_bytes(self.address.packed, "big") | host_bits).to_bytes(4, "big")

    # ------------------------------------------------------------ actions

    def validate_all(self) -> int:
        self._validate()
        return SUCCESS

    def _validate(self) -> None:
        configured = [name for name in UNSUPPORTED if self.param(name)]
        if ocf.boolean("run_arping", self.param("run_arping")):
            configured.append("run_arping")   # stock's default (false) moves over as it is
        if configured:
            raise OCFError(ERR_CONFIGURED, f"not supported by ocf:tgtha:IPaddr2: {', '.join(configured)}"
                                           " (use ocf:heartbeat:IPaddr2 for them)")
        self.address, self.prefixlen, self.nic, self.arp_count, self.arp_interval_ms, self.nodad, self.tickle_dir
        if self.param("broadcast") and self.family == 4:
            try:
                Network.parse(self.param("broadcast"))
            except ValueError as err:
                raise OCFError(ERR_CONFIGURED, f"broadcast: {err}") from None

    def start(self) -> int:
        self._validate()
        nic, prefixlen, address = self.nic, self.prefixlen, self.address
        held = self._held()
        if held and all(a.interface != nic for a in held):
            raise OCFError(ERR_GENERIC, f"{address.address} is already on another interface: {held[0].interface}")
        if not held:
            self._bring_up(nic)
            try:
                rtnl.add(self.family, address.packed, prefixlen, _socket.if_nametoindex(nic),
                         self._broadcast(prefixlen), self.nodad, timeout_s=max(0.5, self.seconds_left()))
            except OSError as err:
                raise OCFError(ERR_GENERIC, f"cannot add {address.address}/{prefixlen} to {nic}: {err}") from None
        if self.family == 6:
            self._wait_for_dad(nic, prefixlen)
        if not self._held():
            raise OCFError(ERR_GENERIC, f"{address.address} is not on {nic} after adding it")
        self._announce(nic, prefixlen)
        self._tickle_clients()
        ocf.log_info(f"{address.address}/{prefixlen} on {nic}")
        return SUCCESS

    def stop(self) -> int:
        self._stop_sender()
        try:
            address = self.address
        except OCFError:
            return SUCCESS          # never started with a configuration that does not parse
        for held in self._held():
            try:
                rtnl.delete(self.family, held.packed, held.prefixlen, held.index,
                            timeout_s=max(0.5, self.seconds_left()))
            except OSError as err:
                if self._held():
                    raise OCFError(ERR_GENERIC, f"cannot remove {address.address} from {held.interface}:"
                                                f" {err}") from None
        if self._held():
            raise OCFError(ERR_GENERIC, f"{address.address} is still held after removing it")
        return SUCCESS

    def monitor(self) -> int:
        self.address
        held = self._held()
        if not held:
            return NOT_RUNNING
        if any(a.dad_failed for a in held):
            raise OCFError(ERR_GENERIC, f"{self.address.address}: duplicate address detected on the network")
        return SUCCESS

    @property
    def tickle_dir(self) -> str:
        if not hasattr(self, "_tickle_dir"):     # checked once: the check runs a process
            value = self.param("tickle_dir")
            if value:
                from .tickle import checked_tickle_dir
                value = checked_tickle_dir(value)
            self._tickle_dir = value
        return self._tickle_dir

    # ------------------------------------------------------------ helpers

    # After the gratuitous ARP has gone out (send_arp starts in the background):
    # a client's answer to a tickle that came first would go to the old node.
    TICKLE_AFTER_S = (0.1, 0.7)

    def _tickle_clients(self) -> None:
        """Tickle the clients portblock's unblock recorded for this address on the
        node that had it: those of a dead node learn now that their connection
        is gone (with portblock method=reset, the block answers them with a
        reset), not at their next retransmission or at the unblock."""
        if not self.tickle_dir:
            return
        from .tickle import recorded_connections, tickle_later
        data = recorded_connections(self.tickle_dir, self.address.address)
        if data:
            tickle_later(data, self.TICKLE_AFTER_S)

    def _bring_up(self, nic: str) -> None:
        """The stock agent brings the interface up too (rare: only when it is down)."""
        try:
            with open(f"/sys/class/net/{nic}/flags") as flags:
                if int(flags.read(), 16) & 0x1:     # IFF_UP
                    return
        except (OSError, ValueError):
            pass
        run(["ip", "link", "set", nic, "up"], self.deadline)

    def _wait_for_dad(self, nic: str, prefixlen: int) -> None:
        """Wait while the kernel checks that nobody else has the address."""
        give_up = min(self.deadline, time.monotonic() + DAD_WAIT_S)
        while True:
            held = self._held()
            if any(a.dad_failed for a in held):
                for a in held:
                    try:
                        rtnl.delete(self.family, a.packed, a.prefixlen, a.index)
                    except OSError:
                        pass
                raise OCFError(ERR_GENERIC, f"{self.address.address} is already used on the network"
                                            " (duplicate address detection)")
            if not any(a.tentative for a in held) or time.monotonic() >= give_up:
                return
            time.sleep(0.05)

    def _announce(self, nic: str, prefixlen: int) -> None:
        """Gratuitous ARP (IPv6: unsolicited neighbour advertisements) in the
        background, as the stock agent does: the start does not wait for them."""
        count = self.arp_count
        if count == 0:
            return
        self._stop_sender()
        address = self.address.address
        if self.family == 4:
            argv = [os.path.join(HA_BIN, "send_arp"), "-i", str(self.arp_interval_ms), "-r", str(count),
                    "-p", self._sender_pidfile, nic, address, "auto", "not_used", "not_used"]
        else:
            argv = [os.path.join(HA_BIN, "send_ua"), "-i", str(self.arp_interval_ms * 1000), "-c", str(count),
                    address, str(prefixlen), nic]
        if not os.access(argv[0], os.X_OK):
            ocf.log_warning(f"{argv[0]} is missing: neighbours learn of {address} only when they ask")
            return
        os.makedirs(os.path.dirname(self._sender_pidfile), exist_ok=True)
        # Own session, stdio on /dev/null (our fds are close-on-exec): pacemaker-execd
        # must not wait for it. posix_spawn, not subprocess: importing that costs ~8 ms.
        devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
        pid = os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=devnull, setsid=True)
        if self.family == 6:
            with open(self._sender_pidfile, "w") as pidfile:
                pidfile.write(f"{pid}\n")

    def _stop_sender(self) -> None:
        """End a sender still announcing the address (ours: its pid file says so)."""
        try:
            with open(self._sender_pidfile) as pidfile:
                pid = int(pidfile.read().split()[0])
        except (OSError, ValueError, IndexError, OCFError):
            return
        try:
            with open(f"/proc/{pid}/comm") as comm:
                name = comm.read().strip()
            if name in ("send_arp", "send_ua"):
                os.kill(pid, _signal.SIGTERM)
        except (OSError, ProcessLookupError):
            pass
        try:
            os.unlink(self._sender_pidfile)
        except OSError:
            pass


def main() -> None:
    ocf.main(IPaddr2)
