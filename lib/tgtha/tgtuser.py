"""ocf:tgtha:tgtuser - one tgt CHAP account, shared by every target on the node.

Run as a clone next to the tgtd clone; iSCSITarget resources with
``incoming_username`` and no ``incoming_password`` bind to it.

Data flow: parameters (username, password: a bad one is ERR_CONFIGURED) ->
tgtd's management socket -> account created / checked / deleted under the
node's tgtd config lock -> read back.
"""
from __future__ import annotations

from . import accounts
from . import ocf_runtime as ocf
from .ocf_runtime import ERR_GENERIC, OCFError
from .tgt_agent import TgtAgent, require_tgtd
from .tgtd import TgtdControl, TgtdError, TgtdNotRunning, TgtdUnreachable


class Tgtuser(TgtAgent):
    NAME = "tgtuser"
    PARAMETERS = {
        "username": "",
        "password": "",
        "control_port": "0",
    }
    ACTIONS = {**ocf.Agent.ACTIONS, "reload": "reload", "reload-agent": "reload"}

    # ------------------------------------------------------------ parameters

    @property
    def username(self) -> str:
        return accounts.check_username(self.param("username"), "username")

    @property
    def password(self) -> str:
        value = self.param("password")
        ocf.register_secret(value)
        return accounts.check_password(value, "password")

    # ---------------------------------------------------------------- actions

    def validate_all(self) -> int:
        self.username, self.password, self.control_port
        require_tgtd()
        return ocf.SUCCESS

    def monitor(self) -> int:
        user = self.username
        try:
            ctl = self.tgtd_for_monitor()
            if accounts.reload_interrupted(self.control_port, user):
                # A reload killed half way: finish it (rebind, reopen) instead of
                # reporting the account missing and restarting every target.
                with accounts.config_lock(self.control_port, self.deadline):
                    accounts.finish_interrupted_reload(ctl, user, self.password)
            present = user in ctl.accounts()
        except TgtdUnreachable as err:
            if self.is_probe:
                return ocf.NOT_RUNNING
            raise OCFError(ocf.NOT_RUNNING, f"account {user}: {err}") from None
        except TgtdError as err:
            raise OCFError(ERR_GENERIC, f"account {user}: {err}") from None
        return ocf.SUCCESS if present else ocf.NOT_RUNNING

    def start(self) -> int:
        self.validate_all()
        self._ensure_password(self.tgtd_for_start(), self.username, self.password)
        return ocf.SUCCESS

    def reload(self) -> int:
        """Apply a changed password: no target restarts, CHAP on throughout.
        A stopped account stays stopped (Pacemaker reloads only running ones)."""
        self.validate_all()
        found = self._ensure_password(self.tgtd, self.username, self.password, create=False)
        return ocf.SUCCESS if found else ocf.NOT_RUNNING

    def stop(self) -> int:
        user, port = self.username, self.control_port
        ctl = self.tgtd
        try:
            with accounts.config_lock(port, self.deadline):
                if user not in ctl.accounts():
                    accounts.forget_account(port, user)
                    return ocf.SUCCESS
                still_bound = [t for t in ctl.targets() if user in t.incoming or t.outgoing == user]
                if still_bound:
                    # Guarded targets refuse every login once the account is
                    # gone; a target bound without the guard is set offline.
                    accounts.close_unguarded(ctl, user)
                    ocf.log_error(
                        f"account {user} is still bound to target(s) "
                        + ", ".join(f"{t.tid} ({t.iqn})" for t in still_bound)
                        + " while tgtuser stops: they now refuse every new login until they are "
                          "stopped. Missing constraint: order the tgtuser clone before the "
                          "iSCSITarget resources (see the tgtuser metadata).")
                ctl.delete_account(user)
                accounts.forget_account(port, user)
        except TgtdNotRunning:
            return ocf.SUCCESS  # no tgtd, no account
        except TgtdUnreachable as err:
            raise OCFError(ERR_GENERIC, f"cannot delete account {user}: {err}") from None
        except TgtdError as err:
            raise OCFError(ERR_GENERIC, f"cannot delete account {user}: {err}") from None
        return ocf.SUCCESS

    # ---------------------------------------------------------------- helpers

    def _ensure_password(self, ctl: TgtdControl, user: str, password: str, create: bool = True) -> bool:
        """The account exists with ``password``, created or replaced safely.
        False if it does not exist and ``create`` is False."""
        port = self.control_port
        try:
            with accounts.config_lock(port, self.deadline):
                accounts.finish_interrupted_reload(ctl, user, password)
                exists = user in ctl.accounts()
                if not exists and not create:
                    return False
                if exists and accounts.recorded_owner(port, user, password) is not None:
                    accounts.record_account(port, user, password, accounts.OWNER_TGTUSER)
                    return True
                if exists:
                    # Created by someone else, or with another password: we
                    # cannot read it back, so set ours without an open window.
                    accounts.replace_password(ctl, user, password)
                else:
                    ctl.create_account(user, password)
                try:
                    accounts.record_account(port, user, password, accounts.OWNER_TGTUSER)
                except OCFError:
                    if not exists:
                        ctl.delete_account(user)    # made just now, known to nobody: undo
                    raise
                if user not in ctl.accounts():
                    raise OCFError(ERR_GENERIC, f"account {user} is missing right after creating it")
                return True
        except TgtdUnreachable as err:
            raise OCFError(ERR_GENERIC, f"account {user}: {err}") from None
        except TgtdError as err:
            raise OCFError(ERR_GENERIC, f"account {user}: {err}") from None


def main() -> None:
    ocf.main(Tgtuser)
