"""Celery workers during a rollout: one killed (kill -9) in the middle and replaced by another, and
two workers taking wave tasks side by side from the start.  Either way no host is granted twice,
the policy holds and every host ends on the new version."""
from __future__ import annotations

import os
import signal

from . import timeline
from .conftest import ROLLOUT_TIMEOUT, VERSION, wait_mid_rollout


def test_a_worker_killed_mid_rollout_and_replaced_leaves_a_sound_completed_rollout(fault_stack, payload):
    s = fault_stack
    [_beat, first] = s.workers
    agents = s.spawn_fleet("wk")
    s.publish(payload)
    wait_mid_rollout(agents, payload)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    s.start_worker("second")
    timeline.wait_finished(VERSION, ROLLOUT_TIMEOUT)
    timeline.check(VERSION, agents)


def test_two_workers_throughout_never_grant_a_host_twice_or_exceed_the_policy(fault_stack, payload):
    s = fault_stack
    s.start_worker("second")
    agents = s.spawn_fleet("two")
    s.publish(payload)
    timeline.wait_finished(VERSION, ROLLOUT_TIMEOUT)
    timeline.check(VERSION, agents)
