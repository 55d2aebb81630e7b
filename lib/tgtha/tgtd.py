"""Everything tgtha says to tgtd, over tgtd's management socket.

tgtadm is a thin client: it packs a fixed request header (``struct
tgtadm_req`` in tgt's usr/tgtadm.h) and a ``key=value,...`` string, writes
them to the unix socket ``/var/run/tgtd/socket.<control port>`` and prints the
text tgtd answers. We speak that protocol directly, for two reasons:
- tgtadm takes a CHAP password only on its command line, where every user of
  the node can read it in /proc/*/cmdline; on the socket it never leaves us;
- one request costs a connect and a write instead of a fork and an exec.

The known transient answers are handled here, once: "this target is still
active" and "this logical unit is still active" mean sessions or commands are
in flight, and ``delete_target`` / ``delete_lun`` retry them until the op's
deadline. Every other error is raised as ``TgtdError`` with tgtadm's text.
"""
from __future__ import annotations

import os
import struct
import time

# The socket module costs ~18 ms to import (enum, selectors); _socket is free.
import _socket

# enum tgtadm_op / enum tgtadm_mode / enum tgtadm_account_dir (usr/tgtadm.h)
OP_NEW, OP_DELETE, OP_SHOW, OP_BIND, OP_UNBIND, OP_UPDATE, OP_STATS, OP_START, OP_STOP = range(9)
(MODE_SYSTEM, MODE_TARGET, MODE_DEVICE, MODE_PORTAL, MODE_LLD,
 MODE_SESSION, MODE_CONNECTION, MODE_ACCOUNT) = range(8)
ACCOUNT_INCOMING, ACCOUNT_OUTGOING = 0, 1

# struct tgtadm_req: mode, op, lld[64], len, tid, sid, lun, cid, host_no,
# device_type, ac_dir, pack, force (120 bytes, no padding on x86-64/arm64).
_REQUEST = struct.Struct("=ii64sIiQQIIIIII")
_RESPONSE = struct.Struct("=II")
MAX_REQUEST_BODY = 8 * 1024 - 1  # tgtd's MAX_MGT_BUFSIZE, with the NUL

# enum tgtadm_errno, with tgtadm's own words for each
ERR_NO_TARGET = 4
ERR_NO_LUN = 5
ERR_NO_SESSION = 6
ERR_NO_CONNECTION = 7
ERR_TARGET_EXIST = 9
ERR_LUN_EXIST = 10
ERR_BINDING_EXIST = 11
ERR_ACL_EXIST = 12
ERR_ACL_NOEXIST = 13
ERR_USER_EXIST = 14
ERR_NO_USER = 15
ERR_TARGET_ACTIVE = 19
ERR_LUN_ACTIVE = 20
MESSAGES = {
    1: "unknown error", 2: "out of memory", 3: "can't find the driver",
    4: "can't find the target", 5: "can't find the logical unit",
    6: "can't find the session", 7: "can't find the connection",
    8: "can't find the binding", 9: "this target already exists",
    10: "this logical unit number already exists", 11: "this binding already exists",
    12: "this access control rule already exists", 13: "this access control rule does not exist",
    14: "this account already exists", 15: "can't find the account", 16: "too many accounts",
    17: "invalid request", 18: "this target already has an outgoing account",
    19: "this target is still active", 20: "this logical unit is still active",
    21: "this driver is busy", 22: "this operation isn't supported", 23: "unknown parameter",
    24: "this device has Prevent Removal set",
}
RETRY_INTERVAL_S = 0.1
# The tgtd agent's placeholder target (tgtdaemon.py): the highest tid tgtadm takes,
# above every automatic tid; no iSCSITarget may be given it.
PLACEHOLDER_TID = 2**31 - 1


class TgtdError(Exception):
    """tgtd refused a request; ``code`` is its tgtadm_errno."""

    def __init__(self, code: int, what: str) -> None:
        self.code = code
        self.what = what
        super().__init__(f"{what}: {MESSAGES.get(code, f'tgtd error {code}')}")


