"""Channels and rollouts: promotion rules and the wave policy."""
from __future__ import annotations

import threading
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
