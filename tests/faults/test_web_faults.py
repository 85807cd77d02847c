"""Web processes during a rollout: one killed (kill -9) in the middle and started again on the same
port after an outage, and a fleet split over two web processes.  Agents reconnect, in-flight
downloads carry on, and the rollout ends sound: no host granted twice, the policy held, every host
on the new version, nothing failed by an outage shorter than the update timeout."""
from __future__ import annotations

import time

from . import timeline
from .conftest import OUTAGE, ROLLOUT_TIMEOUT, VERSION, wait_mid_rollout, wait_policy_applied


def test_a_web_process_killed_mid_rollout_and_restarted_leaves_a_sound_completed_rollout(fault_stack, payload):
    s = fault_stack
    agents = s.spawn_fleet("web")
    s.publish(payload)
    wait_mid_rollout(agents, payload)
    web = s.webs[0]
    web.kill()          # downloads in flight are cut, every agent loses its socket
    time.sleep(OUTAGE)  # the outage (see OUTAGE); what follows waits for outcomes
    web.start()         # same port: the agents' server URL
    timeline.wait_finished(VERSION, ROLLOUT_TIMEOUT)
    timeline.check(VERSION, agents)


def test_a_channel_switch_and_a_rollout_reach_agents_split_over_two_web_processes(fault_stack, payload):
    s = fault_stack
    s.add_web()
    agents = s.spawn_fleet("split", webs=s.webs)  # even agents on the first process, odd on the second
    assert {a.server for a in agents} == {w.url for w in s.webs}

    s.set_policy(channel="beta")                  # through the first process only
    wait_policy_applied(agents, "beta")
    s.publish(payload, channel="beta")
    timeline.wait_finished(VERSION, ROLLOUT_TIMEOUT)
    timeline.check(VERSION, agents)