class TgtdUnreachable(Exception):
    """No tgtd answers on the management socket (not running, or hung)."""


class TgtdNotRunning(TgtdUnreachable):
    """Nothing listens on the management socket: no tgtd runs on that control port."""


def socket_path(control_port: int) -> str:
    base = os.environ.get("TGT_IPC_SOCKET", "/var/run/tgtd/socket")
    return f"{base}.{control_port}"


# ------------------------------------------------------------ what tgtd shows

class Connection:
    __slots__ = ("cid", "address")

    def __init__(self, cid: int, address: str) -> None:
        self.cid = cid
        self.address = address


class Nexus:
    """An I_T nexus: one initiator session (``sid`` for connection ops)."""
    __slots__ = ("sid", "initiator", "connections")

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.initiator = ""
        self.connections: list[Connection] = []


class LogicalUnit:
    __slots__ = ("lun", "fields")

    def __init__(self, lun: int) -> None:
        self.lun = lun
        self.fields: dict[str, str] = {}

    @property
    def path(self) -> str:
        return self.fields.get("Backing store path", "")

    @property
    def scsi_id(self) -> str:
        return self.fields.get("SCSI ID", "")

    @property
    def scsi_sn(self) -> str:
        return self.fields.get("SCSI SN", "")


class Target:
    __slots__ = ("tid", "iqn", "state", "nexuses", "luns", "incoming", "outgoing", "acls")

    def __init__(self, tid: int, iqn: str) -> None:
        self.tid = tid
        self.iqn = iqn
        self.state = ""
        self.nexuses: list[Nexus] = []
        self.luns: dict[int, LogicalUnit] = {}
        self.incoming: list[str] = []
        self.outgoing: str | None = None
        self.acls: list[str] = []


def parse_targets(text: str) -> list[Target]:
    """Parse ``tgtadm --mode target --op show`` as if every tid shown existed
    (the hostile-text rules are tgtshow's; TgtdControl also asks tgtd which tids
    exist, and re-reads with marks a text with forged headers)."""
    from .tgtshow import Show
    return Show(text, lambda tid: True).targets()


def parse_system_state(text: str) -> str:
    """The ``State:`` of ``tgtadm --mode sys --op show``'s "System:" section."""
    return parse_system_field(text, "State")


def parse_system_field(text: str, name: str) -> str:
    """One field (``State``, ``debug``) of the "System:" section of ``tgtadm --mode sys --op show``."""
    section = ""
    for line in text.splitlines():
        if not line.startswith(" "):
            section = line.strip()
        elif section == "System:" and line.strip().startswith(f"{name}: "):
            return line.strip()[len(name) + 2:]
    return ""


def parse_portals(text: str) -> list[tuple[str, int]]:
    """``tgtadm --lld iscsi --mode portal --op show``: "Portal: ADDRESS:PORT,TPGT" lines."""
    portals = []
    for line in text.splitlines():
        if line.startswith("Portal: "):
            address, _, port = line[len("Portal: "):].rpartition(",")[0].rpartition(":")
            if port.isdigit():
                portals.append((address.strip("[]"), int(port)))
    return portals


def parse_accounts(text: str) -> list[str]:
    """Parse ``tgtadm --mode account --op show``."""
    return [line.strip() for line in text.splitlines()
            if line.startswith(" ") and line.strip()]


# ------------------------------------------------------------ the client

