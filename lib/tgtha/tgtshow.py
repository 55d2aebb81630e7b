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
  text). A header whose tid does not exist is forged. A real tid whose header
  shows once is unambiguous: its real header is always printed, so a forged
  one of a real tid makes a second.
- A real tid shown twice or more is resolved by marks: a fresh random entry
  (``MARK_PREFIX`` + 128 random bits, an "address" tgt can never match, so it
  lets nobody in) is appended to the ACL of the target and of the real target
  before it, and the show read again. The ACL is the last thing tgt prints of
  a target, after every session, and no initiator can know the mark: a
  target's real header is the first of its tid after the mark of the target
  before it (or the first line of the text, for the lowest tid), and its
  block ends at the first header after its own mark. The marks are removed
  at once; one left by an agent killed in between lets nobody in either and
  is never read as an ACL entry.
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
    # tgt's tids are ints: up to 2**31 - 1, ten digits.
    if not colon or not number.isascii() or not number.isdigit() or len(number) > 10 or int(number) >= 2**31:
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


MARK_PREFIX = "tgtha-mark-"


class Show:
    """One ``show`` answer, with the per-tid existence check it may need and,
    for a text with forged copies of real headers, a marked re-read
    (``reread_marked(tids)`` -> (text, {tid: mark}), see the module docstring)."""

    def __init__(self, text: str, tid_exists: Callable[[int], bool],
                 reread_marked: Callable[[list[int]], tuple[str, dict[int, str]]] | None = None) -> None:
        self.text = text
        self.headers = headers(text)
        self._exists = tid_exists
        self._known: dict[int, bool] = {}
        self._reread_marked = reread_marked
        self._spans: dict[int, tuple[int, int] | None] | None = None   # after a marked re-read

    def exists(self, tid: int) -> bool:
        if tid not in self._known:
            self._known[tid] = self._exists(tid)
        return self._known[tid]

    def tids_named(self, name: str) -> list[int]:
        return sorted({tid for _, tid, header_name in self.headers if header_name == name})

    def target(self, tid: int) -> Target | None:
        if tid not in {t for _, t, _ in self.headers} or not self.exists(tid):
            return None
        span = self._marked_spans([tid])[tid] if self._forged_copies() else self._plain_span(tid)
        return None if span is None else _parse_span(self.text, span)

    def targets(self) -> list[Target]:
        """Every real target (one existence request per tid shown)."""
        real = [tid for tid in sorted({t for _, t, _ in self.headers}) if self.exists(tid)]
        if self._forged_copies():
            spans = self._marked_spans(real)
            return [_parse_span(self.text, spans[tid]) for tid in real if spans[tid] is not None]
        return [_parse_span(self.text, self._plain_span(tid)) for tid in real]

    # ------------------------------------------------------------ where a block is

    def _forged_copies(self) -> bool:
        """Does a real tid show more than one header (a forged copy)?"""
        seen, repeated = set(), set()
        for _, tid, _ in self.headers:
            (repeated if tid in seen else seen).add(tid)
        return any(self.exists(tid) for tid in sorted(repeated))

    def _plain_span(self, tid: int) -> tuple[int, int]:
        """No forged copy of a real header: tid's only header starts its block,
        the header of the next real tid (tgt's order) ends it."""
        start = next(offset for offset, t, _ in self.headers if t == tid)
        later = sorted({t for _, t, _ in self.headers if t > tid})
        following = next((t for t in later if self.exists(t)), None)
        end = len(self.text) if following is None else \
            next(offset for offset, t, _ in self.headers if t == following)
        return start, end

    def _marked_spans(self, wanted: list[int]) -> dict[int, tuple[int, int] | None]:
        """Blocks of ``wanted`` (real tids) from a marked re-read; None for one gone meanwhile."""
        if self._reread_marked is None:
            raise ValueError("forged copies of target headers: a marked re-read is needed")
        if self._spans is not None and all(tid in self._spans for tid in wanted):
            return self._spans
        real = [tid for tid in sorted({t for _, t, _ in self.headers}) if self.exists(tid)]
        before = {tid: (real[real.index(tid) - 1] if real.index(tid) > 0 else None) for tid in wanted}
        text, marks = self._reread_marked(sorted({*wanted, *(t for t in before.values() if t is not None)}))
        self.text, self.headers = text, headers(text)
        spans: dict[int, tuple[int, int] | None] = {}
        for tid in wanted:
            own = _mark_line(text, marks.get(tid))
            floor = 0 if before[tid] is None else _mark_line(text, marks.get(before[tid]))
            if own is None or floor is None:
                spans[tid] = None          # deleted between the two reads
                continue
            start = next((offset for offset, t, _ in self.headers if t == tid and offset >= floor), None)
            end = next((offset for offset, _, _ in self.headers if offset > own), len(text))
            spans[tid] = None if start is None or start > own else (start, end)
        self._spans = spans
        return spans


def _mark_line(text: str, mark: str | None) -> int | None:
    """Offset of the ACL line holding ``mark`` (unique: nobody else knows it)."""
    if mark is None:
        return None
    found = text.find("\n" + _TAB2 + mark + "\n")
    return None if found == -1 else found + 1


def _parse_span(text: str, span: tuple[int, int]) -> Target:
    block = text[span[0]:span[1]]
    return parse_block(block[:-1].split("\n") if block.endswith("\n") else block.split("\n"))


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
            elif not entry.startswith(MARK_PREFIX):
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
