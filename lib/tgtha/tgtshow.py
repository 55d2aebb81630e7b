"""Reading ``tgtadm --mode target --op show`` when initiators write part of it.

tgtd prints each session's initiator name and alias verbatim inside the
target's "I_T nexus information" section (tgt's session.c; up to 1023 bytes a
session). An initiator may put newlines in them and so print lines that look
like tgt's own: a fake target, LUN, account or ACL. Text alone cannot tell a
forged line from a real one, so what this module believes rests on facts the
initiator cannot write:

- tgt lists targets sorted by tid (tgt_target_create), and every real target
  prints its header ``Target N: NAME`` at column 0; whether tid N exists is
  asked of tgtd separately (a per-tid request whose answer holds no session
  text). A header whose tid does not exist is forged; of several headers with
  one tid, the real one is the last whose preceding real header has a smaller
  tid (a forged copy sits inside some target's session text: before the real
  one if that target's tid is smaller, after it otherwise, where the order
  gives it away).
- Within a real target's text, session text comes after the first
  "I_T nexus information:" line and before the real "LUN information:" line,
  which is therefore the last one before the next real header; the state
  precedes all session text, and LUNs, accounts and ACLs follow it.
- Lines are split on "\\n" only: str.splitlines() also breaks at \\x1c-\\x1e,
  \\x85, U+2028 and friends, which tgt does not write but an initiator may.

What lies between the two nexus lines (sessions and their connections) is
read for information only (which sessions to close); a stop closes them by
the tid it resolved, not by names found there.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable     # (typing costs ~16 ms to import: never at run time)

    from .tgtd import Target

_TAB1, _TAB2, _TAB3, _TAB4 = " " * 4, " " * 8, " " * 12, " " * 16


def header_of(line: str) -> tuple[int, str] | None:
    """(tid, name) of a ``Target N: NAME`` line, or None."""
    if not line.startswith("Target "):
        return None
    number, colon, name = line[len("Target "):].partition(": ")
    if not colon or not number.isascii() or not number.isdigit() or len(number) > 9:
        return None
    return int(number), name


def headers(text: str) -> list[tuple[int, int, str]]:
    """(character offset, tid, name) of every line shaped like a target header.

    Found with str.find (C speed) rather than by walking the lines: a monitor
    reads one target out of a show that grows with every target and session
    on the node (300 KB at 200 targets)."""
    found = []
    offset = 0 if text.startswith("Target ") else text.find("\nTarget ")
    while offset != -1:
        start = offset if offset == 0 and text.startswith("Target ") else offset + 1
        end = text.find("\n", start)
        parsed = header_of(text[start:end if end != -1 else len(text)])
        if parsed is not None:
            found.append((start, *parsed))
        offset = text.find("\nTarget ", start)
    return found


class Show:
    """One ``show`` answer, with the per-tid existence check it may need."""

    def __init__(self, text: str, tid_exists: Callable[[int], bool]) -> None:
        self.text = text
        self.headers = headers(text)
        self._exists = tid_exists
        self._known: dict[int, bool] = {}

    def exists(self, tid: int) -> bool:
        if tid not in self._known:
            self._known[tid] = self._exists(tid)
        return self._known[tid]

    def real_header(self, tid: int) -> int | None:
        """Position (in self.headers) of tid's real header, or None if tid is not a target.

        Real headers come in increasing tid order, one per real tid. Of several
        headers with one tid, the real one is taken as the last that still
        comes before the real header of the next real tid (a forged copy in a
        lower target's session text comes earlier). A copy forged in the
        target's own session text stays ambiguous: README says what it can do."""
        candidates = [i for i, (_, t, _) in enumerate(self.headers) if t == tid]
        if not candidates or not self.exists(tid):
            return None
        if len(candidates) == 1:
            return candidates[0]
        limit = self._next_real_position(tid)
        before = [i for i in candidates if limit is None or i < limit]
        return before[-1] if before else candidates[0]

    def _next_real_position(self, tid: int) -> int | None:
        # tgt lists targets by tid: the next real block is the smallest real
        # tid above this one (a forged copy of a later target may come first).
        for later_tid in sorted({t for _, t, _ in self.headers if t > tid}):
            if self.exists(later_tid):
                return self.real_header(later_tid)
        return None

    def block_end(self, position: int) -> int:
        """Character offset where the block of the real header at ``position``
        ends: the real header of the next real tid, or the end of the text."""
        following = self._next_real_position(self.headers[position][1])
        return self.headers[following][0] if following is not None else len(self.text)

    def target(self, tid: int) -> Target | None:
        position = self.real_header(tid)
        if position is None:
            return None
        start = self.headers[position][0]
        block = self.text[start:self.block_end(position)]
        return parse_block(block[:-1].split("\n") if block.endswith("\n") else block.split("\n"))

    def tids_named(self, name: str) -> list[int]:
        return sorted({tid for _, tid, header_name in self.headers if header_name == name})

    def targets(self) -> list[Target]:
        """Every real target (one existence request per tid shown)."""
        found = []
        for tid in sorted({tid for _, tid, _ in self.headers}):
            target = self.target(tid)
            if target is not None:
                found.append(target)
        return found


def parse_block(lines: list[str]) -> Target:
    """One real target's lines, its header first (see the module docstring)."""
    from .tgtd import Connection, LogicalUnit, Nexus, Target
    tid, name = header_of(lines[0])
    target = Target(tid, name)
    nexus_start = _first(lines, _TAB1 + "I_T nexus information:")
    tail_start = _last(lines, _TAB1 + "LUN information:")
    if nexus_start is None or tail_start is None or tail_start < nexus_start:
        nexus_start = tail_start = len(lines)      # not tgt's shape: believe nothing past the state
    for line in lines[1:nexus_start]:
        if line.startswith(_TAB2 + "State: "):
            target.state = line[len(_TAB2 + "State: "):]
            break
    # Sessions: opaque text; only their numbers and addresses are looked at.
    nexus = None
    for line in lines[nexus_start + 1:tail_start]:
        value = _field(line, _TAB2 + "I_T nexus: ")
        if value is not None and value.isascii() and value.isdigit():
            nexus = Nexus(int(value))
            target.nexuses.append(nexus)
            continue
        if nexus is None:
            continue
        value = _field(line, _TAB3 + "Initiator: ")
        if value is not None and not nexus.initiator:
            nexus.initiator = value.split(" alias: ")[0]
            continue
        value = _field(line, _TAB3 + "Connection: ")
        if value is not None and value.isascii() and value.isdigit():
            nexus.connections.append(Connection(int(value), ""))
            continue
        value = _field(line, _TAB4 + "IP Address: ")
        if value is not None and nexus.connections:
            nexus.connections[-1].address = value
    section, lun = "LUN", None
    for line in lines[tail_start + 1:]:
        if line == _TAB1 + "Account information:":
            section = "Account"
        elif line == _TAB1 + "ACL information:":
            section = "ACL"
        elif section == "LUN":
            value = _field(line, _TAB2 + "LUN: ")
            if value is not None and value.isascii() and value.isdigit():
                lun = LogicalUnit(int(value))
                target.luns[lun.lun] = lun
            elif lun is not None and line.startswith(_TAB3) and not line.startswith(_TAB3 + " "):
                key, _, value = line[len(_TAB3):].partition(": ")
                lun.fields.setdefault(key, value)
        elif line.startswith(_TAB2) and not line.startswith(_TAB2 + " "):
            entry = line[len(_TAB2):]
            if section == "Account":
                if entry.endswith(" (outgoing)"):
                    target.outgoing = entry[:-len(" (outgoing)")]
                else:
                    target.incoming.append(entry)
            else:
                target.acls.append(entry)
    return target


def _field(line: str, prefix: str) -> str | None:
    return line[len(prefix):] if line.startswith(prefix) else None


def _first(lines: list[str], wanted: str) -> int | None:
    for index, line in enumerate(lines):
        if line == wanted:
            return index
    return None


def _last(lines: list[str], wanted: str) -> int | None:
    for index in range(len(lines) - 1, -1, -1):
        if lines[index] == wanted:
            return index
    return None
