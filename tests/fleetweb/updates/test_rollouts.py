"""Channels and rollouts: promotion rules and the wave policy."""
from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from fleetweb.fleet.models import Event
from fleetweb.updates.choices import HostUpdateState, RolloutStatus
from fleetweb.updates.models import Rollout, RolloutHost, UpdateError


def stable(acme):
    return acme.channels.get(name="stable")


def configure(group, **fields):
    for k, v in fields.items():
        setattr(group, k, v)
    group.save()


def granted(rollout):
    return set(rollout.hosts.filter(state__in=HostUpdateState.in_flight()).values_list("host__hostname", flat=True))


def test_it_starts_a_rollout_for_every_group_on_the_channel_and_grants_the_first_wave(
        acme, web_group, online_hosts, make_release):
    configure(web_group, max_in_flight=2)
    online_hosts(5)
    [rollout] = stable(acme).publish(make_release("101.0.0"), "alice")
    assert rollout.counts()["total"] == 5
    assert granted(rollout) == {"web-00", "web-01"}  # eager Celery ran the first wave
    assert rollout.advance() == []  # M=2 already in flight


def test_it_refuses_to_publish_an_older_release_without_an_explicit_rollback(acme, web_group, make_release):
    ch = stable(acme)
    old, new = make_release("101.0.0"), make_release("102.0.0")
    ch.publish(new, "alice")
    with pytest.raises(UpdateError, match="explicit rollback"):
        ch.publish(old, "alice")
    with pytest.raises(UpdateError, match="never on stable"):
        ch.rollback(old, "alice")
    beta = acme.channels.get(name="beta")
    beta.publish(old, "alice")
    beta.publish(new, "alice")
    beta.rollback(old, "alice")
    beta.refresh_from_db()
    assert beta.current_release == old
    assert beta.history.first().action == "rollback"


def test_it_never_downgrades_a_host_unless_told(acme, web_group, online_hosts, make_release):
    online_hosts(2, version="105.0.0")
    [rollout] = stable(acme).publish(make_release("101.0.0"), "alice")
    assert rollout.counts()["total"] == 0
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.COMPLETED


def test_it_halts_at_the_failure_threshold_and_blocks_promotion_until_an_admin_overrides(
        acme, web_group, online_hosts, make_release):
    beta = acme.channels.get(name="beta")
    configure(web_group, channel=beta, max_in_flight=3, failure_threshold=2)
    online_hosts(4)
    [rollout] = beta.publish(make_release("101.0.0"), "alice")
    first, second, third = RolloutHost.objects.filter(rollout=rollout, state="granted")[:3]
    RolloutHost.objects.report_event(first.host_id, "update_error", {"rollout": rollout.pk, "code": "hash_mismatch"})
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.RUNNING
    RolloutHost.objects.report_event(second.host_id, "rollback", {"rollout": rollout.pk, "reason": "boot failed"})
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.HALTED and "2 of 4 hosts failed" in rollout.halted_reason
    assert RolloutHost.objects.get(pk=second.pk).error == "boot failed"
    with pytest.raises(UpdateError, match="override"):
        stable(acme).promote("alice")
    stable(acme).promote("alice", override=True)
    assert Event.objects.filter(kind="release_promote", data__override=True).exists()


def test_safe_mode_updates_the_first_host_alone_and_halts_if_it_fails(acme, web_group, online_hosts, make_release):
    configure(web_group, max_in_flight=5, safe_mode=True)
    online_hosts(4)
    [rollout] = stable(acme).publish(make_release("101.0.0"), "alice")
    assert granted(rollout) == {"web-00"}
    only = rollout.hosts.get(state="granted")
    RolloutHost.objects.report_event(only.host_id, "booted_new_version", {"rollout": rollout.pk})
    assert len(granted(rollout)) == 3  # after one success the rest go M at a time

    [second] = stable(acme).publish(make_release("102.0.0"), "alice")
    first = second.hosts.get(state="granted")
    RolloutHost.objects.report_event(first.host_id, "update_error", {"rollout": second.pk, "code": "x"})
    second.refresh_from_db()
    assert second.status == RolloutStatus.HALTED
    assert granted(second) == set()


