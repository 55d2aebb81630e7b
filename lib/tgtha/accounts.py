"""tgt CHAP accounts: who made them, and how to change them without opening a target.

Three facts about tgt (1.0.85 and upstream HEAD) shape this module:
- a target with no incoming account accepts logins without credentials;
- deleting an account unbinds it from every target first;
- unbinding an account leaves a hole in the target's account array, and while
  a bound account sits behind that hole, ``tgtadm --mode target --op show``
  dereferences NULL and tgtd dies (tests/test_tgt_facts.py shows it).
So every CHAP target tgtha makes is bound first to a *guard* account whose
password nobody knows, then to its real account. The guard never lets anyone
in, keeps CHAP on when the real account is deleted (tgtuser stopped too early,
a password change), and, being first, never leaves a hole in front of another
account. A target bound by someone else without the guard is set offline
(refuses logins) for as long as its account is missing.

tgtd cannot tell us an account's password. To know whether an existing account
is the one a configuration describes, the agent that created it leaves a
ledger entry in the node's runtime directory: the creator and a salted SHA-256
of the password (root-only file; /run is cleared with tgtd's accounts at boot).
"""
from __future__ import annotations

import os

from .mutex import FileMutex, state_dir
from .ocf_runtime import ERR_CONFIGURED, ERR_GENERIC, OCFError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .tgtd import Target, TgtdControl

GUARD_ACCOUNT = "tgtha-guard"
OWNER_TGTUSER = "tgtuser"
FORBIDDEN_IN_USERNAME = ", =\t\n\r\0"


def check_username(name: str, parameter: str) -> str:
    if not name:
        raise OCFError(ERR_CONFIGURED, f"{parameter} is empty")
    bad = sorted({c for c in name if c in FORBIDDEN_IN_USERNAME})
    if bad:
        raise OCFError(ERR_CONFIGURED, f"{parameter}={name!r} contains {''.join(bad)!r}; "
                                       "tgt account names cannot hold commas, '=', or whitespace")
    if len(name) > 255:
        raise OCFError(ERR_CONFIGURED, f"{parameter} is longer than 255 characters")
    if name == GUARD_ACCOUNT:
        raise OCFError(ERR_CONFIGURED, f"{parameter}: {GUARD_ACCOUNT!r} is reserved by tgtha")
    return name


def check_password(password: str, parameter: str) -> str:
    # Never quote the value: it is a secret.
    if not password:
        raise OCFError(ERR_CONFIGURED, f"{parameter} is empty")
    if "\0" in password or "\n" in password:
        raise OCFError(ERR_CONFIGURED, f"{parameter} contains a NUL or newline character")
    if len(password) > 255:
        raise OCFError(ERR_CONFIGURED, f"{parameter} is longer than 255 characters")
    return password


def config_lock(control_port: int, deadline: float) -> FileMutex:
    """Node-wide mutex for structural changes to one tgtd (tids, accounts)."""
    return FileMutex(os.path.join(state_dir(), f"tgtd{control_port}.lock"), deadline)


# ------------------------------------------------------------ the ledger

def _ledger_path(control_port: int, user: str) -> str:
    """A file name for ``user``'s entry that fits any file system whatever the
    name's length (a long name in hex hit ENAMETOOLONG from ~118 characters)."""
    encoded = user.encode().hex()
    if len(encoded) > 64:
        from .iscsi_names import sha256_hex
        encoded = "h-" + sha256_hex(user.encode())
    return os.path.join(state_dir(), f"tgtd{control_port}-account-{encoded}")


def _digest(salt: bytes, password: str) -> str:
    from .iscsi_names import sha256_hex
    return sha256_hex(salt + password.encode())


def record_account(control_port: int, user: str, password: str, owner: str) -> None:
    """Write the ledger entry; OCFError(ERR_GENERIC) if it cannot be written (the
    caller then undoes what it made: an account nobody knows it owns is a leak)."""
    salt = os.urandom(16)
    path = _ledger_path(control_port, user)
    temporary = f"{path}.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as ledger:
            ledger.write(f"{owner}\n{salt.hex()}\n{_digest(salt, password)}\n")
        os.replace(temporary, path)
    except OSError as err:
        _unlink(temporary)
        raise OCFError(ERR_GENERIC, f"cannot record account {user} in {path}: {err.strerror}") from None


def recorded_owner(control_port: int, user: str, password: str | None = None) -> str | None:
    """Who created ``user`` (None: unknown, also for an unreadable, truncated or
    corrupt entry); with ``password``, only if it matches."""
    try:
        with open(_ledger_path(control_port, user)) as ledger:
            owner, salt, digest = ledger.read().split("\n")[:3]
        if password is not None and _digest(bytes.fromhex(salt), password) != digest:
            return None
    except (OSError, ValueError):       # ValueError: short, not hex, not UTF-8
        return None
    return owner if owner else None


def forget_account(control_port: int, user: str) -> None:
    path = _ledger_path(control_port, user)
    if os.path.isdir(path) and not os.path.islink(path):
        import shutil
        shutil.rmtree(path, ignore_errors=True)
    _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ------------------------------------------------------------ guarding

def bound_targets(ctl: TgtdControl, user: str, targets: list[Target] | None = None
                  ) -> tuple[list[int], list[int]]:
    """Tids that have ``user`` as (incoming, outgoing) account (of ``targets``
    when the caller has read them already)."""
    incoming, outgoing = [], []
    for target in ctl.targets() if targets is None else targets:
        if user in target.incoming:
            incoming.append(target.tid)
        if target.outgoing == user:
            outgoing.append(target.tid)
    return incoming, outgoing


