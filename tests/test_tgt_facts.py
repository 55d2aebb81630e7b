"""What tgt itself does (1.0.85, Debian 12), shown with the real tgtd and tgtadm.

These are the facts the CHAP design in lib/tgtha/accounts.py rests on; if a
tgt upgrade changes one, this file says which assumption moved.
"""
from __future__ import annotations

import time
from pathlib import Path

from conftest import needs_root
from iscsi_login import AUTH_REFUSED, GOT_IN
from tgtd_spin import connect_and_close, errno_eagain_in_tgtd, tgtd_cpu_share, tgtd_sockets

pytestmark = needs_root

IQN = "iqn.2026-11.test.tgtha:facts"


def make_target(lab, tid: int, iqn: str) -> None:
    lab.tgtd.tgtadm("--op", "new", "--mode", "target", "--tid", str(tid), "-T", iqn)
    lab.tgtd.tgtadm("--op", "bind", "--mode", "target", "--tid", str(tid), "-I", "ALL")


def run_probe(lab, iqn: str) -> str:
    """One unauthenticated login attempt from the initiator namespace."""
    here = str(Path(__file__).parent)
    out = lab.client.run("/usr/bin/python3", "-c",
                         f"import sys; sys.path.insert(0, {here!r}); from iscsi_login import try_login;"
                         f"print(try_login({lab.TARGET_IP!r}, {iqn!r}))")
    return out.stdout.strip()


def test_a_target_without_an_account_lets_anyone_in(iscsi_lab):
    make_target(iscsi_lab, 1, IQN)
    assert run_probe(iscsi_lab, IQN) == GOT_IN
    iscsi_lab.tgtd.tgtadm("--mode", "account", "--op", "new", "--user", "u", "--password", "secret-one")
    iscsi_lab.tgtd.tgtadm("--mode", "account", "--op", "bind", "--tid", "1", "--user", "u")
    assert run_probe(iscsi_lab, IQN) == AUTH_REFUSED


def test_deleting_an_account_unbinds_it_from_every_target_and_opens_them(iscsi_lab):
    for tid in (1, 2):
        make_target(iscsi_lab, tid, f"{IQN}{tid}")
    iscsi_lab.tgtd.tgtadm("--mode", "account", "--op", "new", "--user", "u", "--password", "secret-one")
    for tid in (1, 2):
        iscsi_lab.tgtd.tgtadm("--mode", "account", "--op", "bind", "--tid", str(tid), "--user", "u")
    iscsi_lab.tgtd.tgtadm("--mode", "account", "--op", "delete", "--user", "u")
    assert "        u\n" not in iscsi_lab.show()
    assert [run_probe(iscsi_lab, f"{IQN}{tid}") for tid in (1, 2)] == [GOT_IN, GOT_IN]


def test_unbinding_the_first_of_two_accounts_makes_target_show_kill_tgtd(iscsi_lab):
    """The hole left in the account array is dereferenced by 'show': tgtd dies.
    Hence tgtha binds its guard account first and never unbinds it."""
    make_target(iscsi_lab, 1, IQN)
    for user in ("first", "second"):
        iscsi_lab.tgtd.tgtadm("--mode", "account", "--op", "new", "--user", user, "--password", "secret-one")
        iscsi_lab.tgtd.tgtadm("--mode", "account", "--op", "bind", "--tid", "1", "--user", user)
    iscsi_lab.tgtd.tgtadm("--mode", "account", "--op", "unbind", "--tid", "1", "--user", "first")
    iscsi_lab.tgtd.tgtadm("--mode", "target", "--op", "show", check=False)
    iscsi_lab.tgtd.proc.wait(timeout=5)
    assert iscsi_lab.tgtd.proc.returncode != 0


def test_unbinding_the_last_account_leaves_no_hole(iscsi_lab):
    make_target(iscsi_lab, 1, IQN)
    for user in ("first", "second"):
        iscsi_lab.tgtd.tgtadm("--mode", "account", "--op", "new", "--user", user, "--password", "secret-one")
        iscsi_lab.tgtd.tgtadm("--mode", "account", "--op", "bind", "--tid", "1", "--user", user)
    iscsi_lab.tgtd.tgtadm("--mode", "account", "--op", "delete", "--user", "second")
    assert "first" in iscsi_lab.show()
    assert iscsi_lab.tgtd.proc.poll() is None
    assert run_probe(iscsi_lab, IQN) == AUTH_REFUSED


# ------------------------------------------------ management connections (usr/mgmt.c)

def test_a_management_connection_closed_before_its_request_spins_tgtd_forever(iscsi_lab):
    """tgtd 1.0.85 takes read() == 0 for "nothing yet" when errno is EAGAIN, which it
    is in any tgtd serving initiators: each such connection stays in its event loop,
    readable, read again and again (seen in the lab: a tgtd at 100 % of a core). Hence
    tgtha never opens tgtd's socket without sending a whole request."""
    make_target(iscsi_lab, 1, IQN)
    baseline = tgtd_sockets(iscsi_lab)
    with errno_eagain_in_tgtd(iscsi_lab):
        connect_and_close(iscsi_lab, 5)
    time.sleep(0.3)
    assert tgtd_sockets(iscsi_lab) == baseline + 5
    assert tgtd_cpu_share(iscsi_lab) > 0.5
