"""The lab's reading of Pacemaker's logs (lab/timeline.py): every action's span.

pacemaker-execd writes an action's execution and queue time as
pcmk__readable_interval() does: "581ms" below a second, "1.082s" and "2m30s"
above. A parser that knew only "ms" read every action of a second or more as
0 s, which hid exactly the slow ones (found in a 24-target run).
"""
from __future__ import annotations

import sys
import time

from conftest import REPO

sys.path.insert(0, str(REPO / "lab"))
import timeline  # noqa: E402

LINES = """\
{d} 13:36:23.000 node1 pacemaker-execd     [62] (execute_resource_action) info: executing - rsc:p_target_t13 action:start call_id:826
{d} 13:36:24.082 node1 pacemaker-execd     [62] (log_finished) 	info: p_target_t13 start (call 826, PID 434) exited with status 0 (execution time 1.082s)
{d} 13:36:24.100 node1 pacemaker-execd     [62] (execute_resource_action) info: executing - rsc:p_block_t1 action:start call_id:27
{d} 13:36:24.686 node1 pacemaker-execd     [62] (log_finished) 	info: p_block_t1 start (call 27, PID 151) exited with status 0 (execution time 581ms after being queued 5ms)
{d} 13:39:00.000 node1 pacemaker-execd     [62] (log_finished) 	info: p_lun_t1_1 stop (call 30, PID 152) exited with status 0 (execution time 2m30s after being queued 1.5s)
"""


def spans(tmp_path):
    day = time.strftime("%b %d")
    log = tmp_path / "pacemaker.log"
    log.write_text(LINES.format(d=day))
    since = time.mktime(time.strptime(f"{time.localtime().tm_year} {day} 13:30:00", "%Y %b %d %H:%M:%S"))
    return {s.resource: s for s in timeline.read_spans([log], since, since + 3600)}


def test_an_action_of_more_than_a_second_keeps_its_time(tmp_path):
    assert spans(tmp_path)["p_target_t13"].took_s == 1.082


def test_milliseconds_and_the_queue_time_are_read(tmp_path):
    block = spans(tmp_path)["p_block_t1"]
    assert (block.took_s, block.queued_s) == (0.581, 0.005)


def test_minutes_are_read_and_an_unseen_start_is_derived_from_the_time(tmp_path):
    lun = spans(tmp_path)["p_lun_t1_1"]
    assert (lun.took_s, lun.queued_s) == (150.0, 1.5)
    assert lun.began == spans(tmp_path)["p_target_t13"].began + 7    # 13:39:00 less 2m30s


DETECTION = """\
{d} 13:36:22.100 node1 pacemaker-controld  [72] (log_executor_event) 	notice: Result of monitor operation for p_tgtd on node1: Cancelled | call=98 key=p_tgtd_monitor_1000
{d} 13:36:22.916 node1 pacemaker-controld  [72] (log_executor_event) 	notice: Result of asyncmon operation for p_tgtd on node1: error (Simulated failure) | CIB update 95, graph action unconfirmed; call=99 key=p_tgtd_asyncmon_0 rc=1
{d} 13:36:23.100 node1 pacemaker-controld  [72] (log_executor_event) 	notice: Result of stop operation for p_unblock_t1 on node1: ok | CIB update 96, graph action confirmed; call=111 key=p_unblock_t1_stop_0 rc=0
{d} 13:36:24.500 node1 pacemaker-controld  [72] (log_executor_event) 	notice: Result of start operation for p_unblock_t1 on node1: ok | CIB update 99, graph action confirmed; call=120 key=p_unblock_t1_start_0 rc=0
"""


def test_a_failure_reported_by_crm_resource_fail_is_the_detection(tmp_path):
    """tgtd's exit watcher reports with crm_resource --fail, which Pacemaker 2.1.5 logs as an
    asyncmon result (line as logged in the lab); a cancelled monitor is no detection."""
    day = time.strftime("%b %d")
    log = tmp_path / "pacemaker.log"
    log.write_text(DETECTION.format(d=day))
    started = time.mktime(time.strptime(f"{time.localtime().tm_year} {day} 13:36:22", "%Y %b %d %H:%M:%S"))
    events = timeline.read_events([log], started)
    side = timeline.cluster_side(events, started, {"p_unblock_t1"}, {"p_unblock_t1"}, "node1")
    assert side == {"detection_s": 0.916, "detected_by": ["asyncmon"], "first_stop_s": 1.1,
                    "dc_lost": False, "fencing_s": None, "fenced_s": None,
                    "last_unblock_s": 2.5, "cluster_s": 1.584}


# A powered-off DC, as the survivor logged it (Pacemaker 2.1.5, the lab): its controller
# held the scheduler 1 s (controld_schedulerd.c sleeps while its own CIB updates are pending).
DC_POWERED_OFF = """\
{d} 02:43:31.807 node1 pacemaker-controld  [64] (update_peer_state_iter) 	notice: Node node2 state is now lost | nodeid=2 previous=member source=pcmk__reap_unseen_nodes
{d} 02:43:31.807 node1 pacemaker-controld  [64] (reap_dead_nodes) 	warning: Our DC node (node2) left the cluster
{d} 02:43:32.963 node1 pacemaker-controld  [64] (controld_execute_fence_action) 	notice: Requesting fencing (reboot) of node node2 | action=1 timeout=60000
{d} 02:43:33.187 node1 pacemaker-controld  [64] (handle_fence_notification) 	notice: Peer node2 was terminated (reboot) by node1 on behalf of pacemaker-controld.64@node1: OK | event=30aea6a5
{d} 02:43:34.500 node1 pacemaker-controld  [64] (log_executor_event) 	notice: Result of start operation for p_unblock_t1 on node1: ok | CIB update 99, graph action confirmed; call=120 key=p_unblock_t1_start_0 rc=0
"""


def test_a_lost_dc_and_its_fencing_are_milestones_of_the_failover(tmp_path):
    day = time.strftime("%b %d")
    log = tmp_path / "pacemaker.log"
    log.write_text(DC_POWERED_OFF.format(d=day))
    started = time.mktime(time.strptime(f"{time.localtime().tm_year} {day} 02:43:29", "%Y %b %d %H:%M:%S"))
    side = timeline.cluster_side(timeline.read_events([log], started), started, {"p_unblock_t1"},
                                 {"p_unblock_t1"}, "node2")
    assert (side["detection_s"], side["dc_lost"], side["fencing_s"], side["fenced_s"]) == (2.807, True, 3.963, 4.187)
    assert side["cluster_s"] == 2.693
