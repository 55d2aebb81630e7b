"""ocf:tgtha:iSCSITarget - an iSCSI target in tgtd, CHAP never silently off.

Start: parameters are checked (a bad one is ERR_CONFIGURED, nothing touched)
-> under the node's tgtd config lock, the tid is chosen and the target is
created closed (tgt denies every initiator until an ACL names it) -> target
parameters -> the CHAP account is bound -> only then the ACL opens it -> the
result is read back and compared with the configuration; any failure deletes
what this start made.

Reload (OCF 1.1 reload-agent; Pacemaker sends it only for a change of
allowed_initiators or additional_parameters, every other change restarts):
under the config lock, new ACL entries are bound before old ones are
unbound (the ACL is never empty in between, which tgt would read as "nobody"
anyway, and never wider than old + new) -> target parameters -> sessions of
initiators the new ACL no longer admits are closed -> read back and compared.
Sessions of initiators still admitted stay up: no group restart.

Stop: new logins are refused (target state offline) -> tgt closes the
sessions, and any connection it cannot close (a send queue stuck behind a
silent initiator) is destroyed in the kernel -> the target is deleted -> only
then accounts are touched: a shared account (tgtuser's) is never deleted, an
own account only when no other target is bound to it.

A target the stock agent made (its own account bound alone, no guard) is
running as it is: moving a cluster to tgtha restarts nothing (README, "Moving a
running cluster from the stock agents"); its account becomes this resource's.
"""
from __future__ import annotations

from . import accounts
from . import ocf_runtime as ocf
from .iscsi_names import name_problem, parse_portal
from .netaddr import Network
from .ocf_runtime import ERR_CONFIGURED, ERR_GENERIC, ERR_INSTALLED, OCFError
from .tgtd import PLACEHOLDER_TID, TgtdControl, TgtdError, TgtdNotRunning, TgtdUnreachable
from .tgt_agent import TgtAgent, require_tgtd

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .tgtd import Target

OWNER = "iSCSITarget"
MAX_TID = PLACEHOLDER_TID - 1        # tgt's highest is the tgtd agent's placeholder
# An automatic tid is a hash of the IQN alone, so a target has the same tid on
# every node whatever the start order (tgt builds its LUNs' NAA-3 designator
# from the tid). tgt ORs the designator's type into the tid's top 4 bits, so
# tids stay below 2**28: two IQNs of a 1,000-target cluster share one with a
# probability of 0.2 %, and then the start says so instead of taking the next tid.
AUTO_TID_SPAN = 2**28 - 1


def automatic_tid(iqn: str) -> int:
    """The tid of a target configured without one: a function of its IQN only."""
    from .iscsi_names import sha256_hex
    return 1 + int(sha256_hex(iqn.encode())[:16], 16) % AUTO_TID_SPAN


