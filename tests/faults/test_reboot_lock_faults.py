"""An agent killed (kill -9) while it holds its group's reboot lock (strategy etcd-lock, one
reboot at a time) in the middle of a rollout: the slot stays taken while the next host waits for
it, an admin frees it through the API, the killed agent comes back, and the rollout ends sound.
The semaphore's history in etcd never shows more holders than its max."""
from __future__ import annotations

import os
import signal

import pytest

from fleetweb.fleet.models import Event, Group, Host
from fleetweb.reboots import etcd
from fleetweb.reboots.models import GroupLock

from . import timeline
from .conftest import ROLLOUT_TIMEOUT, VERSION


@pytest.fixture
def locked_fault_stack(etcd_env, fault_stack):
    # A fresh key space: the org slug of bootstrap is fixed, the etcd may be shared by earlier runs.
    etcd.server_client().delete_prefix(f"fleet/{fault_stack.bootstrap['org']}/")
    return fault_stack


def test_an_agent_killed_holding_the_reboot_lock_is_unlocked_by_an_admin_and_never_more_hold_it_than_max(
        locked_fault_stack, payload, tmp_path):
    s = locked_fault_stack
    group = s.set_policy(reboot_strategy="etcd-lock", max_concurrent_reboots=1)
    lock_url = f"/api/v1/locks/{group['id']}/"
    # The lock is taken before the reboot and released once the new boot passes its health check.
    # Each agent's health check waits while its gate file exists: the first host to take the lock
    # keeps it, in its health check, until the test has killed it.
    gates = tmp_path / "gates"
    gates.mkdir()

    def health_check(i: int) -> tuple[str, str]:
        gate = gates / f"lk-{i}"
        gate.with_suffix(".hold").touch()
        return ("--health-cmd", f"if [ -e {gate}.hold ]; then touch {gate}.holding; "
                                f"while [ -e {gate}.hold ]; do sleep 0.1; done; fi")

    agents = s.spawn_fleet("lk", register_args=health_check, download_rate=None)
    machine = {a.name: Host.objects.get(pk=a.host_id).machine_id for a in agents}
    s.publish(payload)

    [first] = timeline.wait(lambda: list(gates.glob("*.holding")), "a host holding the lock in its health check",
                            VERSION)
    victim = next(a for a in agents if a.name == first.stem)
    holder = machine[victim.name]
    assert [h["id"] for h in s.api.get(lock_url).json()["holders"]] == [holder]

    def blocked() -> bool:
        return any(e.data.get("reason") == "no_slots" and e.data.get("holders") == [holder]
                   for e in Event.objects.filter(kind="lock_waiting"))
    timeline.wait(blocked, f"another host waiting for the slot {victim.name} holds", VERSION)

    os.killpg(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait(10)
    for gate in gates.glob("*.hold"):  # every other health check passes from now on
        if gate.stem != victim.name:
            gate.unlink()
    lock = s.api.get(lock_url).json()
    assert [h["id"] for h in lock["holders"]] == [holder] and lock["free"] == 0, lock  # the dead keep it

    r = s.api.post(f"{lock_url}unlock", json={"holder": holder})
    assert r.status_code == 200, r.text
    (gates / f"{victim.name}.hold").unlink()
    victim.start()
    timeline.wait_finished(VERSION, ROLLOUT_TIMEOUT)
    key = GroupLock(Group.objects.get(pk=group["id"])).key
    timeline.check(VERSION, agents, semaphore=timeline.Semaphore(etcd.server_client(), key, 1))
