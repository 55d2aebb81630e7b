"""ocf:tgtha:iSCSILogicalUnit - one LUN of a tgt target, with a stable SCSI identity.

Start: parameters are checked (ERR_CONFIGURED; a missing backing store is
ERR_INSTALLED on this node) -> the target must exist here -> the LUN is
created, given its identity (scsi_id, scsi_sn, vendor, product), write-cache
mode page and extra parameters -> read back and compared; any failure
deletes it again.

Stop: delete, retrying tgt's "still active" briefly; if commands keep
coming, the target goes offline for a moment (commands get BUSY, which
initiators retry), its sessions are closed, the LUN is deleted, and the
target is set ready again. Bounded by the op's deadline.
"""
from __future__ import annotations

import os
import time

from . import ocf_runtime as ocf
from .iscsi_names import sha256_hex
from .ocf_runtime import ERR_CONFIGURED, ERR_GENERIC, ERR_INSTALLED, OCFError
from .tgtd import TgtdControl, TgtdError, TgtdNotRunning, TgtdUnreachable
from .tgt_agent import TgtAgent, require_tgtd

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .tgtd import LogicalUnit, Target

MAX_LUN = 16383
# tgt's device types (tgtadm's str_to_device_type); tape uses the ssc store.
DEVICE_TYPES = {"disk": 0x00, "tape": 0x01, "ssc": 0x01, "cd": 0x05, "changer": 0x08,
                "osd": 0x11, "pt": 0xFF}
# The caching mode page (0x08) tgt starts every disk with, and the same with
# WCE (byte 2, bit 2) cleared: tgt then fdatasyncs each write (bs_rdwr.c).
CACHING_PAGE_WCE_ON = "8:0:18:0x14:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0"
CACHING_PAGE_WCE_OFF = "8:0:18:0x10:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0"
POLITE_DELETE_S = 0.5
FORBIDDEN_IN_VALUES = ", \t\n\0"


HEX_DIGITS = "0123456789abcdefABCDEF"
NAA6_BITS = 124


def naa6_value(scsi_id: str) -> int:
    """The value tgt puts in a LUN's NAA-6 designator (VPD page 0x83, the WWID
    udev and multipath use), as spc.c's update_vpd_83 computes it: each
    character read as one hex digit (any other character counts as 0), shifted
    into 128 bits, and the top 4 bits replaced by the NAA type: only the last
    31 digits survive."""
    value = 0
    for char in scsi_id:
        value = (value << 4 | (int(char, 16) if char in HEX_DIGITS else 0)) & ((1 << NAA6_BITS) - 1)
    return value


def same_wwid_in_hex(scsi_id: str) -> str:
    """The hex-digit scsi_id whose NAA-6 designator (WWID) is ``scsi_id``'s:
    every other character written as the 0 tgt reads it as."""
    digits = "".join(c if c in HEX_DIGITS else "0" for c in scsi_id)
    return digits if len(digits) <= 32 else digits[-31:]


def stock_identity(resource: str) -> tuple[str, str]:
    """(scsi_id, scsi_sn) the stock agent gives a LUN it is not told them for:
    the resource's name cut to 16 characters, the first 8 hex digits of its MD5."""
    import hashlib
    return resource[:16], hashlib.md5(resource.encode()).hexdigest()[:8]


def derived_identity(target_iqn: str, lun: int) -> tuple[str, str]:
    """(scsi_id, scsi_sn) defaults: the same on every node, whatever the resource is called."""
    digest = sha256_hex(f"{target_iqn}:{lun}".encode())
    return digest[:32], digest[32:48]


def _plain(name: str, value: str, max_len: int) -> str:
    bad = sorted({c for c in value if c in FORBIDDEN_IN_VALUES})
    if bad:
        raise OCFError(ERR_CONFIGURED, f"{name}={value!r} contains {''.join(bad)!r} "
                                       "(tgt's parameters cannot hold commas or whitespace)")
    if len(value.encode()) > max_len:
        raise OCFError(ERR_CONFIGURED, f"{name}={value!r} is longer than {max_len} bytes")
    return value


