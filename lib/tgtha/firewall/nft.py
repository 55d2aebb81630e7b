"""Block rules in native nftables: table ``inet tgtha``, one base chain per hook.

Our own table keeps our rules apart from the administrator's ruleset (a
``drop`` in any base chain drops the packet, whatever other chains accept).
"""
from __future__ import annotations

from ..ocf_runtime import ERR_GENERIC, ERR_INSTALLED, OCFError
from ..proc import find_binary, run
from . import BlockRule, Firewall

TABLE = "inet tgtha"
CHAINS = {"INPUT": ("portblock_in", "input"), "OUTPUT": ("portblock_out", "output")}


class Nft(Firewall):
    name = "nft"

    @classmethod
    def create(cls) -> Nft:
        if find_binary("nft") is None:
            raise OCFError(ERR_INSTALLED, "nft is not installed")
        return cls()

    def _handles(self, rule: BlockRule, deadline: float) -> list[str]:
        chain = CHAINS[rule.chain][0]
        listing = run(["nft", "-a", "list", "chain", TABLE, chain], deadline)
        if not listing.ok:
            if "No such file or directory" in listing.err:
                return []  # table or chain not made yet: no rules
            raise OCFError(ERR_GENERIC, f"nft list chain {TABLE} {chain} failed: {listing.err.strip()}")
        wanted = f'comment "{rule.tag}"'
        return [line.rsplit(None, 1)[-1] for line in listing.out.splitlines()
                if wanted in line and "# handle " in line]

    def count(self, rule: BlockRule, deadline: float) -> int:
        return len(self._handles(rule, deadline))

    def counts(self, rules: list[BlockRule], deadline: float) -> list[int]:
        """One listing of our table for every rule."""
        handles = self._all_handles(deadline)
        return [len(handles.get((CHAINS[rule.chain][0], rule.tag), [])) for rule in rules]

    def insert(self, rule: BlockRule, deadline: float) -> None:
        chain, hook = CHAINS[rule.chain]
        script = (f"add table {TABLE}; "
                  f"add chain {TABLE} {chain} {{ type filter hook {hook} priority filter - 10; policy accept; }}; "
                  f"insert rule {TABLE} {chain} {rule_expression(rule)}")
        self._nft(script, f"cannot insert {rule}", deadline)

    def delete(self, rule: BlockRule, deadline: float) -> None:
        handles = self._handles(rule, deadline)
        if handles:
            chain = CHAINS[rule.chain][0]
            self._nft(f"delete rule {TABLE} {chain} handle {handles[0]}", f"cannot delete {rule}", deadline)

    def apply(self, inserts: list[BlockRule], deletes: list[BlockRule], deadline: float) -> None:
        """Every change in one ``nft -f`` script: one process, one transaction."""
        if len(inserts) + len(deletes) < 2:
            super().apply(inserts, deletes, deadline)
            return
        script = [f"add table {TABLE}"]
        for rule in inserts:
            chain, hook = CHAINS[rule.chain]
            script.append(f"add chain {TABLE} {chain} {{ type filter hook {hook} priority filter - 10;"
                          " policy accept; }")
            script.append(f"insert rule {TABLE} {chain} {rule_expression(rule)}")
        if deletes:
            handles = self._all_handles(deadline)
            for rule in deletes:
                chain = CHAINS[rule.chain][0]
                found = handles.get((chain, rule.tag), [])
                if found:
                    script.append(f"delete rule {TABLE} {chain} handle {found.pop(0)}")
        self._nft("; ".join(script), f"cannot change {', '.join(map(str, inserts + deletes))}", deadline)

    def _all_handles(self, deadline: float) -> dict[tuple[str, str], list[str]]:
        """(chain, tag) -> handles of our rules, from one listing of our table."""
        listing = run(["nft", "-a", "list", "table", TABLE], deadline)
        if not listing.ok:
            if "No such file or directory" in listing.err:
                return {}  # table not made yet: no rules
            raise OCFError(ERR_GENERIC, f"nft list table {TABLE} failed: {listing.err.strip()}")
        handles: dict[tuple[str, str], list[str]] = {}
        chain = ""
        for line in listing.out.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "chain":
                chain = words[1]
            elif 'comment "' in line and "# handle " in line:
                tag = line.rsplit('comment "', 1)[1].split('"', 1)[0]
                handles.setdefault((chain, tag), []).append(line.rsplit(None, 1)[-1])
        return handles

    @staticmethod
    def _nft(script: str, what: str, deadline: float) -> None:
        result = run(["nft", "-f", "-"], deadline, stdin=script.encode())
        if not result.ok:
            raise OCFError(ERR_GENERIC, f"nft: {what}: {result.err.strip()}")


def rule_expression(rule: BlockRule) -> str:
    """The nft rule statement of ``rule``."""
    ip = "ip6" if rule.family == 6 else "ip"
    side = "d" if rule.matches_destination else "s"
    if rule.network.is_any:
        address = f"meta nfproto {'ipv6' if rule.family == 6 else 'ipv4'}"
    else:
        address = f"{ip} {side}addr {rule.network}"
    verdict = "drop" if rule.method == "drop" \
        else "reject with tcp reset" if rule.protocol == "tcp" and not rule.syn_only else "reject"
    not_reset = " tcp flags & rst == 0" if rule.lets_resets_out else ""
    syn = " tcp flags & (fin | syn | rst | ack) == syn" if rule.syn_only \
        else " tcp flags & (fin | syn | rst | ack) != syn" if rule.not_syn else ""
    return f'{address} {rule.protocol} {side}port {rule.ports.nft()}{not_reset}{syn} {verdict} comment "{rule.tag}"'