def ensure_guard(ctl: TgtdControl) -> None:
    from .tgtd import ERR_USER_EXIST, TgtdError
    if GUARD_ACCOUNT in ctl.accounts():
        return
    try:
        ctl.create_account(GUARD_ACCOUNT, os.urandom(24).hex())
    except TgtdError as err:
        if err.code != ERR_USER_EXIST:
            raise


def guards(target: Target, user: str) -> bool:
    """True if the guard comes before ``user`` on ``target``: deleting ``user``
    then leaves CHAP on and no hole."""
    names = target.incoming
    return GUARD_ACCOUNT in names and (user not in names or names.index(GUARD_ACCOUNT) < names.index(user))


def unguarded_ready(targets: list[Target], user: str) -> list[Target]:
    """The ready targets that would be open, or crash tgtd, once ``user`` is deleted."""
    return [t for t in targets if user in t.incoming and not guards(t, user) and t.state == "ready"]


def close_unguarded(ctl: TgtdControl, user: str) -> list[Target]:
    """Set offline every target ``unguarded_ready`` names; returns them."""
    closed = unguarded_ready(ctl.targets(), user)
    for target in closed:
        ctl.set_target_state(target.tid, "offline")
    return closed


def drop_unused_guard(ctl: TgtdControl) -> None:
    if GUARD_ACCOUNT not in ctl.accounts():
        return
    if any(bound_targets(ctl, GUARD_ACCOUNT)):
        return
    ctl.delete_account(GUARD_ACCOUNT)


def replace_password(ctl: TgtdControl, user: str, password: str) -> list[int]:
    """Give ``user`` a new password, keeping every binding and CHAP on throughout.

    tgt cannot change a password in place: the account is deleted (which
    unbinds it everywhere) and created again. Guarded targets refuse logins
    in between; unguarded ones are offline for that moment. Returns the tids
    that were rebound. What is to be restored is written down first (the
    reload journal): if the agent dies half way (kill -9, op timeout), the
    next tgtuser action on the node finishes the job (finish_interrupted_reload).
    """
    from .tgtd import ERR_NO_USER, TgtdError
    targets = ctl.targets()
    incoming, outgoing = bound_targets(ctl, user, targets)
    unguarded = [t.tid for t in unguarded_ready(targets, user)]
    _write_journal(ctl.control_port, user, incoming, outgoing, unguarded)
    for tid in unguarded:
        ctl.set_target_state(tid, "offline")
    try:
        ctl.delete_account(user)
    except TgtdError as err:
        if err.code != ERR_NO_USER:
            raise
    ctl.create_account(user, password)
    _restore(ctl, user, incoming, outgoing, unguarded)
    _unlink(_journal_path(ctl.control_port, user))
    return sorted(set(incoming) | set(outgoing))


def reload_interrupted(control_port: int, user: str) -> bool:
    """Cheap check (one stat) for the monitor path."""
    return os.path.exists(_journal_path(control_port, user))


def finish_interrupted_reload(ctl: TgtdControl, user: str, password: str) -> bool:
    """Complete a password change whose agent died half way; True if there was one.
    Call under config_lock: a journal seen there has no live writer."""
    from .ocf_runtime import log_warning
    journal = _read_journal(ctl.control_port, user)
    if journal is None:
        return False
    incoming, outgoing, closed = journal
    if user not in ctl.accounts():
        ctl.create_account(user, password)
    _restore(ctl, user, incoming, outgoing, closed)
    _unlink(_journal_path(ctl.control_port, user))
    log_warning(f"account {user}: finished a password change that was interrupted (targets "
                f"{', '.join(map(str, sorted(set(incoming) | set(outgoing)))) or 'none'} rebound)")
    return True


def _restore(ctl: TgtdControl, user: str, incoming: list[int], outgoing: list[int], closed: list[int]) -> None:
    """Bindings back (behind the guard, in the slot the account left), closed targets reopened."""
    targets = {t.tid: t for t in ctl.targets()}
    for tid in incoming:
        if tid in targets and user not in targets[tid].incoming:
            ctl.bind_account(tid, user)
    for tid in outgoing:
        if tid in targets and targets[tid].outgoing != user:
            ctl.bind_account(tid, user, outgoing=True)
    for tid in closed:
        if tid in targets:
            ctl.set_target_state(tid, "ready")


def _journal_path(control_port: int, user: str) -> str:
    return _ledger_path(control_port, user) + ".reload"


def _write_journal(control_port: int, user: str, incoming: list[int], outgoing: list[int],
                   closed: list[int]) -> None:
    path = _journal_path(control_port, user)
    temporary = f"{path}.{os.getpid()}"
    lines = [" ".join(map(str, tids)) for tids in (incoming, outgoing, closed)]
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as journal:
            journal.write("\n".join(lines) + "\n")
        os.replace(temporary, path)
    except OSError as err:
        _unlink(temporary)
        raise OCFError(ERR_GENERIC, f"cannot write the reload journal {path}: {err.strerror}") from None


def _read_journal(control_port: int, user: str) -> tuple[list[int], list[int], list[int]] | None:
    try:
        with open(_journal_path(control_port, user)) as journal:
            lines = journal.read().split("\n")[:3]
        incoming, outgoing, closed = ([int(tid) for tid in line.split()] for line in lines)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # Unreadable: rebind wherever the account is expected is unknowable here;
        # the targets' own monitors report what is missing.
        _unlink(_journal_path(control_port, user))
        return None
    return incoming, outgoing, closed
