"""End to end: a real agent takes its group's reboot lock with the etcd credentials its policy
gave it, dies holding it, shows as stuck, and an admin's unlock frees the slot."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from .conftest import BIN, wait_for


@pytest.fixture
def locked_stack(etcd_env, stack):
    # A fresh key space: the org slug of bootstrap is fixed, the etcd may be shared by earlier runs.
    from fleetweb.reboots import etcd

    etcd.server_client().delete_prefix(f"fleet/{stack.bootstrap['org']}/")
    return stack


def test_a_host_that_dies_holding_the_lock_is_stuck_until_an_admin_unlocks(locked_stack):
    stack = locked_stack
    group = next(g for g in stack.api.get("/api/v1/groups/").json()["results"] if g["slug"] == "web")
    r = stack.api.patch(f"/api/v1/groups/{group['id']}/", json={"reboot_strategy": "etcd-lock",
                                                                 "lock_stuck_after": 10})
    assert r.status_code == 200, r.text
    agent = stack.spawn_agent("web-1")
    wait_for(lambda: agent.host_id and stack.host(agent.host_id)["online"], timeout=120, what="web-1 online")

    def lock_status():
        res = subprocess.run([BIN / "agent", "lock", "status", "--state-dir", str(agent.state_dir)],
                             capture_output=True, text=True, env=agent.env, timeout=120)
        assert res.returncode == 0, res.stderr + res.stdout
        return res

    wait_for(lock_status, timeout=120, what="the agent's policy with etcd settings")

    # The agent takes the lock with its organization's credentials from the policy.
    res = subprocess.run([BIN / "agent", "lock", "lock", "--state-dir", str(agent.state_dir)],
                         capture_output=True, text=True, env=agent.env, timeout=120)
    assert res.returncode == 0, res.stderr + res.stdout
    lock = stack.api.get(f"/api/v1/locks/{group['id']}/").json()
    assert lock["free"] == 0 and lock["max"] == 1
    [holder] = lock["holders"]
    assert holder["host"] == "web-1" and holder["since"] and holder["stuck"] is False

    # It dies without a word (SIGKILL): offline, then stuck once lock_stuck_after has passed.
    os.killpg(agent.proc.pid, signal.SIGKILL)
    agent.proc.wait(60)
    wait_for(lambda: stack.api.get(f"/api/v1/locks/{group['id']}/").json()["holders"][0]["stuck"],
             timeout=180, interval=1, what="the holder flagged stuck")

    # The admin frees the slot; the activity log says who did it.
    r = stack.api.post(f"/api/v1/locks/{group['id']}/unlock", json={"holder": holder["id"]})
    assert r.status_code == 200, r.text
    assert r.json()["free"] == 1 and r.json()["holders"] == []
    kinds = [e["kind"] for e in stack.api.get("/api/v1/events/", params={"page_size": 100}).json()["results"]]
    assert "lock_unlocked" in kinds