class ISCSITarget(TgtAgent):
    ACTIONS = {**TgtAgent.ACTIONS, "reload-agent": "reload", "reload": "reload"}
    NAME = "iSCSITarget"
    PARAMETERS = {
        "implementation": "tgt",
        "iqn": "",
        "tid": "",
        "portals": "0.0.0.0:3260",
        "iser_portals": "",
        "allowed_initiators": "",
        "incoming_username": "",
        "incoming_password": "",
        "outgoing_username": "",
        "additional_parameters": "",
        "control_port": "0",
    }

    # ------------------------------------------------------------ parameters

    @property
    def iqn(self) -> str:
        return self.iscsi_name("iqn")

    @property
    def tid(self) -> int | None:
        value = self.param("tid").strip()
        if not value:
            return None
        if not value.isdigit() or not 1 <= int(value) <= MAX_TID:
            raise OCFError(ERR_CONFIGURED, f"tid={value!r} must be a number from 1 to {MAX_TID} "
                                           f"({PLACEHOLDER_TID} is the tgtd agent's placeholder target)")
        return int(value)

    @property
    def portals(self) -> list[tuple[Network, int]]:
        try:
            return [parse_portal(p) for p in self.param("portals").split()]
        except ValueError as err:
            raise OCFError(ERR_CONFIGURED, f"portals: {err}") from None

    @property
    def allowed_initiators(self) -> list[str]:
        """What the target's ACL must hold; empty means every initiator (tgt: ALL)."""
        entries = self.param("allowed_initiators").split()
        for entry in entries:
            if entry == "ALL" or entry.startswith(("iqn.", "eui.", "naa.")):
                problem = entry != "ALL" and name_problem(entry)
                if problem:
                    raise OCFError(ERR_CONFIGURED, f"allowed_initiators: {entry!r}: {problem}")
                continue
            try:
                Network.parse(entry)
            except ValueError:
                raise OCFError(ERR_CONFIGURED, f"allowed_initiators: {entry!r} is neither an "
                                               "iSCSI name, an IP address/network, nor ALL") from None
        return entries or ["ALL"]

    @property
    def username(self) -> str:
        value = self.param("incoming_username")
        return accounts.check_username(value, "incoming_username") if value else ""

    @property
    def password(self) -> str:
        value = self.param("incoming_password")
        ocf.register_secret(value)
        if value and not self.param("incoming_username"):
            raise OCFError(ERR_CONFIGURED, "incoming_password is set without incoming_username")
        return accounts.check_password(value, "incoming_password") if value else ""

    @property
    def outgoing_username(self) -> str:
        """The target's own credentials for mutual CHAP: an existing account (tgtuser's)."""
        value = self.param("outgoing_username")
        if not value:
            return ""
        accounts.check_username(value, "outgoing_username")
        if not self.param("incoming_username"):
            raise OCFError(ERR_CONFIGURED, "outgoing_username needs incoming_username: the target proves"
                                           " itself only to an initiator that has proved itself")
        if value == self.param("incoming_username"):
            # One secret both ways lets an attacker replay the target's own challenge
            # back to it (RFC 7143 12.1.3: the secrets must differ).
            raise OCFError(ERR_CONFIGURED, "outgoing_username must be another account than incoming_username")
        return value

    @property
    def shares_account(self) -> bool:
        """Bind to an account someone else (tgtuser) owns, instead of making one."""
        return bool(self.username) and not self.password

    @property
    def additional_parameters(self) -> list[tuple[str, str]]:
        return self.name_value_pairs("additional_parameters")

    # ---------------------------------------------------------------- actions

    def validate_all(self) -> int:
        # The parameters only: whether the shared account exists yet is this
        # node's state, not the configuration's (6 would ban the resource everywhere).
        self._validate()
        return ocf.SUCCESS

    def _validate(self) -> None:
        self.require_tgt_implementation()
        if self.param("iser_portals"):
            raise OCFError(ERR_CONFIGURED, "iser_portals is not supported with tgt "
                                           "(tgt's iSER portals are configured in tgtd)")
        self.iqn, self.tid, self.portals, self.allowed_initiators
        self.username, self.password, self.outgoing_username, self.additional_parameters, self.control_port
        require_tgtd()

    def monitor(self) -> int:
        iqn = self.iqn
        try:
            target = self.tgtd_for_monitor().target_by_iqn(iqn)
        except TgtdUnreachable:
            return ocf.NOT_RUNNING  # no tgtd, no target
        if target is None:
            return ocf.NOT_RUNNING
        problem = self._mismatch(target)
        try:
            if problem and self._passing(target):
                return ocf.SUCCESS
        except TgtdUnreachable:
            return ocf.NOT_RUNNING  # tgtd went away while we looked again: as above
        if problem:
            raise OCFError(ERR_GENERIC, f"target {iqn} (tid {target.tid}): {problem}")
        if not self.is_probe:
            self._adopt_stock_account_quietly(self.tgtd, target)
        return ocf.SUCCESS

    def _passing(self, target: Target) -> bool:
        """Is the target's difference another agent's work in progress (or left by
        one that died, which is then finished here)? Only states that keep the
        target closed: offline (a LUN stop), or bound to the guard alone (a
        password change of its account; tgtuser's next action finishes one that died)."""
        from . import transitions
        port = self.control_port
        guard_only = bool(self.username) and target.incoming == [accounts.GUARD_ACCOUNT]
        if target.state == "offline":
            live, dead = transitions.offline_marks(port, target.tid)
            if live:
                return True
            if dead:
                self.tgtd.set_target_state(target.tid, "ready")
                for mark in dead:
                    transitions.clear(mark)
                ocf.log_warning(f"target {target.iqn} (tid {target.tid}) was left offline by a LUN stop that"
                                " did not finish; set ready again")
                target.state = "ready"
                return self._mismatch(target) is None
        elif guard_only and target.state == "ready":
            if accounts.reload_interrupted(port, self.username):
                return True
        else:
            return False
        # The other agent may have finished between our reading the target and
        # our looking for its marks: read it once more.
        again = self.tgtd.target_by_iqn(target.iqn)
        return again is not None and again.tid == target.tid and self._mismatch(again) is None

    def start(self) -> int:
        self._validate()
        iqn = self.iqn
        ctl = self.tgtd_for_start()
        try:
            existing = ctl.target_by_iqn(iqn)
            if existing is not None:
                problem = self._mismatch(existing)
                if problem is None:
                    self._adopt_stock_account_quietly(ctl, existing)
                    return ocf.SUCCESS
                # Left by an interrupted start or stop: rebuild it from scratch.
                ocf.log_warning(f"target {iqn} exists but {problem}; recreating it")
                self._teardown(ctl, existing)
            self._create(ctl, iqn)
        except TgtdUnreachable as err:
            raise OCFError(ERR_GENERIC, f"cannot start target {iqn}: {err}") from None
        return ocf.SUCCESS

    def stop(self) -> int:
        iqn = self.iqn
        ctl = self.tgtd
        try:
            target = ctl.target_by_iqn(iqn)
            if target is not None:
                self._adopt_stock_account_quietly(ctl, target)
                self._teardown(ctl, target)
            self._release_own_account(ctl)
        except TgtdNotRunning:
            return ocf.SUCCESS  # no tgtd, no target
        except TgtdUnreachable as err:
            raise OCFError(ERR_GENERIC, f"cannot stop target {iqn}: {err}") from None
        except TgtdError as err:
            raise OCFError(ERR_GENERIC, f"cannot stop target {iqn}: {err}") from None
        return ocf.SUCCESS

    def reload(self) -> int:
        self._validate()
        iqn = self.iqn
        ctl = self.tgtd
        wanted = self.allowed_initiators
        try:
            with accounts.config_lock(self.control_port, self.deadline):
                target = ctl.target_by_iqn(iqn)
                if target is None:
                    # Pacemaker reloads running resources only: this one is gone, which
                    # its next monitor reports; a reload does not start it behind its back.
                    ocf.log_warning(f"reload: target {iqn} is not running; nothing applied")
                    return ocf.SUCCESS
                for initiator in wanted:
                    if initiator not in target.acls:
                        ctl.bind_initiator(target.tid, initiator)
                for initiator in target.acls:
                    if initiator not in wanted:
                        ctl.unbind_initiator(target.tid, initiator)
                for name, value in self.additional_parameters:
                    ctl.update_target(target.tid, name, value)
            # Sessions as they are now, under the new ACL: one that logged in while
            # the old list still held is among them.
            target = ctl.target_by_iqn(iqn) or target
            refused = [n for n in target.nexuses if not admitted(n, wanted)]
            if refused:
                from .sessions import close_sessions
                close_sessions(ctl, target, self.portals, self.deadline, only=refused)
                ocf.log_info(f"reload: target {iqn}: closed {len(refused)} session(s) the new ACL refuses")
            after = ctl.target_by_iqn(iqn)
        except TgtdUnreachable as err:
            raise OCFError(ERR_GENERIC, f"cannot reload target {iqn}: {err}") from None
        except TgtdError as err:
            raise OCFError(ERR_GENERIC, f"cannot reload target {iqn}: {err}") from None
        problem = "it vanished during the reload" if after is None else self._mismatch(after)
        if problem:
            raise OCFError(ERR_GENERIC, f"target {iqn} was reloaded but {problem}")
        return ocf.SUCCESS

    # ---------------------------------------------------------------- start

    def _create(self, ctl: TgtdControl, iqn: str) -> None:
        port = self.control_port
        made_account = False
        tid = None
        try:
            with accounts.config_lock(port, self.deadline):
                tid = self._choose_tid(ctl, iqn)
                made_account = self._check_account(ctl)
                # A new tgt target has an empty ACL: nobody can log in yet.
                ctl.create_target(tid, iqn)
                for name, value in self.additional_parameters:
                    ctl.update_target(tid, name, value)
                if self.username:
                    # The guard first: see accounts.py (CHAP stays on, no holes).
                    accounts.ensure_guard(ctl)
                    ctl.bind_account(tid, accounts.GUARD_ACCOUNT)
                    ctl.bind_account(tid, self.username)
                if self.outgoing_username:
                    ctl.bind_account(tid, self.outgoing_username, outgoing=True)
                for initiator in self.allowed_initiators:
                    ctl.bind_initiator(tid, initiator)
            target = ctl.target_by_iqn(iqn)
            problem = "it vanished right after creation" if target is None else self._mismatch(target)
            if problem:
                raise OCFError(ERR_GENERIC, f"target {iqn} was created but {problem}")
        except BaseException as err:  # noqa: BLE001 - roll back on anything, even SIGTERM's exit
            self._roll_back(ctl, tid, made_account)
            if isinstance(err, TgtdError):
                raise OCFError(ERR_GENERIC, f"cannot start target {iqn}: {err}") from None
            raise

    def _choose_tid(self, ctl: TgtdControl, iqn: str) -> int:
        in_use = {t.tid: t.iqn for t in ctl.targets()}
        wanted = self.tid
        if wanted is None:
            wanted = automatic_tid(iqn)
            holder = in_use.get(wanted)
            if holder is None:
                return wanted
            if automatic_tid(holder) == wanted:
                # A property of the two names, the same on every node.
                raise OCFError(ERR_CONFIGURED, f"{iqn} and {holder} hash to the same automatic tid {wanted}:"
                                               " give one of them an explicit tid")
            raise OCFError(ERR_GENERIC, f"tid {wanted} (automatic for {iqn}) is used by target {holder} on"
                                        " this node; give one of them an explicit tid")
        if wanted in in_use:
            # This node's state, not the configuration's: 1 moves the resource
            # elsewhere; 6 would ban it from every node.
            raise OCFError(ERR_GENERIC, f"tid {wanted} is already used by target {in_use[wanted]} "
                                        f"on this node; give {iqn} another tid, or none")
        return wanted

    def _check_account(self, ctl: TgtdControl) -> bool:
        """Make sure the account can be bound; True if this start created it."""
        user, password, port = self.username, self.password, self.control_port
        if not user:
            return False
        existing = ctl.accounts()
        outgoing = self.outgoing_username
        if outgoing and outgoing not in existing:
            raise OCFError(ERR_INSTALLED, f"account {outgoing} (outgoing_username) does not exist on this node;"
                                          " it is made by an ocf:tgtha:tgtuser clone, which must run here first")
        exists = user in existing
        if self.shares_account:
            if not exists:
                raise OCFError(ERR_INSTALLED, self._no_account_reason())
            return False
        if exists:
            if accounts.recorded_owner(port, user, password) is None:
                raise OCFError(ERR_GENERIC, f"account {user} already exists on this node with another password "
                               "(or was not made by tgtha); to share an account, run it with "
                               "ocf:tgtha:tgtuser and leave incoming_password empty")
            return False
        ctl.create_account(user, password)
        try:
            accounts.record_account(port, user, password, OWNER)
        except OCFError:
            ctl.delete_account(user)        # made just now, known to nobody: undo
            raise
        return True

    def _no_account_reason(self) -> str:
        return (f"account {self.username} does not exist on this node; incoming_username without "
                "incoming_password binds to an account made by ocf:tgtha:tgtuser, which must run "
                "here first (order and colocation constraints)")

    def _roll_back(self, ctl: TgtdControl, tid: int | None, made_account: bool) -> None:
        try:
            if tid is not None:
                target = ctl.target_by_iqn(self.iqn)
                if target is not None and target.tid == tid:
                    self._teardown(ctl, target)
            if made_account:
                self._release_own_account(ctl)
        except Exception as err:  # noqa: BLE001 - report the first failure, not this one
            ocf.log_error(f"rollback of target {self.iqn} incomplete: {err}")

    # ---------------------------------------------------------------- stop

    def _teardown(self, ctl: TgtdControl, target: Target) -> None:
        tid = target.tid
        try:
            ctl.set_target_state(tid, "offline")  # new logins get "target error": retry later
        except TgtdError as err:
            if err.code != 4:  # the target went away meanwhile
                raise
        from .sessions import close_sessions
        close_sessions(ctl, target, self.portals, self.deadline)
        ctl.delete_target(tid, force=True)

    def _release_own_account(self, ctl: TgtdControl) -> None:
        """Delete the account this target made, unless another target still uses it."""
        user, port = self.username, self.control_port
        with accounts.config_lock(port, self.deadline):
            if user and not self.shares_account:
                exists = user in ctl.accounts()
                if exists and accounts.recorded_owner(port, user) == OWNER \
                        and not any(accounts.bound_targets(ctl, user)):
                    ctl.delete_account(user)
                    exists = False
                if not exists:
                    accounts.forget_account(port, user)     # no account, no entry (stale or broken)
            accounts.drop_unused_guard(ctl)

    # ---------------------------------------------------------------- checks

    def _stock_form(self, target: Target) -> bool:
        """Its own account bound alone, without the guard: how the stock agent
        binds one. Still CHAP, and the account is deleted only after the target
        (this agent's stop), so nothing needs the guard before the next start
        makes the target in tgtha's form. Unbinding and rebinding to put the
        guard first would leave a hole in tgt's account array (accounts.py)."""
        return bool(self.password) and target.incoming == [self.username]

    def _adopt_stock_account(self, ctl: TgtdControl, target: Target) -> None:
        """An account the stock agent made (bound alone, in no ledger) becomes
        this agent's, as if its start had made it from the configured password
        (the stock agent made it from the same parameter): its stop deletes it as
        the stock agent's would, and a start on this node later is not refused
        for an account nobody claims."""
        user, port = self.username, self.control_port
        if not self._stock_form(target) or accounts.recorded_owner(port, user) is not None:
            return
        with accounts.config_lock(port, self.deadline):
            if user in ctl.accounts() and accounts.recorded_owner(port, user) is None:
                accounts.record_account(port, user, self.password, OWNER)
                ocf.log_info(f"target {target.iqn} (tid {target.tid}) is bound to account {user} alone, as "
                             "the stock agent binds it: the account is taken as this resource's own")

    def _adopt_stock_account_quietly(self, ctl: TgtdControl, target: Target) -> None:
        # The target serves as configured whatever happens here: no action fails
        # for it; the next monitor, start or stop tries again.
        try:
            self._adopt_stock_account(ctl, target)
        except (OCFError, TgtdUnreachable, TgtdError) as err:
            ocf.log_warning(f"target {target.iqn}: account {self.username} not recorded as its own: {err}")

    def _mismatch(self, target: Target) -> str | None:
        """How ``target`` differs from the configuration, or None."""
        if self.tid is not None and target.tid != self.tid:
            return f"it runs as tid {target.tid}, configured tid is {self.tid}"
        if target.state != "ready":
            return f"its state is {target.state!r}, not ready (an interrupted stop?)"
        wanted = [accounts.GUARD_ACCOUNT, self.username] if self.username else []
        if target.incoming != wanted and not self._stock_form(target):
            if self.username and target.incoming == [accounts.GUARD_ACCOUNT]:
                return (f"its account {self.username} is no longer bound (deleted while the target "
                        "ran: tgtuser stopped first?); it refuses every login")
            if not target.incoming and self.username:
                return f"its account {self.username} is not bound: it accepts logins without CHAP"
            return f"its incoming accounts are {target.incoming}, configured {wanted or 'none'}"
        if (target.outgoing or "") != self.outgoing_username:
            if self.outgoing_username and not target.outgoing:
                return (f"its outgoing account {self.outgoing_username} is not bound (deleted while the target"
                        " ran?): initiators that check the target's credentials refuse it")
            return (f"its outgoing account is {target.outgoing or 'none'},"
                    f" configured {self.outgoing_username or 'none'}")
        if sorted(target.acls) != sorted(self.allowed_initiators):
            return f"its ACL is {target.acls}, configured {self.allowed_initiators}"
        return None


def admitted(nexus, acl: list[str]) -> bool:
    """Does ``acl`` (allowed_initiators' entries) admit this session, as tgt would at
    login: ALL, its initiator name, or the address of every one of its connections?
    The name is the initiator's own claim (as it is to tgt's ACL); an address is
    the peer tgt saw. A session this cannot read is not admitted."""
    if "ALL" in acl:
        return True
    if nexus.initiator and nexus.initiator in acl:
        return True
    networks = [Network.parse(entry) for entry in acl if not entry.startswith(("iqn.", "eui.", "naa."))]
    from .sessions import peer_address
    peers = [peer_address(c.address) for c in nexus.connections]
    return bool(peers) and all(peer is not None and any(net.contains(peer.packed) for net in networks)
                              for peer in peers)


def main() -> None:
    ocf.main(ISCSITarget)
