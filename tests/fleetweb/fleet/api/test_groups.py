"""GET/POST/PATCH /api/v1/groups/ and /api/v1/groups/{id}/."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from fleetweb.fleet.models import Event, Group, Host

URL = "/api/v1/groups/"
ITEM_FIELDS = {"id", "name", "slug", "channel", "reboot_strategy", "max_concurrent_reboots", "lock_stuck_after",
               "reboot_window_start",
               "reboot_window_length", "policy_revision", "hosts_count", "hosts_applied", "created",
               "updates_enabled", "max_updates_per_period", "update_period", "max_in_flight", "update_timeout",
               "safe_mode", "failure_threshold", "failure_threshold_percent"}


def test_it_lists_groups_with_counts(bob, web_group, make_host):
    a = make_host(web_group)
    make_host(web_group)
    Host.objects.filter(pk=a.pk).update(policy_revision=web_group.policy_revision)
    r = bob.get(URL)
    assert r.status_code == 200
    assert r.json()["count"] == 1
    item = r.json()["results"][0]
    assert set(item) == ITEM_FIELDS
    assert item["name"] == "web" and item["channel"] == "stable" and item["reboot_strategy"] == "best-effort"
    assert item["hosts_count"] == 2 and item["hosts_applied"] == 1
    assert bob.get(f"{URL}{web_group.pk}/").json() == item


def test_it_creates_a_group(operator, acme):
    r = operator.post(URL, {"name": "Edge Nodes", "channel": "beta", "reboot_strategy": "etcd-lock",
                            "max_concurrent_reboots": 2, "reboot_window_start": "Sat 04:00",
                            "reboot_window_length": "2h"}, format="json")
    assert r.status_code == 201, r.content
    data = r.json()
    assert data["slug"] == "edge-nodes" and data["channel"] == "beta" and data["hosts_count"] == 0
    group = Group.objects.get(pk=data["id"])
    assert group.organization == acme and group.channel.name == "beta"
    assert group.reboot_window_start == "Sat 04:00"


def test_it_refuses_a_duplicate_group(operator, web_group):
    r = operator.post(URL, {"name": "web", "channel": "beta"}, format="json")
    assert r.status_code == 400
    assert Group.objects.filter(organization=web_group.organization).count() == 1


@pytest.mark.parametrize("change, field", [
    ({"channel": "nightly"}, "channel"),
    ({"reboot_strategy": "sometimes"}, "reboot_strategy"),
    ({"reboot_window_start": "25:00", "reboot_window_length": "1h"}, "reboot_window_start"),
    ({"reboot_window_start": "sat 04:00"}, "reboot_window_start"),
    ({"max_concurrent_reboots": 0}, "max_concurrent_reboots"),
    ({"name": ""}, "name"),
])
def test_it_refuses_to_create_an_invalid_group(operator, acme, change, field):
    r = operator.post(URL, {"name": "edge", "channel": "beta", **change}, format="json")
    assert r.status_code == 400, r.content
    assert field in r.json()["errors"]
    assert not Group.objects.exists()


def test_it_switches_the_channel(operator, web_group, monkeypatch, django_capture_on_commit_callbacks):
    from fleetweb.core import hub

    sent = []
    monkeypatch.setattr(hub, "publish", lambda key, frame: sent.append((key, frame)))
    with django_capture_on_commit_callbacks(execute=True):
        r = operator.patch(f"{URL}{web_group.pk}/", {"channel": "beta"}, format="json")
    assert r.status_code == 200, r.content
    assert r.json()["channel"] == "beta" and r.json()["policy_revision"] == 2
    web_group.refresh_from_db()
    assert web_group.channel.name == "beta" and web_group.policy_revision == 2
    event = Event.objects.get(kind="channel_changed")
    assert event.group == web_group and event.data["from"] == "stable" and event.data["to"] == "beta"
    assert event.actor == "api-key:olga-key"
    assert sent == [(f"group:{web_group.pk}", web_group.policy())]


def test_it_changes_the_reboot_policy(alice, web_group):
    r = alice.patch(f"{URL}{web_group.pk}/", {"reboot_strategy": "etcd-lock", "max_concurrent_reboots": 3,
                                              "reboot_window_start": "mon 02:00", "reboot_window_length": "90m"},
                    format="json")
    assert r.status_code == 200, r.content
    web_group.refresh_from_db()
    assert (web_group.reboot_strategy, web_group.max_concurrent_reboots) == ("etcd-lock", 3)
    assert web_group.policy_revision == 2
    assert set(Event.objects.values_list("kind", flat=True)) == {"strategy_changed", "group_changed"}


def test_it_does_not_bump_the_revision_when_nothing_changes(alice, web_group):
    r = alice.patch(f"{URL}{web_group.pk}/", {"channel": "stable"}, format="json")
    assert r.status_code == 200
    web_group.refresh_from_db()
    assert web_group.policy_revision == 1
    assert not Event.objects.filter(kind="channel_changed").exists()


@pytest.mark.parametrize("change, field", [
    ({"channel": "nightly"}, "channel"),
    ({"channel": "beta", "reboot_window_start": "23:61", "reboot_window_length": "1h"}, "reboot_window_start"),
    ({"channel": "beta", "reboot_window_start": "14:00"}, "reboot_window_start"),
    ({"channel": "beta", "reboot_window_start": "14:00", "reboot_window_length": "-1h"}, "reboot_window_start"),
    ({"channel": "beta", "reboot_strategy": "later"}, "reboot_strategy"),
])
def test_it_refuses_an_invalid_change_and_changes_nothing(alice, web_group, change, field):
    r = alice.patch(f"{URL}{web_group.pk}/", change, format="json")
    assert r.status_code == 400, r.content
    body = r.json()
    assert field in body["errors"] and body["detail"].startswith(f"{field}: ")
    web_group.refresh_from_db()
    assert web_group.channel.name == "stable" and web_group.policy_revision == 1
    assert web_group.reboot_window_start == ""
    assert not Event.objects.filter(group=web_group).exists()


def test_it_refuses_a_channel_of_another_organization_by_name_only(alice, web_group, other_org):
    channel = other_org.channels.get(name="beta")
    r = alice.patch(f"{URL}{web_group.pk}/", {"channel": channel.pk}, format="json")
    assert r.status_code == 400


def test_it_does_not_let_a_viewer_write(bob, web_group):
    assert bob.post(URL, {"name": "x", "channel": "beta"}, format="json").status_code == 403
    assert bob.patch(f"{URL}{web_group.pk}/", {"channel": "beta"}, format="json").status_code == 403
    web_group.refresh_from_db()
    assert web_group.channel.name == "stable" and Group.objects.count() == 1


def test_it_hides_groups_of_other_organizations(charlie, web_group, other_group):
    assert [g["id"] for g in charlie.get(URL).json()["results"]] == [other_group.pk]
    assert charlie.get(f"{URL}{web_group.pk}/").status_code == 404
    assert charlie.patch(f"{URL}{web_group.pk}/", {"channel": "beta"}, format="json").status_code == 404
    web_group.refresh_from_db()
    assert web_group.channel.name == "stable"


def test_it_creates_in_the_callers_organization_only(charlie, other_org, acme):
    r = charlie.post(URL, {"name": "edge", "channel": "alpha", "organization": acme.pk}, format="json")
    assert r.status_code == 201
    assert Group.objects.get(pk=r.json()["id"]).organization == other_org


def test_it_needs_authentication(web_group):
    assert APIClient().get(URL).status_code == 401
    assert APIClient().patch(f"{URL}{web_group.pk}/", {"channel": "beta"}, format="json").status_code == 401


def test_it_lists_groups_in_a_constant_number_of_queries(alice, acme, django_assert_num_queries):
    alice.get(URL)
    for i in range(3):
        Group.objects.create(organization=acme, name=f"g{i}", channel=acme.channels.get(name="alpha"))
    with django_assert_num_queries(3):
        alice.get(URL)
    for i in range(3, 20):
        Group.objects.create(organization=acme, name=f"g{i}", channel=acme.channels.get(name="alpha"))
    with django_assert_num_queries(3):
        assert alice.get(URL).json()["count"] == 20


def test_it_changes_the_rollout_policy(operator, web_group):
    r = operator.patch(f"{URL}{web_group.pk}/", {"max_in_flight": 5, "safe_mode": True, "updates_enabled": False},
                       format="json")
    assert r.status_code == 200, r.content
    assert (r.json()["max_in_flight"], r.json()["safe_mode"], r.json()["updates_enabled"]) == (5, True, False)
    web_group.refresh_from_db()
    assert web_group.max_in_flight == 5 and web_group.safe_mode and not web_group.updates_enabled
    assert Event.objects.filter(kind="group_changed", group=web_group).exists()


def test_it_refuses_an_invalid_rollout_policy(operator, web_group):
    r = operator.patch(f"{URL}{web_group.pk}/", {"failure_threshold_percent": True, "failure_threshold": 150},
                       format="json")
    assert r.status_code == 400 and "failure_threshold" in r.json()["errors"]
    web_group.refresh_from_db()
    assert web_group.failure_threshold_percent is False
