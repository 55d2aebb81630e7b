"""The cluster side of a failover, read from the nodes' Pacemaker logs.

pacemaker-controld logs every executed operation's result ("Result of stop
operation for p_block_t1 on node1: ok"), and a lost node ("Node node1 state is
now lost"), with millisecond timestamps. From those, per failover: when the
cluster noticed (detection: the first failed monitor or reported failure, or
the node lost), the
first stop of an affected resource on the old node, and the last unblock on the
new one. ``cluster_s`` is first stop (or detection) to last unblock: the time
the agents and Pacemaker took, apart from what the initiators add.

pacemaker-execd logs when it runs each operation and how long it took
("executing - rsc:p_vip_t1 action:start call_id:325", then "p_vip_t1 start
(call 325, PID 2961) exited with status 0 (execution time 581ms after being
queued 3ms)"): those give every action's span, the gaps between the actions
of a group being Pacemaker's own time (result recorded, next action sent).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

_STAMP = re.compile(r"^(\w{3} \d{1,2} \d\d:\d\d:\d\d)(\.\d+)? ")
_RESULT = re.compile(r"Result of (\w+) operation for (\S+) on (\S+): (.+?)(?: \||$)")
_LOST = re.compile(r"Node (\S+) state is now lost")
# Milestones of a lost node: it was the DC (the survivor holds an election and a
# join first), its fencing asked for, and done.
_DC_LOST = re.compile(r"Our DC node \((\S+)\) left the cluster")
_FENCING = re.compile(r"Requesting fencing \(\w+\) of node (\S+)")
_FENCED = re.compile(r"Peer (\S+) was terminated \(\w+\) by \S+ on behalf of \S+: OK")
# A failed monitor, or a failure reported with crm_resource --fail (the tgtd agent's
# exit watcher): Pacemaker records that as an "asyncmon" operation.
DETECTING = ("monitor", "asyncmon")


@dataclass
class Event:
    at: float            # epoch seconds
    kind: str            # start, stop, monitor, ..., or "lost"
    resource: str
    node: str
    result: str

    @property
    def ok(self) -> bool:
        return self.result.startswith("ok")

    @property
    def failed(self) -> bool:
        """A recurring monitor cancelled before a stop is no failure."""
        return not self.ok and not self.result.startswith("Cancelled")


def _epoch(stamp: str, fraction: str | None) -> float:
    year = time.localtime().tm_year
    seconds = time.mktime(time.strptime(f"{year} {stamp}", "%Y %b %d %H:%M:%S"))
    return seconds + (float(fraction) if fraction else 0.0)


def _stamped(log: Path, daemon: str, since: float, until: float = float("inf")):
    """(epoch, line) of one daemon's lines in one log, within [since, until]."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return
    for line in lines:
        if daemon not in line:
            continue
        stamp = _STAMP.match(line)
        if not stamp:
            continue
        at = _epoch(stamp.group(1), stamp.group(2))
        if since - 0.001 <= at <= until:
            yield at, line


def read_events(logs: list[Path], since: float) -> list[Event]:
    """Operation results and node losses logged at or after ``since`` (epoch), in time order."""
    events = []
    for log in logs:
        for at, line in _stamped(log, "pacemaker-controld", since):
            if (result := _RESULT.search(line)):
                events.append(Event(at, *result.groups()))
            elif (lost := _LOST.search(line)):
                events.append(Event(at, "lost", "", lost.group(1), ""))
            else:
                for kind, pattern in (("dc-lost", _DC_LOST), ("fencing", _FENCING), ("fenced", _FENCED)):
                    if (match := pattern.search(line)):
                        events.append(Event(at, kind, "", match.group(1), "ok"))
    events.sort(key=lambda e: e.at)
    # Each node logs the results it learns of, so the same event can appear twice.
    unique, seen = [], set()
    for event in events:
        key = (round(event.at, 1), event.kind, event.resource, event.node, event.result)
        if key not in seen:
            seen.add(key)
            unique.append(event)
    return unique