def test_it_limits_updates_per_period(acme, web_group, online_hosts, make_release):
    configure(web_group, max_in_flight=10, max_updates_per_period=2, update_period=3600)
    online_hosts(5)
    [rollout] = stable(acme).publish(make_release("101.0.0"), "alice")
    assert len(granted(rollout)) == 2
    for rh in rollout.hosts.filter(state="granted"):
        RolloutHost.objects.report_event(rh.host_id, "booted_new_version", {"rollout": rollout.pk})
    assert rollout.advance() == []  # K=2 per hour already used
    later = timezone.now() + timedelta(hours=1, seconds=1)
    assert len(rollout.advance(now=later)) == 2


def test_it_times_out_a_stuck_host_as_a_failure(acme, web_group, online_hosts, make_release):
    configure(web_group, update_timeout=60, failure_threshold=5)
    online_hosts(2)
    [rollout] = stable(acme).publish(make_release("101.0.0"), "alice")
    rollout.advance(now=timezone.now() + timedelta(seconds=61))
    rh = rollout.hosts.get(host__hostname="web-00")
    assert rh.state == "failed" and "timeout" in rh.error
    assert granted(rollout) == {"web-01"}


def wait_for_lock(rollout, host, holder):
    """The agent's report: installed, and the lock is held by HOLDER (locksmith's no_slots)."""
    RolloutHost.objects.report_event(host.pk, "update_installed", {"rollout": rollout.pk})
    RolloutHost.objects.report_event(host.pk, "lock_waiting", {"reason": "no_slots", "rollout": rollout.pk,
                                                               "holders": [holder.machine_id]})
    return rollout.hosts.get(host=host)


def test_a_host_waiting_for_a_lock_another_host_holds_is_not_failed_by_the_update_timeout(
        acme, web_group, make_host, online_hosts, make_release):
    """Issue 10's drill: the lock holder was killed; the host that installed behind it waits for the lock
    past the update timeout.  It is not the one taking too long: not failed, the rollout not halted."""
    from fleetweb.fleet.models import Host

    configure(web_group, update_timeout=60, failure_threshold=1)
    holder = make_host(web_group, hostname="web-holder", version="101.0.0")   # not in the rollout: current
    [waiter] = online_hosts(1)
    [rollout] = stable(acme).publish(make_release("101.0.0"), "alice")
    entry = wait_for_lock(rollout, waiter, holder)
    assert entry.state == "need_reboot" and entry.lock_wait_since is not None
    later = entry.granted_at + timedelta(seconds=600)
    Host.objects.filter(pk=waiter.pk).update(last_seen=later - timedelta(seconds=20))   # it heartbeats
    rollout.advance(now=later)
    rollout.refresh_from_db()
    assert rollout.hosts.get(host=waiter).state == "need_reboot"
    assert rollout.status == RolloutStatus.RUNNING and rollout.counts()["failed_total"] == 0
    # A wait for another reason (window, etcd) starts no pause: the clock of a fresh entry runs.
    RolloutHost.objects.filter(pk=entry.pk).update(lock_wait_since=None)
    RolloutHost.objects.report_event(waiter.pk, "lock_waiting", {"reason": "outside_window", "rollout": rollout.pk})
    rollout.advance(now=later)
    failed = rollout.hosts.get(host=waiter)
    assert failed.state == "failed" and "no result within the update timeout (60 s)" in failed.error


