"""An initiator allowed on one target writes its name into tgtd's "show" output:
nothing it writes may change what an agent believes about other targets, LUNs,
accounts or tids.

Real tgtd, real logins (libiscsi's iscsi-perf takes any initiator name on its
command line, newlines included), the agents run as pacemaker-execd runs them.
"""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from conftest import needs_root

pytestmark = [needs_root, pytest.mark.skipif(shutil.which("iscsi-perf") is None, reason="libiscsi-bin")]

PREFIX = "iqn.2026-11.test.tgtha:"
OPEN, VICTIM, BYSTANDER, ABSENT = (PREFIX + n for n in ("open", "victim", "bystander", "absent"))


def forged_block(tid: int, iqn: str, luns: tuple[int, ...] = (), state: str = "ready", sep: str = "\n") -> str:
    """Lines shaped exactly like tgt's own for one target."""
    lines = [f"Target {tid}: {iqn}", "    System information:", "        Driver: iscsi",
             f"        State: {state}", "    I_T nexus information:", "    LUN information:"]
    for lun in luns:
        lines += [f"        LUN: {lun}", "            Type: disk", "            SCSI ID: forged",
                  "            SCSI SN: forged", "            Backing store path: /forged"]
    lines += ["    Account information:", "    ACL information:", "        ALL"]
    return sep + sep.join(lines) + sep


def hostile_names(tids: dict[str, int]) -> dict[str, str | bytes]:
    return {
        # A tid no int() takes: every parse of the output used to raise (monitors and stops: rc 1).
        "unparsable tid": "iqn.2026-11.evil:a\nTarget 99999999999999999999999: x\nTarget -1: y",
        # A block for a target that does not exist: a probe for it used to say "running".
        "absent target": "iqn.2026-11.evil:b" + forged_block(tids["absent"], ABSENT),
        # The bystander's tid under another name: a never-started resource's stop used to delete it.
        "tid under another name": "iqn.2026-11.evil:c" + forged_block(tids["bystander"], ABSENT),
        # The victim without its LUN and offline: its monitors used to fail.
        "victim without its LUN": "iqn.2026-11.evil:d" + forged_block(tids["victim"], VICTIM, (), "offline"),
        # The same through separators Python's splitlines() also splits at.
        "record separator": "iqn.2026-11.evil:e" + forged_block(tids["victim"], VICTIM, (), "offline", "\x1e"),
        "line separator": "iqn.2026-11.evil:f" + forged_block(tids["absent"], ABSENT, (), "ready", "\u2028"),
        # A name so long that tgt cuts the session text before its connection lines.
        "very long": "iqn.2026-11.evil:g." + "x" * 1100,
        # Colons, and bytes that are no UTF-8.
        "colons and bytes": b"iqn.2026-11.evil:h:Target 3: x:\xff\xfe\nTarget 10:",
        # A copy of its own target's header, offline and without LUNs, after a LUN
        # section header: text alone cannot tell it from the real one, and it used
        # to cut the block of the target listed before it (the victim lost its LUN).
        "own header copy": "iqn.2026-11.evil:i\n    LUN information:" + forged_block(tids["open"], OPEN, (), "offline"),
    }


@pytest.fixture
def lab(iscsi_lab):
    return iscsi_lab