def cluster_side(events: list[Event], started: float, members: set[str], unblocks: set[str],
                 victim: str | None) -> dict[str, float | None]:
    """Seconds from the failover's start (epoch ``started``) to each cluster milestone."""
    def offset(event: Event | None) -> float | None:
        return None if event is None else round(event.at - started, 3)

    detecting = [e for e in events if e.node == victim and (e.kind == "lost" or (e.kind in DETECTING and e.failed))]
    detection = detecting[0] if detecting else None
    first_stop = next((e for e in events if e.kind == "stop" and e.resource in members), None)
    unblocked = {e.resource: e for e in events if e.kind == "start" and e.resource in unblocks and e.ok}
    last_unblock = max(unblocked.values(), key=lambda e: e.at) if len(unblocked) == len(unblocks) else None
    begin = min((e for e in (first_stop, detection) if e is not None), key=lambda e: e.at, default=None)

    def first(kind: str) -> Event | None:
        return next((e for e in events if e.kind == kind and e.node == victim), None)
    return {
        "detection_s": offset(detection),
        # every way the failure was seen, first first: "asyncmon" is tgtd's exit watcher
        "detected_by": list(dict.fromkeys(e.kind for e in detecting)),
        "first_stop_s": offset(first_stop),
        # a lost node: was it the DC, when its fencing was asked for and done
        "dc_lost": first("dc-lost") is not None,
        "fencing_s": offset(first("fencing")),
        "fenced_s": offset(first("fenced")),
        "last_unblock_s": offset(last_unblock),
        "cluster_s": None if last_unblock is None or begin is None
        else round(last_unblock.at - begin.at, 3),
    }


_EXECUTING = re.compile(r"executing - rsc:(\S+) action:(\S+) call_id:(\d+)")
# Times as pcmk__readable_interval() writes them: "581ms", "1.082s", "2m30s".
_FINISHED = re.compile(r"\(log_finished\).*?: (\S+) (\S+) \(call (\d+)(?:, PID \d+)?\) (.*?)"
                       r"(?: \(execution time ([\d.dhms]+)(?: after being queued ([\d.dhms]+))?\))?$")
_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def interval_s(text: str | None) -> float:
    """Seconds of a Pacemaker interval ("581ms", "1.082s", "2m30s"); 0 for none."""
    return sum(float(value) * _UNITS_S[unit]
               for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text or ""))


@dataclass
class Span:
    node: str
    resource: str
    op: str
    began: float          # epoch seconds
    took_s: float
    queued_s: float
    outcome: str

    def relative_to(self, started: float) -> dict:
        return {"node": self.node, "resource": self.resource, "op": self.op,
                "at_s": round(self.began - started, 3), "took_s": round(self.took_s, 3),
                "queued_s": round(self.queued_s, 3), "outcome": self.outcome}


def read_spans(logs: list[Path], since: float, until: float) -> list[Span]:
    """Every operation the executors logged in [since, until] (epoch), by start time.

    pacemaker-execd logs starts, stops, reloads and the like at info level;
    monitors (probes and recurring ones) only at debug level, so they are not
    here although their first runs right after each start share the CPU."""
    spans = []
    for log in logs:
        running: dict[str, tuple[float, str, str, str]] = {}
        for at, line in _stamped(log, "pacemaker-execd", since, until + 30):
            node = line.split()[3]
            if (executing := _EXECUTING.search(line)):
                resource, op, call = executing.groups()
                running[call] = (at, node, resource, op)
            elif (finished := _FINISHED.search(line)):
                resource, op, call, outcome, took, queued = finished.groups()
                began = running.pop(call, None)
                start = began[0] if began else at - interval_s(took)
                if start > until:
                    continue
                spans.append(Span(node, resource, op, start, interval_s(took), interval_s(queued), outcome))
    spans.sort(key=lambda s: s.began)
    return spans
