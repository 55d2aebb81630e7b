"""Block rules and the firewall backends that hold them.

A ``BlockRule`` is what portblock puts in the firewall: drop or reject one
protocol's ports on one address, on the INPUT or the OUTPUT side. Every rule
carries a comment (its ``tag``) that names it completely, so a backend finds
exactly our rules and counts duplicates without parsing its own listing format.

Backends (``firewall=`` parameter):
- ``iptables``: the iptables/ip6tables commands, whatever variant they are;
- ``iptables-nft``, ``iptables-legacy``: one variant explicitly;
- ``nft``: native nftables, in table ``inet tgtha``;
- ``python-iptables``: libiptc through python-iptables (legacy tables only);
- ``auto``: the ``iptables`` command when present (what administrators read
  with ``iptables -S``; on nft hosts it writes nftables rules), else ``nft``.
  python-iptables is never picked automatically: its import costs ~0.3 s,
  against ~2 ms for running the iptables command.

Every backend call happens inside ``firewall.locked(...)``: the node-wide mutex, plus
iptables-legacy's own lock for backends that write legacy tables without it.
"""
from __future__ import annotations

import os

from ..netaddr import Network, PortSet
from ..ocf_runtime import ERR_CONFIGURED, ERR_INSTALLED, OCFError
from ..proc import find_binary

FIREWALLS = ("auto", "iptables", "iptables-nft", "iptables-legacy", "nft", "python-iptables")
TAG_PREFIX = "tgtha-portblock"
MAX_COMMENT = 128        # nft's limit for a rule comment (iptables' is 256)


class BlockRule:
    """One firewall rule that blocks ``protocol`` ``ports`` on ``network``.

    chain "INPUT" matches destination address and ports (traffic to us),
    chain "OUTPUT" matches source address and ports (traffic from us).
    method "drop" drops; "reject" answers TCP with a reset (UDP: port unreachable).
    ``syn_only`` matches TCP connection attempts only, ``not_syn`` every other TCP packet.
    """

    __slots__ = ("chain", "protocol", "ports", "network", "method", "resets_pass", "syn_only", "not_syn")

    def __init__(self, chain: str, protocol: str, ports: PortSet, network: Network, method: str,
                 resets_pass: bool = True, syn_only: bool = False, not_syn: bool = False) -> None:
        self.chain = chain
        self.protocol = protocol
        self.ports = ports
        self.network = network
        self.method = method
        self.resets_pass = resets_pass
        # Only connection attempts (TCP SYN); rejected, they are refused with ICMP port
        # unreachable: no TCP reset, which the silent mode's OUTPUT rule would swallow.
        self.syn_only = syn_only
        # Every TCP packet but a connection attempt: rejected, answered with a reset.
        self.not_syn = not_syn

    @property
    def family(self) -> int:
        return self.network.family

    @property
    def matches_destination(self) -> bool:
        return self.chain == "INPUT"

    @property
    def lets_resets_out(self) -> bool:
        """OUTPUT TCP rules let RST segments pass: when the agent closes a
        blocked connection, the kernel's reset must reach the client, so it
        reconnects (to the new node) at once instead of timing out."""
        return self.chain == "OUTPUT" and self.protocol == "tcp" and self.resets_pass

    @property
    def tag(self) -> str:
        """The rule's comment: what it is, readable, within nft's 128 bytes (a long
        port list on an IPv6 network is longer: then a digest of the same text)."""
        # A reject rule that keeps resets in, or one for connection attempts only, is a different rule.
        if self.chain == "OUTPUT" and self.protocol == "tcp" and not self.resets_pass:
            method = "silent"
        elif self.syn_only:
            method = "refuse-syn" if self.method == "reject" else f"{self.method}-syn"
        elif self.not_syn:
            method = f"{self.method}-not-syn"
        else:
            method = self.method
        full = f"{TAG_PREFIX}:{self.protocol}:{self.ports.iptables()}:{self.network}:{method}"
        if len(full) <= MAX_COMMENT:
            return full
        from ..iscsi_names import sha256_hex
        return f"{TAG_PREFIX}:{self.protocol}:{method}:sha256-{sha256_hex(full.encode())[:48]}"

    def __str__(self) -> str:
        side = "to" if self.matches_destination else "from"
        what = (("refuse" if self.method == "reject" else self.method) + " new connections" if self.syn_only
                else f"{self.method} all but new connections" if self.not_syn else self.method)
        return f"{self.chain} {what} {self.protocol} {side} {self.network} port {self.ports}"

    def __repr__(self) -> str:
        return f"BlockRule({self})"


