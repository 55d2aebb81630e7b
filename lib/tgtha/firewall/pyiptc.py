"""Block rules through python-iptables (libiptc): legacy xtables only.

Measured facts that shape this backend:
- libiptc takes no xtables lock and python-iptables' autocommit swallows the
  EAGAIN of a concurrent commit: with parallel writers 5-10 % of rules are
  silently lost. So every call runs under the node mutex *and* under
  iptables-legacy's /run/xtables.lock (``needs_xtables_lock``), and we commit
  explicitly and re-read to check.
- It writes legacy tables, which ``iptables-nft -S`` does not show (the kernel
  still enforces them).
- ``import iptc`` costs ~0.3 s, so it is used only when asked for.
"""
from __future__ import annotations

from ..ocf_runtime import ERR_GENERIC, ERR_INSTALLED, OCFError
from . import BlockRule, Firewall
from .iptables_cli import rule_spec


class PythonIptables(Firewall):
    name = "python-iptables"
    needs_xtables_lock = True
    changes_need_read_back = True

    def __init__(self, iptc, family: int) -> None:
        self.iptc = iptc
        self.family = family

    @classmethod
    def create(cls, family: int) -> PythonIptables:
        import site
        if "/usr/lib/python3/dist-packages" not in __import__("sys").path:
            site.main()  # agents run with -S; python-iptables lives in site-packages
        try:
            import iptc
        except ImportError as err:
            raise OCFError(ERR_INSTALLED, f"python-iptables is not installed: {err}") from None
        return cls(iptc, family)

    def _table(self):
        iptc = self.iptc
        table = iptc.Table6(iptc.Table6.FILTER) if self.family == 6 else iptc.Table(iptc.Table.FILTER)
        table.autocommit = False
        table.refresh()
        return table

    def _ours(self, chain, rule: BlockRule) -> list:
        return [r for r in chain.rules
                if any(m.name == "comment" and m.parameters.get("comment") == rule.tag for m in r.matches)]

    def count(self, rule: BlockRule, deadline: float) -> int:
        table = self._table()
        return len(self._ours(self.iptc.Chain(table, rule.chain), rule))

    def insert(self, rule: BlockRule, deadline: float) -> None:
        table = self._table()
        chain = self.iptc.Chain(table, rule.chain)
        chain.insert_rule(self._build(rule))
        self._commit(table, f"cannot insert {rule}")

    def delete(self, rule: BlockRule, deadline: float) -> None:
        table = self._table()
        chain = self.iptc.Chain(table, rule.chain)
        ours = self._ours(chain, rule)
        if ours:
            chain.delete_rule(ours[0])
            self._commit(table, f"cannot delete {rule}")

    def _build(self, rule: BlockRule):
        """The libiptc rule: the same matches and target as the iptables command's."""
        iptc = self.iptc
        built = iptc.Rule6() if self.family == 6 else iptc.Rule()
        spec = rule_spec(rule)
        built.protocol = rule.protocol
        if rule.matches_destination:
            built.dst = str(rule.network)
        else:
            built.src = str(rule.network)
        multiport = built.create_match("multiport")
        ports_option = "dports" if rule.matches_destination else "sports"
        setattr(multiport, ports_option, rule.ports.iptables())
        if rule.lets_resets_out:
            built.create_match("tcp").tcp_flags = ["!", "RST", "RST"]
        if rule.syn_only:
            built.create_match("tcp").syn = "1"
        if rule.not_syn:
            built.create_match("tcp").syn = "!1"
        comment = built.create_match("comment")
        comment.comment = rule.tag
        target_name = spec[spec.index("-j") + 1]
        target = built.create_target(target_name)
        if "--reject-with" in spec:
            target.reject_with = spec[spec.index("--reject-with") + 1]
        return built

    @staticmethod
    def _commit(table, what: str) -> None:
        try:
            table.commit()
        except Exception as err:  # iptc raises its own IPTCError
            raise OCFError(ERR_GENERIC, f"python-iptables: {what}: {err}") from None
        finally:
            table.close()