def test_hostile_initiator_names_change_nothing_an_agent_believes(lab, report):
    backing = lab.make_backing_file("lun.img")
    open_target = {"iqn": OPEN, "tid": "20"}
    victim = {"iqn": VICTIM, "tid": "10"}
    victim_lun = {"target_iqn": VICTIM, "lun": "1", "path": str(backing)}
    open_lun = {"target_iqn": OPEN, "lun": "1", "path": str(lab.make_backing_file("open.img"))}
    bystander_tid = 30
    lab.tgtd.tgtadm("--op", "new", "--mode", "target", "--tid", str(bystander_tid), "-T", BYSTANDER)
    for agent, params in (("iSCSITarget", open_target), ("iSCSILogicalUnit", open_lun),
                          ("iSCSITarget", victim), ("iSCSILogicalUnit", victim_lun)):
        assert lab.agent(agent, "start", params).rc == 0, (agent, params)
    absent_tid = 5                       # below, between and above the real tids: 5 < 10 < 20 < 30
    names = hostile_names({"absent": absent_tid, "bystander": bystander_tid, "victim": 10, "open": 20})
    wrong: list[str] = []
    attackers = []
    log = open(lab.tmp_path / "attackers.log", "w")
    try:
        for name in names.values():
            attackers.append(subprocess.Popen(lab.client.exec_argv(
                "iscsi-perf", "-i", name, "-m", "1", "-b", "8", "-x", "-1", lab.url(OPEN, 1)),
                stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 20
        while lab.show().count("I_T nexus: ") < len(names):
            assert time.monotonic() < deadline, "not every hostile initiator logged in"
            time.sleep(0.1)
        shown = lab.show()
        assert f"Target {absent_tid}: {ABSENT}" in shown, "the forgery is in tgtd's output"

        def expect(what: str, result, rc: int) -> None:
            if result.rc != rc:
                wrong.append(f"{what}: rc {result.rc}, expected {rc}: {result.exit_reason or result.stderr[-300:]}")

        for _ in range(3):
            expect("victim monitor", lab.agent("iSCSITarget", "monitor", victim, meta={"interval": "10000"}), 0)
            expect("victim LUN monitor", lab.agent("iSCSILogicalUnit", "monitor", victim_lun,
                                                   meta={"interval": "10000"}), 0)
            expect("open target monitor", lab.agent("iSCSITarget", "monitor", open_target,
                                                    meta={"interval": "10000"}), 0)
            expect("open LUN monitor", lab.agent("iSCSILogicalUnit", "monitor", open_lun,
                                                 meta={"interval": "10000"}), 0)
            expect("probe of an absent target", lab.agent("iSCSITarget", "monitor", {"iqn": ABSENT}), 7)
            expect("probe of an absent LUN", lab.agent(
                "iSCSILogicalUnit", "monitor", {**victim_lun, "target_iqn": ABSENT}), 7)
            expect("stop of a never-started target", lab.agent("iSCSITarget", "stop", {"iqn": ABSENT}), 0)
        assert f"Target {bystander_tid}: {BYSTANDER}" in lab.show(), "the bystander's tid was deleted"
        assert "tgtha-mark-" not in lab.show(), "a mark was left in an ACL"
        # The attackers' own target stops, their connections closed, in time.
        began = time.monotonic()
        expect("open LUN stop", lab.agent("iSCSILogicalUnit", "stop", open_lun), 0)
        expect("open target stop", lab.agent("iSCSITarget", "stop", open_target), 0)
        took = time.monotonic() - began
        assert f": {OPEN}\n" not in lab.show()
        expect("victim monitor after", lab.agent("iSCSITarget", "monitor", victim, meta={"interval": "10000"}), 0)
        expect("victim stop", lab.agent("iSCSITarget", "stop", victim), 0)
    finally:
        for attacker in attackers:
            attacker.kill()
            attacker.wait()
        log.close()
    report(f"hostile initiators ({len(names)} crafted names) during 25 monitors/stops of targets: "
           f"{len(wrong)} wrong return codes, bystander tid kept; their own target stopped in {took:.2f} s")
    assert wrong == []
    assert took < 5.0


# ---------------------------------------------------------------- the parser, fuzzed

def render(targets: list[dict]) -> str:
    """What tgt_target_show_all prints for ``targets`` (tgt 1.0.85's layout)."""
    out = []
    for t in sorted(targets, key=lambda t: t["tid"]):
        out += [f"Target {t['tid']}: {t['iqn']}", "    System information:", "        Driver: iscsi",
                f"        State: {t['state']}", "    I_T nexus information:"]
        for sid, info in t["nexuses"]:
            out.append(f"        I_T nexus: {sid}")
            out.append(info.rstrip("\n"))
        out.append("    LUN information:")
        for lun in t["luns"]:
            out += [f"        LUN: {lun}", "            Type: disk", f"            SCSI ID: id-{lun}",
                    f"            SCSI SN: sn-{lun}", f"            Backing store path: /srv/{t['tid']}-{lun}"]
        out.append("    Account information:")
        out += [f"        {a}" for a in t["accounts"]]
        out.append("    ACL information:")      # addresses (marks among them), then names
        out += [f"        {a}" for a in t["acls"] if not a.startswith(PREFIX)]
        out += [f"        {a}" for a in t["acls"] if a.startswith(PREFIX)]
    return "\n".join(out) + "\n"


def session_info(name: str, cid: int = 0, address: str = "10.0.0.9") -> str:
    """tgt's session.c: at most 1023 bytes, cut wherever that falls."""
    info = f"            Initiator: {name} alias: none\n            Connection: {cid}\n" \
           f"                IP Address: {address}\n"
    return info[:1023]


@pytest.mark.parametrize("seed", range(200))
def test_the_show_parser_believes_only_what_tgtd_wrote(seed):
    import random
    from tgtha.tgtshow import MARK_PREFIX, Show
    rng = random.Random(seed)
    tids = sorted(rng.sample(range(1, 60), rng.randint(1, 6)))
    real = [{"tid": tid, "iqn": f"{PREFIX}t{tid}", "state": rng.choice(["ready", "offline"]),
             "luns": sorted(rng.sample(range(1, 5), rng.randint(0, 3))),
             "accounts": rng.sample(["tgtha-guard", "cluster", "other"], rng.randint(0, 2)),
             "acls": rng.sample(["ALL", "10.0.0.0/24", PREFIX + "client"], rng.randint(0, 2)),
             "nexuses": []} for tid in tids]
    absent = [tid for tid in range(1, 60) if tid not in tids]
    for target in real:
        for sid in range(rng.randint(0, 3)):
            name = PREFIX + "honest"
            if rng.random() < 0.7:
                # Any tid, the attacker's own target's included.
                victim = rng.choice(real)
                forged_tid = rng.choice([victim["tid"], target["tid"], rng.choice(absent), victim["tid"] + 1])
                forged = rng.choice(["", "\n    LUN information:"]) + forged_block(
                    forged_tid, rng.choice([victim["iqn"], ABSENT, OPEN]), tuple(rng.sample(range(1, 9), 2)),
                    rng.choice(["ready", "offline"]), rng.choice(["\n", "\x1e", "\u2028", "\r\n"]))
                name = PREFIX + "evil" + forged * rng.randint(1, 3) + "x" * rng.choice([0, 0, 900])
            target["nexuses"].append((100 * target["tid"] + sid, session_info(name)))
    text = render(real)

    def reread_marked(marked: list[int]) -> tuple[str, dict[int, str]]:
        """What tgtd shows with a mark bound to each of ``marked`` (TgtdControl.show_marked)."""
        marks = {tid: f"{MARK_PREFIX}{rng.getrandbits(128):032x}" for tid in marked}
        return render([{**t, "acls": t["acls"] + [marks[t["tid"]]] if t["tid"] in marks else t["acls"]}
                       for t in real]), marks

    parsed = {t.tid: t for t in Show(text, lambda tid: tid in tids, reread_marked).targets()}
    assert sorted(parsed) == tids
    for target in real:
        got = parsed[target["tid"]]
        assert (got.iqn, got.state) == (target["iqn"], target["state"])
        assert sorted(got.luns) == target["luns"]
        assert got.luns == {} or all(u.path == f"/srv/{target['tid']}-{n}" for n, u in got.luns.items())
        assert got.incoming == target["accounts"] and sorted(got.acls) == sorted(target["acls"])
        # Sessions are read for closing them only: every real one is found (forged extras do no harm).
        assert {sid for sid, _ in target["nexuses"]} <= {n.sid for n in got.nexuses}