class TgtdControl:
    """One tgtd, addressed by its control port; every call bounded by ``deadline``."""

    def __init__(self, control_port: int, deadline: float, *, patience: float = 0.0) -> None:
        """``patience``: how long (never past the deadline) a tgtd that does not
        listen yet is waited for, until the first request reaches it. tgt's
        init script and unit return as soon as tgtd is forked, before it
        listens: what is ordered after tgtd would otherwise find nothing there."""
        self.control_port = control_port
        self.deadline = deadline
        self.path = socket_path(control_port)
        self._patient_until = min(deadline, time.monotonic() + patience) if patience > 0 else None

    def request(self, mode: int, op: int, *, tid: int = -1, sid: int = 0, lun: int = 0,
                cid: int = 0, device_type: int = 0, ac_dir: int = 0, force: int = 0,
                params: str = "", what: str = "") -> str:
        """Send one request; return tgtd's text or raise TgtdError/TgtdUnreachable.

        Every connection carries a whole request, never a connect alone: tgtd
        1.0.85 reads a management connection closed before its first byte as
        "nothing yet" whenever the errno left by its previous call is EAGAIN
        (usr/mgmt.c), so the connection stays in its event loop, readable
        forever: each one costs tgtd a busy loop (seen in the lab: one tgtd at
        100 % of a core, dozens of such connections, failovers slower with
        every monitor). So a tgtd still starting is waited for by retrying the
        request itself: a refused connect has sent nothing."""
        body = params.encode() + b"\0" if params else b""
        if len(body) > MAX_REQUEST_BODY:
            raise TgtdError(17, what or "request")
        header = _REQUEST.pack(mode, op, b"iscsi", _REQUEST.size + len(body), tid, sid, lun,
                               cid, 0, device_type, ac_dir, 0, force)
        while True:
            try:
                answer = self._exchange(header + body)
                break
            except TgtdNotRunning:
                if self._patient_until is None or time.monotonic() >= self._patient_until:
                    raise
                time.sleep(0.05)
        self._patient_until = None  # reached: from now on a missing tgtd is news
        return answer if isinstance(answer, str) else self._raise(answer, what)

    def _exchange(self, request: bytes) -> str | int:
        """One connection: the request out, tgtd's text or error number back."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TgtdUnreachable(f"no time left to reach tgtd at {self.path}")
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(left)
            try:
                sock.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError):
                raise TgtdNotRunning(f"tgtd is not running (nothing listens on {self.path})") from None
            sock.sendall(request)
            return self._receive(sock)
        except TimeoutError:
            raise TgtdUnreachable(f"tgtd at {self.path} did not answer in time") from None
        except OSError as err:      # reset, broken pipe, permission: never a traceback
            raise TgtdUnreachable(f"tgtd at {self.path}: {err.strerror or err}") from None
        finally:
            sock.close()

    @staticmethod
    def _receive(sock: _socket.socket) -> str | int:
        head = b""
        while len(head) < _RESPONSE.size:
            chunk = sock.recv(_RESPONSE.size - len(head))
            if not chunk:
                raise TgtdUnreachable("tgtd closed the management connection")
            head += chunk
        err, length = _RESPONSE.unpack(head)
        if err:
            return err
        remaining = length - _RESPONSE.size
        parts = []
        while remaining > 0:
            chunk = sock.recv(min(remaining, 65536))
            if not chunk:
                # A cut answer is no answer: parsing half a "show" would
                # make targets or LUNs disappear.
                raise TgtdUnreachable(f"tgtd closed the management connection {remaining} bytes "
                                      "short of its answer")
            parts.append(chunk)
            remaining -= len(chunk)
        return b"".join(parts).rstrip(b"\0").decode(errors="replace")

    @staticmethod
    def _raise(code: int, what: str) -> str:
        raise TgtdError(code, what)

    # ---------------------------------------------------------- reading

    def show(self):
        """The targets as tgtd shows them, read as tgtshow.Show (initiators write part of it)."""
        from .tgtshow import Show
        return Show(self.request(MODE_TARGET, OP_SHOW, what="show targets"), self.tid_exists,
                    self.show_marked)

    def show_marked(self, tids: list[int]) -> tuple[str, dict[int, str]]:
        """The show again, with a fresh random entry at the end of each of
        ``tids``' ACLs while it is read (tgtshow's marks: only when an initiator
        forged a copy of a real target's header). A mark is an "address" tgt
        can never match: it lets nobody in, even if left behind."""
        from .tgtshow import MARK_PREFIX
        marks = {tid: MARK_PREFIX + os.urandom(16).hex() for tid in tids}
        bound = []
        try:
            for tid, mark in marks.items():
                try:
                    self.bind_initiator(tid, mark)
                    bound.append(tid)
                except TgtdError as err:
                    if err.code != ERR_NO_TARGET:
                        raise
            return self.request(MODE_TARGET, OP_SHOW, what="show targets (marked)"), marks
        finally:
            for tid in bound:
                try:
                    self.unbind_initiator(tid, marks[tid])
                except (TgtdError, TgtdUnreachable):
                    pass    # gone meanwhile, or out of time: a left mark admits nobody

    def tid_exists(self, tid: int) -> bool:
        """Asked of tgtd alone: the answer holds no text an initiator wrote."""
        try:
            self.request(MODE_TARGET, OP_SHOW, tid=tid, what=f"show target {tid}")
            return True
        except TgtdError as err:
            if err.code == ERR_NO_TARGET:
                return False
            raise

    def targets(self) -> list[Target]:
        return self.show().targets()

    def target_by_iqn(self, iqn: str) -> Target | None:
        """The real target named ``iqn``: a header naming it counts only if it is
        the real header of its tid (see tgtshow)."""
        show = self.show()
        for tid in show.tids_named(iqn):
            target = show.target(tid)
            if target is not None and target.iqn == iqn:
                return target
        return None

    def accounts(self) -> list[str]:
        return parse_accounts(self.request(MODE_ACCOUNT, OP_SHOW, what="show accounts"))

    def system_state(self) -> str:
        """"ready" or "offline" (an offline tgtd closes every new connection at once)."""
        return parse_system_state(self.request(MODE_SYSTEM, OP_SHOW, what="show system"))

    def portals(self) -> list[tuple[str, int]]:
        return parse_portals(self.request(MODE_PORTAL, OP_SHOW, what="show portals"))

    # ---------------------------------------------------------- the daemon

    def set_system_state(self, state: str) -> None:
        self.request(MODE_SYSTEM, OP_UPDATE, params=f"State={state}", what=f"set tgtd {state}")

    def shut_down(self) -> None:
        """tgtd leaves its event loop after answering; refused while any target exists."""
        self.request(MODE_SYSTEM, OP_DELETE, what="shut tgtd down")

    # ---------------------------------------------------------- targets

    def create_target(self, tid: int, iqn: str) -> None:
        self.request(MODE_TARGET, OP_NEW, tid=tid, params=f"targetname={iqn}",
                     what=f"create target {tid} ({iqn})")

    def update_target(self, tid: int, name: str, value: str) -> None:
        self.request(MODE_TARGET, OP_UPDATE, tid=tid, params=f"{name}={value}",
                     what=f"set {name} on target {tid}")

    def set_target_state(self, tid: int, state: str) -> None:
        self.update_target(tid, "state", state)

    def delete_target(self, tid: int, force: bool = False) -> None:
        """Delete, retrying "still active" until the deadline; a missing target is fine."""
        self._retry_while_active(lambda: self.request(
            MODE_TARGET, OP_DELETE, tid=tid, force=int(force), what=f"delete target {tid}"),
            ignore=(ERR_NO_TARGET,))

    def bind_initiator(self, tid: int, initiator: str) -> None:
        self.request(MODE_TARGET, OP_BIND, tid=tid, params=acl_param(initiator),
                     what=f"allow {initiator} on target {tid}")

    def unbind_initiator(self, tid: int, initiator: str) -> None:
        self.request(MODE_TARGET, OP_UNBIND, tid=tid, params=acl_param(initiator),
                     what=f"remove {initiator} from target {tid}")

    def delete_connection(self, tid: int, sid: int, cid: int) -> None:
        try:
            self.request(MODE_CONNECTION, OP_DELETE, tid=tid, sid=sid, cid=cid,
                         what=f"close connection {sid}/{cid} of target {tid}")
        except TgtdError as err:
            if err.code not in (ERR_NO_SESSION, ERR_NO_CONNECTION, ERR_NO_TARGET):
                raise

    # ---------------------------------------------------------- accounts

    def create_account(self, user: str, password: str) -> None:
        # tgtd takes the user up to the first comma and the password to the
        # end of the string, so a password may hold any character but NUL.
        # With its debug output on (tgtd -d 1, or "debug=on"), tgtd logs every
        # request's parameters, the password too (mgmt.c's mtask_execute): off
        # for this one request, on again after.
        debugging = parse_system_field(self.request(MODE_SYSTEM, OP_SHOW, what="show system"), "debug") == "on"
        if debugging:
            self.request(MODE_SYSTEM, OP_UPDATE, params="debug=off", what="pause tgtd's debug output")
        try:
            self.request(MODE_ACCOUNT, OP_NEW, params=f"user={user},password={password}",
                         what=f"create account {user}")
        finally:
            if debugging:
                self.request(MODE_SYSTEM, OP_UPDATE, params="debug=on", what="resume tgtd's debug output")

    def delete_account(self, user: str) -> None:
        """Delete an account; tgtd unbinds it from every target first."""
        self.request(MODE_ACCOUNT, OP_DELETE, params=f"user={user}", what=f"delete account {user}")

    def bind_account(self, tid: int, user: str, outgoing: bool = False) -> None:
        self.request(MODE_ACCOUNT, OP_BIND, tid=tid, ac_dir=int(outgoing), params=f"user={user}",
                     what=f"bind account {user} to target {tid}")

    def unbind_account(self, tid: int, user: str, outgoing: bool = False) -> None:
        self.request(MODE_ACCOUNT, OP_UNBIND, tid=tid, ac_dir=int(outgoing), params=f"user={user}",
                     what=f"unbind account {user} from target {tid}")

    # ---------------------------------------------------------- logical units

    def create_lun(self, tid: int, lun: int, params: str, device_type: int = 0) -> None:
        self.request(MODE_DEVICE, OP_NEW, tid=tid, lun=lun, device_type=device_type,
                     params=params, what=f"create LUN {lun} of target {tid}")

    def update_lun(self, tid: int, lun: int, params: str) -> None:
        self.request(MODE_DEVICE, OP_UPDATE, tid=tid, lun=lun, params=params,
                     what=f"set {params} on LUN {lun} of target {tid}")

    def delete_lun(self, tid: int, lun: int, retry_interval: float = RETRY_INTERVAL_S) -> None:
        """Delete, retrying "still active" until the deadline; a missing LUN is fine."""
        self._retry_while_active(lambda: self.request(
            MODE_DEVICE, OP_DELETE, tid=tid, lun=lun, what=f"delete LUN {lun} of target {tid}"),
            ignore=(ERR_NO_LUN, ERR_NO_TARGET), interval=retry_interval)

    # ---------------------------------------------------------- helpers

    def _retry_while_active(self, call, ignore: tuple[int, ...], interval: float = RETRY_INTERVAL_S) -> None:
        while True:
            try:
                call()
                return
            except TgtdError as err:
                if err.code in ignore:
                    return
                if err.code not in (ERR_TARGET_ACTIVE, ERR_LUN_ACTIVE) or \
                        time.monotonic() + interval >= self.deadline:
                    raise
            time.sleep(interval)


def acl_param(initiator: str) -> str:
    """tgt keeps two ACLs: initiator names (IQN/EUI/NAA) and addresses (IP, CIDR, ALL)."""
    if initiator.lower().startswith(("iqn.", "eui.", "naa.")):
        return f"initiator-name={initiator}"
    return f"initiator-address={initiator}"
