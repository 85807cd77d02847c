"""locks/ API: {group, max, free, holders: [{id, host, since, stuck}]}, admin-only unlock and
set-max with locksmith's semantics, scoping (outsider 404, viewer 403), 503 without etcd."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from .conftest import semaphore, smith

pytestmark = pytest.mark.django_db


@pytest.fixture
def held(acme, web_group, make_host, etcd_endpoints):
    """web (max 2) with one host of the group holding the lock."""
    web_group.max_concurrent_reboots = 2
    web_group.save()
    host = make_host(web_group, "web-1")
    smith(acme, "web", 2).lock(host.machine_id)
    return host


def test_it_lists_every_group_with_holders_and_hostnames(alice, held, web_group):
    r = alice.get("/api/v1/locks/")
    assert r.status_code == 200
    item = r.json()["results"][0]
    assert item["group"] == web_group.pk and item["max"] == 2 and item["free"] == 1 and item["error"] is None
    [holder] = item["holders"]
    assert holder["id"] == held.machine_id and holder["host"] == "web-1" and holder["host_id"] == str(held.pk)
    assert holder["since"] is not None and holder["stuck"] is False


def test_since_is_when_the_server_first_saw_the_holder(alice, held, web_group):
    first = alice.get(f"/api/v1/locks/{web_group.pk}/").json()["holders"][0]["since"]
    again = alice.get(f"/api/v1/locks/{web_group.pk}/").json()["holders"][0]["since"]
    assert first == again


def test_the_outsider_gets_404(charlie, held, web_group):
    assert charlie.get(f"/api/v1/locks/{web_group.pk}/").status_code == 404
    assert charlie.post(f"/api/v1/locks/{web_group.pk}/unlock", {"holder": held.machine_id},
                        format="json").status_code == 404
    assert charlie.get("/api/v1/locks/").json()["results"] == []


def test_viewer_and_operator_may_read_but_not_unlock_or_set_max(bob, operator, held, acme, web_group):
    assert bob.get(f"/api/v1/locks/{web_group.pk}/").status_code == 200
    for client in (bob, operator):
        assert client.post(f"/api/v1/locks/{web_group.pk}/unlock", {"holder": held.machine_id},
                           format="json").status_code == 403
        assert client.post(f"/api/v1/locks/{web_group.pk}/set-max", {"max": 5}, format="json").status_code == 403
    assert semaphore(acme, "web") == {"semaphore": 1, "max": 2, "holders": [held.machine_id]}


def test_admin_unlock_frees_the_slot_and_is_logged(alice, held, acme, web_group):
    from fleetweb.fleet.models import Event

    r = alice.post(f"/api/v1/locks/{web_group.pk}/unlock", {"holder": held.machine_id}, format="json")
    assert r.status_code == 200
    assert r.json()["free"] == 2 and r.json()["holders"] == []
    assert semaphore(acme, "web") == {"semaphore": 2, "max": 2, "holders": []}
    event = Event.objects.filter(organization=acme, kind="lock_unlocked").get()
    assert "alice" in event.actor and event.host_id == held.pk


def test_unlocking_a_non_holder_succeeds_and_changes_nothing(alice, held, acme, web_group):
    r = alice.post(f"/api/v1/locks/{web_group.pk}/unlock", {"holder": "nobody"}, format="json")
    assert r.status_code == 200
    assert semaphore(acme, "web") == {"semaphore": 1, "max": 2, "holders": [held.machine_id]}


def test_set_max_adds_new_minus_old_and_becomes_the_groups_max(alice, held, acme, web_group):
    from fleetweb.fleet.models import Event

    r = alice.post(f"/api/v1/locks/{web_group.pk}/set-max", {"max": 5}, format="json")
    assert r.status_code == 200, r.json()
    assert r.json()["max"] == 5 and r.json()["free"] == 4
    assert semaphore(acme, "web") == {"semaphore": 4, "max": 5, "holders": [held.machine_id]}
    web_group.refresh_from_db()
    assert web_group.max_concurrent_reboots == 5
    assert Event.objects.filter(organization=acme, kind="lock_set_max").count() == 1
    # Below the number of holders: the semaphore goes negative, as locksmith's does.
    alice.post(f"/api/v1/locks/{web_group.pk}/set-max", {"max": 0}, format="json")
    assert semaphore(acme, "web") == {"semaphore": -1, "max": 0, "holders": [held.machine_id]}


def test_set_max_rejects_bad_input(alice, held, web_group):
    r = alice.post(f"/api/v1/locks/{web_group.pk}/set-max", {"max": -1}, format="json")
    assert r.status_code == 400 and "max" in r.json()["errors"]
    r = alice.post(f"/api/v1/locks/{web_group.pk}/unlock", {}, format="json")
    assert r.status_code == 400 and "holder" in r.json()["errors"]


def test_changing_the_groups_max_concurrent_reboots_sets_max(alice, held, acme, web_group,
                                                            django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        r = alice.patch(f"/api/v1/groups/{web_group.pk}/", {"max_concurrent_reboots": 3}, format="json")
    assert r.status_code == 200, r.json()
    assert semaphore(acme, "web") == {"semaphore": 2, "max": 3, "holders": [held.machine_id]}


def test_a_host_offline_longer_than_lock_stuck_after_is_stuck(alice, held, web_group):
    """The group's own setting, not the update timeout (issue 10: one setting for both failed the
    hosts waiting behind a killed holder)."""
    from fleetweb.fleet.models import Event, Host

    web_group.update_timeout, web_group.lock_stuck_after = 30, 60
    web_group.save()
    Host.objects.filter(pk=held.pk).update(online=False, last_seen=timezone.now() - timedelta(seconds=45))
    assert alice.get(f"/api/v1/locks/{web_group.pk}/").json()["holders"][0]["stuck"] is False
    Host.objects.filter(pk=held.pk).update(online=False, last_seen=timezone.now() - timedelta(seconds=61))
    assert alice.get(f"/api/v1/locks/{web_group.pk}/").json()["holders"][0]["stuck"] is True

    from fleetweb.reboots.tasks import sync_locks

    assert sync_locks() == 1
    assert sync_locks() == 0   # reported once per holding
    assert Event.objects.filter(kind="lock_stuck", host=held).get().message.endswith("longer than 60 s")


def test_without_etcd_reads_say_so_and_writes_are_503(alice, web_group, no_etcd):
    item = alice.get(f"/api/v1/locks/{web_group.pk}/").json()
    assert item["free"] is None and "etcd is not configured" in item["error"]
    r = alice.post(f"/api/v1/locks/{web_group.pk}/unlock", {"holder": "x"}, format="json")
    assert r.status_code == 503 and "ETCD_ENDPOINTS" in r.json()["detail"]
    r = alice.post(f"/api/v1/locks/{web_group.pk}/set-max", {"max": 2}, format="json")
    assert r.status_code == 503


def test_with_etcd_down_writes_are_503(alice, web_group, settings):
    from fleetweb.reboots import etcd
    from scripts.services import start_etcd

    with start_etcd() as dead:
        settings.ETCD_ENDPOINTS = [dead.url]
        settings.ETCD_USERNAME = settings.ETCD_PASSWORD = None
    try:
        r = alice.post(f"/api/v1/locks/{web_group.pk}/set-max", {"max": 2}, format="json")
        assert r.status_code == 503 and r.json()["detail"]
        assert alice.get(f"/api/v1/locks/{web_group.pk}/").json()["error"]
    finally:
        etcd.reset_client()