class Firewall:
    """What a backend offers. Callers hold ``locked()`` around every call."""

    name = ""
    # Does this backend write legacy xtables without taking /run/xtables.lock itself?
    needs_xtables_lock = False

    def locked(self, deadline: float):
        """The mutex to hold around calls to this backend."""
        from ..mutex import FileMutex, firewall_lock_path, xtables_lock_path
        node_mutex = FileMutex(firewall_lock_path(), deadline)
        if not self.needs_xtables_lock:
            return node_mutex
        return _Both(node_mutex, FileMutex(xtables_lock_path(), deadline))

    # Does a change that returned without error prove itself? The commands' exit
    # status does (under the node mutex nothing of ours runs in between);
    # python-iptables was measured losing rules silently, so its changes are read back.
    changes_need_read_back = False

    def count(self, rule: BlockRule, deadline: float) -> int:
        """How many copies of ``rule`` the firewall holds."""
        raise NotImplementedError

    def counts(self, rules: list[BlockRule], deadline: float) -> list[int]:
        """``count`` of each rule; backends override it to read the firewall once."""
        return [self.count(rule, deadline) for rule in rules]

    def insert(self, rule: BlockRule, deadline: float) -> None:
        raise NotImplementedError

    def apply(self, inserts: list[BlockRule], deletes: list[BlockRule], deadline: float) -> None:
        """Insert (in order) and delete one copy each; backends override it to
        make every change in one transaction (one process, not one per rule)."""
        for rule in inserts:
            self.insert(rule, deadline)
        for rule in deletes:
            self.delete(rule, deadline)

    def delete(self, rule: BlockRule, deadline: float) -> None:
        """Remove one copy of ``rule``."""
        raise NotImplementedError


def resolve(choice: str, family: int) -> str:
    """What the ``firewall`` parameter means on this node now, as a concrete backend.

    ``auto`` and ``iptables`` follow the iptables command, which the
    alternatives system points at the nft or the legacy variant: the variant is
    read from where the command leads. A rule must be removed by the variant
    that made it, whatever the command points to later, so the result is what
    portblock records at start.
    """
    if choice not in FIREWALLS:
        raise OCFError(ERR_CONFIGURED, f"firewall={choice!r} is not one of {', '.join(FIREWALLS)}")
    iptables = "ip6tables" if family == 6 else "iptables"
    if choice == "auto":
        choice = "iptables" if find_binary(iptables) else "nft" if find_binary("nft") else ""
        if not choice:
            raise OCFError(ERR_INSTALLED, f"firewall=auto: neither {iptables} nor nft is installed")
    if choice == "iptables":
        program = find_binary(iptables)
        target = os.path.basename(os.path.realpath(program)) if program else ""
        if "legacy" in target:
            return "iptables-legacy"
        if "nft" in target:
            return "iptables-nft"
    return choice


def concrete_backends(family: int) -> list[str]:
    """Every backend that can hold a rule and whose program is installed here
    (python-iptables writes the same legacy tables as iptables-legacy)."""
    names = []
    for name, program in (("iptables-nft", "iptables-nft"), ("iptables-legacy", "iptables-legacy"),
                          ("nft", "nft")):
        if family == 6 and name.startswith("iptables"):
            program = "ip6" + program[2:]
        if find_binary(program):
            names.append(name)
    return names


def select_firewall(choice: str, family: int) -> Firewall:
    """The backend for the ``firewall`` parameter, or a concrete one; OCFError if unusable here."""
    choice = resolve(choice, family)
    if choice == "nft":
        from .nft import Nft
        return Nft.create()
    if choice == "python-iptables":
        from .pyiptc import PythonIptables
        return PythonIptables.create(family)
    from .iptables_cli import IptablesCommand
    variant = choice.partition("-")[2]  # "", "nft" or "legacy"
    return IptablesCommand.create(family, variant)


class _Both:
    def __init__(self, outer, inner) -> None:
        self.outer, self.inner = outer, inner

    def __enter__(self):
        self.outer.__enter__()
        try:
            self.inner.__enter__()
        except BaseException:
            self.outer.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.inner.__exit__(*exc_info)
        self.outer.__exit__(*exc_info)
