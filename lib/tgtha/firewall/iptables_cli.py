"""Block rules through the iptables/ip6tables commands (nft or legacy variant)."""
from __future__ import annotations

import time

from ..ocf_runtime import ERR_GENERIC, ERR_INSTALLED, OCFError
from ..proc import find_binary, run
from . import TAG_PREFIX, BlockRule, Firewall


class IptablesCommand(Firewall):
    def __init__(self, program: str) -> None:
        self.program = program
        self.name = program

    @classmethod
    def create(cls, family: int, variant: str) -> IptablesCommand:
        program = ("ip6tables" if family == 6 else "iptables") + (f"-{variant}" if variant else "")
        if find_binary(program) is None:
            raise OCFError(ERR_INSTALLED, f"{program} is not installed")
        return cls(program)

    def _run(self, args: list[str], deadline: float):
        # -w: wait for the xtables lock (legacy variant) rather than fail with rc 4,
        # bounded by what is left of the operation's timeout.
        wait_s = max(1, int(deadline - time.monotonic()))
        return run([self.program, "-w", str(wait_s), *args], deadline)

    def count(self, rule: BlockRule, deadline: float) -> int:
        listing = self._run(["-t", "filter", "-S", rule.chain], deadline)
        if not listing.ok:
            raise OCFError(ERR_GENERIC, f"{self.program} -S {rule.chain} failed: {listing.err.strip()}")
        return sum(1 for line in listing.out.splitlines() if _comment_of(line) == rule.tag)

    def counts(self, rules: list[BlockRule], deadline: float) -> list[int]:
        """One listing of the whole filter table for every rule (one process, not one per rule)."""
        listing = self._run(["-t", "filter", "-S"], deadline)
        if not listing.ok:
            raise OCFError(ERR_GENERIC, f"{self.program} -S failed: {listing.err.strip()}")
        held: dict[tuple[str, str], int] = {}
        for line in listing.out.splitlines():
            words = line.split(None, 2)
            if len(words) >= 2 and words[0] == "-A":
                key = (words[1], _comment_of(line))
                held[key] = held.get(key, 0) + 1
        return [held.get((rule.chain, rule.tag), 0) for rule in rules]

    def insert(self, rule: BlockRule, deadline: float) -> None:
        self._change("-I", rule, deadline)

    def delete(self, rule: BlockRule, deadline: float) -> None:
        self._change("-D", rule, deadline)

    def apply(self, inserts: list[BlockRule], deletes: list[BlockRule], deadline: float) -> None:
        """All changes through ``<program>-restore --noflush``: one process, one
        atomic commit (with the nft variant, one nftables transaction)."""
        if len(inserts) + len(deletes) < 2:
            super().apply(inserts, deletes, deadline)
            return
        lines = ["*filter"]
        lines += [f"-I {rule.chain} {_restore_words(rule)}" for rule in inserts]
        lines += [f"-D {rule.chain} {_restore_words(rule)}" for rule in deletes]
        lines.append("COMMIT\n")
        wait_s = max(1, int(deadline - time.monotonic()))
        result = run([f"{self.program}-restore", "--noflush", "-w", str(wait_s)], deadline,
                     stdin="\n".join(lines).encode())
        if not result.ok:
            raise OCFError(ERR_GENERIC, f"{self.program}-restore: cannot change"
                                        f" {', '.join(map(str, inserts + deletes))}: {result.err.strip()}")

    def _change(self, op: str, rule: BlockRule, deadline: float) -> None:
        result = self._run(["-t", "filter", op, rule.chain, *rule_spec(rule)], deadline)
        if not result.ok:
            verb = "insert" if op == "-I" else "delete"
            raise OCFError(ERR_GENERIC, f"{self.program}: cannot {verb} {rule}: {result.err.strip()}")


def rule_spec(rule: BlockRule) -> list[str]:
    """The iptables match and target arguments of ``rule``."""
    addr, ports = ("-d", "--dports") if rule.matches_destination else ("-s", "--sports")
    spec = ["-p", rule.protocol, addr, str(rule.network),
            "-m", "multiport", ports, rule.ports.iptables()]
    if rule.lets_resets_out:
        spec += ["-m", "tcp", "!", "--tcp-flags", "RST", "RST"]
    if rule.syn_only:
        spec += ["-m", "tcp", "--syn"]
    if rule.not_syn:
        spec += ["-m", "tcp", "!", "--syn"]
    spec += ["-m", "comment", "--comment", rule.tag]
    if rule.method == "drop":
        return spec + ["-j", "DROP"]
    if rule.protocol == "tcp" and not rule.syn_only:
        return spec + ["-j", "REJECT", "--reject-with", "tcp-reset"]
    unreachable = "icmp6-port-unreachable" if rule.family == 6 else "icmp-port-unreachable"
    return spec + ["-j", "REJECT", "--reject-with", unreachable]


def _restore_words(rule: BlockRule) -> str:
    """``rule_spec`` as one line of iptables-restore input (a tag has no blanks or quotes)."""
    return " ".join(f'"{word}"' if word.startswith(TAG_PREFIX) else word for word in rule_spec(rule))


def _comment_of(line: str) -> str:
    """The --comment value of one ``iptables -S`` line ('' if none)."""
    words = line.split()
    for i, word in enumerate(words[:-1]):
        if word == "--comment":
            return words[i + 1].strip('"')
    return ""
