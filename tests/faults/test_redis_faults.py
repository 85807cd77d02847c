"""Redis killed (kill -9) in the middle of a rollout and started again, empty, on the same port.

While it is down an operator switches the group's channel through the API: the answer is 2xx, and
once Redis is back every connected agent has the new policy within a heartbeat (its
``policy_applied`` on record), counted in the host's own heartbeats rather than in seconds.  The
rollout ends sound: no host granted twice, the policy held, every host on the new version, nothing
failed by an outage shorter than the update timeout."""
from __future__ import annotations

import time

from . import timeline
from .conftest import OUTAGE, ROLLOUT_TIMEOUT, VERSION, heartbeats, wait_mid_rollout, wait_policy_applied

# "Within one heartbeat" in recorded heartbeats: the next heartbeat after Redis is back carries the
# resend, plus one for each side's write batching (the heartbeat count and the acknowledgement are
# stored by different writers, a tick apart).
HEARTBEATS = 3


def test_redis_killed_mid_rollout_loses_no_push_and_a_channel_switch_made_meanwhile_reaches_every_agent(
        fault_stack, payload):
    s = fault_stack
    agents = s.spawn_fleet("rd")
    s.publish(payload)
    group = s.group()
    wait_mid_rollout(agents, payload)

    s.kill_redis()
    r = s.api.patch(f"/api/v1/groups/{group['id']}/", json={"channel": "beta"})
    assert 200 <= r.status_code < 300, f"channel switch while Redis is down: {r.status_code} {r.text[:500]}"
    time.sleep(OUTAGE)  # the rest of the outage (see OUTAGE); what follows waits for outcomes
    s.restart_redis()
    back = heartbeats(agents)

    acked = wait_policy_applied(agents, "beta")
    late = {name: acked[name] - back[name] for name in acked if acked[name] - back[name] > HEARTBEATS}
    assert not late, f"the channel switch reached these agents only after that many heartbeats: {late}"
    timeline.wait_finished(VERSION, ROLLOUT_TIMEOUT)
    timeline.check(VERSION, agents)
