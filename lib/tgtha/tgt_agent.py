"""What every agent that talks to tgtd shares: which tgtd, and tgt's parameter rules."""
from __future__ import annotations

from . import ocf_runtime as ocf
from .iscsi_names import name_problem
from .ocf_runtime import ERR_CONFIGURED, ERR_INSTALLED, OCFError
from .tgtd import TgtdControl

TGTD_STARTUP_WAIT_S = 10.0
# A recurring monitor that finds no tgtd gives tgtd's own monitor this long to
# notice first. Otherwise Pacemaker restarts the monitored resource alone, on a
# dead tgtd: its start fails, which bans it from the node (seen in the lab with
# a 10 s account monitor beating a 2 s tgtd monitor). Recovering tgtd restarts
# everything above it anyway. Keep tgtd's monitor interval below this.
TGTD_RECOVERY_GRACE_S = 5.0


def require_tgtd() -> None:
    from .proc import find_binary
    if find_binary("tgtd") is None:
        raise OCFError(ERR_INSTALLED, "tgtd is not installed on this node (Debian package: tgt)")


class TgtAgent(ocf.Agent):
    """Base of tgtuser, iSCSITarget and iSCSILogicalUnit (each declares ``control_port``)."""

    @property
    def control_port(self) -> int:
        value = self.param("control_port")
        if not value.isdigit() or int(value) > 65535:
            raise OCFError(ERR_CONFIGURED, f"control_port={value!r} must be a number 0-65535")
        return int(value)

    @property
    def tgtd(self) -> TgtdControl:
        return TgtdControl(self.control_port, self.deadline)

    def tgtd_for_start(self) -> TgtdControl:
        """tgtd, given a few seconds to finish starting (a start is ordered right after tgtd's)."""
        return TgtdControl(self.control_port, self.deadline, patience=TGTD_STARTUP_WAIT_S)

    def tgtd_for_monitor(self) -> TgtdControl:
        """tgtd; in a recurring monitor, waited for a little if it is not there (see above)."""
        return TgtdControl(self.control_port, self.deadline,
                           patience=0.0 if self.is_probe else TGTD_RECOVERY_GRACE_S)

    def require_tgt_implementation(self) -> None:
        implementation = self.param("implementation")
        if implementation != "tgt":
            raise OCFError(ERR_CONFIGURED, f"implementation={implementation!r} is not supported: "
                           f"ocf:tgtha:{self.NAME} manages tgt only (use ocf:heartbeat:{self.NAME} "
                           "for iet, lio, lio-t or scst)")

    def iscsi_name(self, parameter: str) -> str:
        value = self.param(parameter)
        problem = name_problem(value)
        if problem:
            raise OCFError(ERR_CONFIGURED, f"{parameter}={value!r} is not a valid iSCSI name: {problem}")
        return value

    def name_value_pairs(self, parameter: str) -> list[tuple[str, str]]:
        """A space-separated list of name=value items, as tgt takes them (no commas)."""
        pairs = []
        for item in self.param(parameter).split():
            name, equals, value = item.partition("=")
            if not name or not equals or not value or "," in item:
                raise OCFError(ERR_CONFIGURED, f"{parameter}: {item!r} is not name=value")
            pairs.append((name, value))
        return pairs