class ISCSILogicalUnit(TgtAgent):
    NAME = "iSCSILogicalUnit"
    PARAMETERS = {
        "implementation": "tgt",
        "target_iqn": "",
        "lun": "",
        "path": "",
        "scsi_id": "",
        "scsi_sn": "",
        "vendor_id": "",
        "product_id": "",
        "emulate_tpu": "",
        "emulate_3pc": "",
        "emulate_caw": "",
        "write_cache": "0",
        "tgt_bstype": "",
        "tgt_bsoflags": "",
        "tgt_bsopts": "",
        "tgt_device_type": "",
        "block_size": "",
        "additional_parameters": "",
        "allowed_initiators": "",
        "lio_iblock": "0",
        "liot_bstype": "block",
        "control_port": "0",
    }
    # The stock agent's LIO-only parameters: declared so that a stock
    # configuration moves over as it is (pcs refuses undeclared ones without
    # --force), and ignored with a warning, since tgt has no such thing.
    LIO_ONLY = ("allowed_initiators", "lio_iblock", "liot_bstype")

    # ------------------------------------------------------------ parameters

    @property
    def target_iqn(self) -> str:
        return self.iscsi_name("target_iqn")

    @property
    def lun(self) -> int:
        value = self.param("lun").strip()
        if not value.isdigit():
            raise OCFError(ERR_CONFIGURED, f"lun={value!r} must be a number from 1 to {MAX_LUN}")
        if int(value) == 0:
            raise OCFError(ERR_CONFIGURED, "lun=0 is tgt's controller LUN; use 1 or higher")
        if int(value) > MAX_LUN:
            raise OCFError(ERR_CONFIGURED, f"lun={value} is above {MAX_LUN}")
        return int(value)

    @property
    def path(self) -> str:
        value = self.param("path")
        if not value or not os.path.isabs(value):
            raise OCFError(ERR_CONFIGURED, f"path={value!r} must be an absolute path")
        return _plain("path", value, 4095)

    @property
    def identity(self) -> tuple[str, str]:
        derived_id, derived_sn = derived_identity(self.target_iqn, self.lun)
        scsi_id = self.param("scsi_id")
        if scsi_id and not (len(scsi_id) <= 32 and all(c in HEX_DIGITS for c in scsi_id)):
            # Two such ids could give two LUNs one WWID: multipath would merge them.
            raise OCFError(ERR_CONFIGURED, f"scsi_id={scsi_id!r}: must be at most 32 hex digits (tgt builds the"
                                           " WWID from its hex digits, the last 31: other characters count as 0"
                                           " and a longer id loses its front)")
        scsi_id = scsi_id or derived_id
        scsi_sn = _plain("scsi_sn", self.param("scsi_sn"), 36) or derived_sn
        return scsi_id, scsi_sn

    @property
    def device_type(self) -> int:
        value = self.param("tgt_device_type") or "disk"
        if value not in DEVICE_TYPES:
            raise OCFError(ERR_CONFIGURED, f"tgt_device_type={value!r}: one of {', '.join(DEVICE_TYPES)}")
        return DEVICE_TYPES[value]

    def _flag(self, name: str) -> bool | None:
        value = self.param(name).strip()
        if value == "":
            return None
        if value not in ("0", "1"):
            raise OCFError(ERR_CONFIGURED, f"{name}={value!r} must be 0 or 1")
        return value == "1"

    @property
    def create_params(self) -> str:
        """Backing store settings, which tgt takes only when the LUN is created."""
        parts = [f"path={self.path}"]
        bstype = _plain("tgt_bstype", self.param("tgt_bstype"), 64)
        bsoflags = _plain("tgt_bsoflags", self.param("tgt_bsoflags"), 64)
        if bstype == "aio":
            # tgt's aio store (bs_aio.c) never calls fdatasync and answers
            # SYNCHRONIZE CACHE without doing anything: what it acknowledged may
            # still be in the disk's cache (measured: tests/test_iscsilogicalunit.py).
            if not self._flag("write_cache"):
                raise OCFError(ERR_CONFIGURED, "tgt_bstype=aio cannot keep write_cache=0's promise: tgt's aio "
                                               "store never flushes (not even on SYNCHRONIZE CACHE); use rdwr "
                                               "(the default), or write_cache=1 on storage without a volatile "
                                               "cache")
            if bsoflags == "direct":
                bsoflags = ""  # aio always opens O_DIRECT; tgt refuses it spelled out
        if bsoflags and not set(bsoflags.split(":")) <= {"direct", "sync"}:
            raise OCFError(ERR_CONFIGURED, f"tgt_bsoflags={bsoflags!r}: direct, sync or direct:sync")
        if self.param("tgt_device_type") in ("tape", "ssc"):
            bstype = "ssc"
        for key, value in (("bstype", bstype), ("bsopts", _plain("tgt_bsopts", self.param("tgt_bsopts"), 1024)),
                           ("bsoflags", bsoflags)):
            if value:
                parts.append(f"{key}={value}")
        block_size = self.param("block_size").strip()
        if block_size:
            if block_size not in ("512", "1024", "2048", "4096"):
                raise OCFError(ERR_CONFIGURED, f"block_size={block_size!r}: 512, 1024, 2048 or 4096")
            parts.append(f"blocksize={block_size}")
        return ",".join(parts)

    @property
    def update_params(self) -> list[str]:
        """Identity and behaviour, set right after creation (one request each)."""
        scsi_id, scsi_sn = self.identity
        params = [f"scsi_id={scsi_id}", f"scsi_sn={scsi_sn}"]
        vendor, product = (_plain("vendor_id", self.param("vendor_id"), 8),
                           _plain("product_id", self.param("product_id"), 16))
        if vendor:
            params.append(f"vendor_id={vendor}")
        if product:
            params.append(f"product_id={product}")
        if self._flag("emulate_3pc"):
            raise OCFError(ERR_CONFIGURED, "emulate_3pc=1: tgt does not implement EXTENDED COPY")
        if self._flag("emulate_caw") is False:
            raise OCFError(ERR_CONFIGURED, "emulate_caw=0: tgt always implements COMPARE AND WRITE")
        thin = self._flag("emulate_tpu")
        if thin is not None:
            params.append(f"thin_provisioning={int(thin)}")
        write_cache = self._flag("write_cache")
        if self.device_type == DEVICE_TYPES["disk"]:
            params.append("mode_page=" + (CACHING_PAGE_WCE_ON if write_cache else CACHING_PAGE_WCE_OFF))
        params += [f"{name}={value}" for name, value in self.name_value_pairs("additional_parameters")]
        return params

    # ---------------------------------------------------------------- actions

    def validate_all(self) -> int:
        self._validate()
        self._require_backing_store()
        return ocf.SUCCESS

    def _validate(self) -> None:
        self.require_tgt_implementation()
        self.create_params, self.update_params, self.device_type, self.control_port
        require_tgtd()

    def _require_backing_store(self) -> None:
        path = self.path
        if not os.path.exists(path):
            raise OCFError(ERR_INSTALLED, f"backing store {path} does not exist on this node")
        if os.path.isdir(path):
            raise OCFError(ERR_INSTALLED, f"backing store {path} is a directory on this node")

    def monitor(self) -> int:
        target_iqn, lun = self.target_iqn, self.lun
        try:
            target = self.tgtd_for_monitor().target_by_iqn(target_iqn)
        except TgtdUnreachable:
            return ocf.NOT_RUNNING
        if target is None or lun not in target.luns:
            return ocf.NOT_RUNNING
        problem = self._mismatch(target.luns[lun])
        if problem:
            raise OCFError(ERR_GENERIC, f"LUN {lun} of {target_iqn}: {problem}")
        return ocf.SUCCESS

    def start(self) -> int:
        self._validate()
        self._require_backing_store()
        ignored = [name for name in self.LIO_ONLY if self.env.get("OCF_RESKEY_" + name) is not None]
        if ignored:
            ocf.log_warning(f"{', '.join(ignored)}: only used by LIO, ignored with tgt")
        if self.param("tgt_bstype").strip() == "aio":
            ocf.log_warning(f"{self.path}: tgt's aio store ignores SYNCHRONIZE CACHE: initiators' flushes "
                            "reach no disk cache; durability rests on the backing device alone")
        target_iqn, lun = self.target_iqn, self.lun
        ctl = self.tgtd_for_start()
        try:
            target = ctl.target_by_iqn(target_iqn)
            if target is None:
                raise OCFError(ERR_GENERIC, f"target {target_iqn} does not exist on this node "
                                            "(order the LUN after its iSCSITarget)")
            existing = target.luns.get(lun)
            if existing is not None:
                problem = self._mismatch(existing)
                if problem is None:
                    return ocf.SUCCESS
                ocf.log_warning(f"LUN {lun} of {target_iqn} exists but {problem}; recreating it")
                self._delete(ctl, target)
            self._refuse_a_shared_wwid(ctl)
            self._create(ctl, target)
        except TgtdUnreachable as err:
            raise OCFError(ERR_GENERIC, f"cannot start LUN {lun} of {target_iqn}: {err}") from None
        return ocf.SUCCESS

    def stop(self) -> int:
        target_iqn, lun = self.target_iqn, self.lun
        ctl = self.tgtd
        try:
            target = ctl.target_by_iqn(target_iqn)
            if target is not None and lun in target.luns:
                self._delete(ctl, target)
        except TgtdNotRunning:
            return ocf.SUCCESS
        except TgtdUnreachable as err:
            raise OCFError(ERR_GENERIC, f"cannot stop LUN {lun} of {target_iqn}: {err}") from None
        except TgtdError as err:
            raise OCFError(ERR_GENERIC, f"cannot stop LUN {lun} of {target_iqn}: {err}") from None
        return ocf.SUCCESS

    # ---------------------------------------------------------------- steps

    def _refuse_a_shared_wwid(self, ctl: TgtdControl) -> None:
        """No LUN on this tgtd may already present our WWID (NAA-6 designator):
        initiators' multipath would take the two for paths to one disk. Both are
        configured that way, so it is wrong wherever they meet: 6, not 1 (which
        would start this LUN on another node, where the merge happens anyway)."""
        scsi_id = self.identity[0]
        ours = naa6_value(scsi_id)
        for target in ctl.targets():
            for number, unit in target.luns.items():
                if (target.iqn, number) == (self.target_iqn, self.lun) or not unit.scsi_id:
                    continue
                if naa6_value(unit.scsi_id) == ours:
                    raise OCFError(ERR_CONFIGURED, f"scsi_id {scsi_id} gives the WWID of LUN {number} of"
                                                   f" {target.iqn} (scsi_id {unit.scsi_id}): multipath would"
                                                   " merge the two disks; give one of them another scsi_id")

    def _create(self, ctl: TgtdControl, target: Target) -> None:
        lun = self.lun
        created = False
        try:
            ctl.create_lun(target.tid, lun, self.create_params, self.device_type)
            created = True
            for param in self.update_params:
                ctl.update_lun(target.tid, lun, param)
            after = ctl.target_by_iqn(target.iqn)
            unit = after.luns.get(lun) if after is not None else None
            problem = "it vanished right after creation" if unit is None else self._mismatch(unit)
            if problem:
                raise OCFError(ERR_GENERIC, f"LUN {lun} of {target.iqn} was created but {problem}")
        except BaseException as err:  # noqa: BLE001 - roll back on anything
            if created:
                try:
                    ctl.delete_lun(target.tid, lun)
                except Exception as cleanup:  # noqa: BLE001 - report the first failure
                    ocf.log_error(f"rollback of LUN {lun} of {target.iqn} failed: {cleanup}")
            if isinstance(err, TgtdError):
                raise OCFError(ERR_GENERIC, f"cannot start LUN {lun} of {target.iqn}: {err}") from None
            raise

    def _delete(self, ctl: TgtdControl, target: Target) -> None:
        lun = self.lun
        polite = TgtdControl(ctl.control_port, min(time.monotonic() + POLITE_DELETE_S, self.deadline))
        polite_interval = 0.01
        try:
            polite.delete_lun(target.tid, lun, retry_interval=polite_interval)
            return
        except TgtdUnreachable:
            pass        # tgtd busy past the polite moment: not a failure, go on as for "still active"
        except TgtdError as err:
            if "still active" not in str(err):
                raise
        # Commands keep arriving: stop new ones (BUSY), close the sessions,
        # delete, and give the target back to its other LUNs.
        from . import transitions
        from .sessions import close_sessions
        was_ready = target.state == "ready"
        # If this process dies before the target is ready again, the mark lets the
        # target's next monitor set it ready (and monitors meanwhile know why it is offline).
        mark = transitions.mark_offline(self.control_port, target.tid)
        try:
            ctl.set_target_state(target.tid, "offline")
            close_sessions(ctl, ctl.target_by_iqn(target.iqn) or target, [], self.deadline)
            ctl.delete_lun(target.tid, lun)
        finally:
            if was_ready:
                ctl.set_target_state(target.tid, "ready")
            transitions.clear(mark)

    def _mismatch(self, unit: LogicalUnit) -> str | None:
        scsi_id, scsi_sn = self.identity
        if unit.path != self.path:
            return f"its backing store is {unit.path}, configured {self.path}"
        # The WWID (NAA-6) is the identity initiators and multipath use: a LUN the stock
        # agent made with a non-hex id has the WWID of that id's hex form (same_wwid_in_hex).
        if unit.scsi_id != scsi_id and naa6_value(unit.scsi_id) != naa6_value(scsi_id):
            return f"its scsi_id is {unit.scsi_id!r}, configured {scsi_id!r}" + self._stock_hint(unit)
        if unit.scsi_sn != scsi_sn:
            return f"its scsi_sn is {unit.scsi_sn!r}, configured {scsi_sn!r}" + self._stock_hint(unit)
        return None

    def _stock_hint(self, unit: LogicalUnit) -> str:
        """Made by the stock agent with its defaults? Then say what keeps its WWID."""
        if (unit.scsi_id, unit.scsi_sn) != stock_identity(self.resource_name):
            return ""
        return (f" (the stock agent's defaults for {self.resource_name}: set scsi_id="
                f"{same_wwid_in_hex(unit.scsi_id)} scsi_sn={unit.scsi_sn} to keep its WWID; tgtha-from-stock does)")


def main() -> None:
    ocf.main(ISCSILogicalUnit)