def test_the_update_clock_runs_again_once_the_waiting_host_has_the_lock(
        acme, web_group, make_host, online_hosts, make_release):
    configure(web_group, update_timeout=60, failure_threshold=5)
    holder = make_host(web_group, hostname="web-holder", version="101.0.0")
    [waiter] = online_hosts(1)
    [rollout] = stable(acme).publish(make_release("101.0.0"), "alice")
    entry = wait_for_lock(rollout, waiter, holder)
    # Granted 10 minutes ago, installed and waiting for the lock since 10 s after the grant.
    now = timezone.now()
    RolloutHost.objects.filter(pk=entry.pk).update(granted_at=now - timedelta(seconds=600),
                                                   lock_wait_since=now - timedelta(seconds=590))
    RolloutHost.objects.report_event(waiter.pk, "lock_acquired", {"rollout": rollout.pk,
                                                                  "holder": waiter.machine_id})
    entry.refresh_from_db()
    assert entry.lock_wait_since is None and entry.lock_waited >= timedelta(seconds=590)
    assert entry.time_left(60, now) == 50        # 10 s used before the wait; the wait does not count
    rollout.advance(now=now + timedelta(seconds=45))
    assert rollout.hosts.get(host=waiter).state == "need_reboot"
    rollout.advance(now=now + timedelta(seconds=60))
    assert rollout.hosts.get(host=waiter).state == "failed"


def test_a_waiting_host_that_is_itself_silent_for_the_update_timeout_fails(
        acme, web_group, make_host, online_hosts, make_release):
    from fleetweb.fleet.models import Host

    configure(web_group, update_timeout=60, failure_threshold=5)
    holder = make_host(web_group, hostname="web-holder", version="101.0.0")
    [waiter] = online_hosts(1)
    [rollout] = stable(acme).publish(make_release("101.0.0"), "alice")
    entry = wait_for_lock(rollout, waiter, holder)
    later = entry.granted_at + timedelta(seconds=600)
    Host.objects.filter(pk=waiter.pk).update(last_seen=later - timedelta(seconds=61))
    rollout.advance(now=later)
    failed = rollout.hosts.get(host=waiter)
    assert failed.state == "failed" and "offline for longer than the update timeout" in failed.error


def test_the_update_frame_carries_what_is_left_of_the_update_timeout(acme, web_group, online_hosts, make_release):
    from agent import protocol

    configure(web_group, update_timeout=7200)
    online_hosts(1)
    [rollout] = stable(acme).publish(make_release("101.0.0"), "alice")
    entry = rollout.hosts.get()
    frame = entry.update_frame(now=entry.granted_at + timedelta(seconds=200))
    assert frame["timeout"] == 7000 and frame["rollout"] == rollout.pk
    protocol.validate(frame, "server")
    expires = int(frame["url"].rsplit("/", 2)[-2])
    assert expires >= time.time() + 7000 - 5       # the URL outlives the retries it allows


def test_pause_resume_abort_are_named_transitions_that_refuse_to_run_twice(
        acme, web_group, online_hosts, make_release):
    online_hosts(2)
    [rollout] = stable(acme).publish(make_release("101.0.0"), "alice")
    assert rollout.pause("alice") and not rollout.pause("alice")
    assert rollout.advance() == []
    assert rollout.resume("alice") and not rollout.resume("alice")
    assert rollout.abort("alice") and not rollout.abort("alice")
    kinds = list(Event.objects.filter(kind__startswith="rollout_").values_list("kind", flat=True))
    assert {"rollout_paused", "rollout_running", "rollout_aborted"} <= set(kinds)


@pytest.mark.django_db(transaction=True)
def test_two_workers_advancing_at_once_never_exceed_the_policy_or_grant_twice(
        acme, web_group, online_hosts, make_release):
    configure(web_group, max_in_flight=3)
    online_hosts(12)
    rollout = Rollout.objects.start(web_group, make_release("101.0.0"), actor="alice")
    Rollout.objects.filter(pk=rollout.pk).update(status=RolloutStatus.RUNNING)
    RolloutHost.objects.filter(rollout=rollout).update(state="pending", granted_at=None, attempts=0)
    results, barrier = [], threading.Barrier(4)

    def worker():
        barrier.wait()
        try:
            results.extend(rh.pk for rh in Rollout.objects.get(pk=rollout.pk).advance())
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == len(set(results)) == 3
    assert RolloutHost.objects.filter(rollout=rollout, state="granted").count() == 3
    assert all(a <= 1 for a in RolloutHost.objects.values_list("attempts", flat=True))
