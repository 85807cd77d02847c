"""GET /api/v1/rollouts/ and /api/v1/rollouts/{id}/."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from fleetweb.fleet.models import Group, Host
from fleetweb.updates.choices import HostUpdateState, RolloutStatus
from fleetweb.updates.models import Rollout, RolloutHost

URL = "/api/v1/rollouts/"

ITEM_FIELDS = {"id", "group", "group_name", "channel", "release", "release_version", "status", "halted_reason",
               "allow_downgrade", "counts", "progress", "created_by", "created", "finished"}


def configure(group, **fields):
    Group.objects.filter(pk=group.pk).update(**fields)
    group.refresh_from_db()


@pytest.fixture
def rollout(acme, web_group, online_hosts, make_release):
    configure(web_group, max_in_flight=2)
    online_hosts(4)
    [rollout] = acme.channels.get(name="stable").publish(make_release("101.0.0"), "alice")
    entries = {rh.host.hostname: rh for rh in rollout.hosts.select_related("host")}
    entries["web-00"].finish(HostUpdateState.SUCCEEDED)
    entries["web-01"].move(HostUpdateState.DOWNLOADING, 0.5)
    return rollout


def test_it_shows_a_rollout_with_counts_and_progress(bob, rollout, web_group):
    r = bob.get(f"{URL}{rollout.pk}/")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == ITEM_FIELDS
    assert body["group"] == web_group.pk and body["group_name"] == "web" and body["channel"] == "stable"
    assert body["release"] == rollout.release_id and body["release_version"] == "101.0.0"
    assert body["status"] == "running" and body["halted_reason"] == ""
    assert body["counts"] == rollout.counts()
    assert body["counts"]["succeeded"] == 1 and body["counts"]["downloading"] == 1
    assert body["counts"]["pending"] == 2 and body["counts"]["total"] == 4
    assert body["progress"] == {"done": 1, "total": 4, "percent": 25.0}


def test_it_shows_why_a_rollout_halted(bob, rollout):
    rollout.halt("2 of 4 hosts failed")
    body = bob.get(f"{URL}{rollout.pk}/").json()
    assert body["status"] == "halted" and body["halted_reason"] == "2 of 4 hosts failed"
    assert body["finished"] is not None


def test_it_says_a_rollout_with_no_hosts_is_complete(bob, acme, web_group, make_release):
    [rollout] = acme.channels.get(name="stable").publish(make_release("101.0.0"), "alice")
    body = bob.get(f"{URL}{rollout.pk}/").json()
    assert body["status"] == "completed" and body["progress"] == {"done": 0, "total": 0, "percent": 100.0}


@pytest.fixture
def rollouts(acme, web_group, beta_group, make_host, make_release):
    make_host(web_group, "web-1")
    make_host(beta_group, "canary-1")
    first, second = make_release("101.0.0"), make_release("102.0.0")
    [a] = acme.channels.get(name="beta").publish(first, "alice")
    [b] = acme.channels.get(name="stable").publish(first, "alice")
    [c] = acme.channels.get(name="stable").publish(second, "alice")
    return {"beta-101": a, "web-101": b, "web-102": c}


@pytest.mark.parametrize("query, expected", [
    ("", ["web-102", "web-101", "beta-101"]),
    ("group=canary", ["beta-101"]),
    ("status=superseded", ["web-101"]),
    ("release=101.0.0", ["web-101", "beta-101"]),
    ("channel=beta", ["beta-101"]),
])
def test_it_lists_and_filters_rollouts(bob, rollouts, query, expected):
    r = bob.get(f"{URL}?{query}")
    assert r.status_code == 200
    names = {v.pk: k for k, v in rollouts.items()}
    assert [names[x["id"]] for x in r.json()["results"]] == expected


def test_it_filters_by_group_id_and_release_id(bob, rollouts, web_group):
    web_102 = rollouts["web-102"]
    assert [x["id"] for x in bob.get(URL, {"group": web_group.pk, "release": web_102.release_id}).json()[
        "results"]] == [web_102.pk]


def test_it_rejects_an_unknown_status(bob, rollouts):
    r = bob.get(URL, {"status": "exploded"})
    assert r.status_code == 400 and "status" in r.json()["errors"]


def test_it_hides_rollouts_of_other_organizations(charlie, rollout, other_group, make_host, make_release, other_org):
    make_host(other_group, "theirs")
    [theirs] = other_org.channels.get(name="stable").publish(make_release("200.0.0", org=other_org), "charlie")
    assert [x["id"] for x in charlie.get(URL).json()["results"]] == [theirs.pk]
    assert charlie.get(f"{URL}{rollout.pk}/").status_code == 404
    assert charlie.get(URL, {"release": rollout.release_id}).json()["count"] == 0


def test_it_is_read_only(alice, rollout):
    assert alice.post(URL, {}, format="json").status_code == 405
    assert alice.delete(f"{URL}{rollout.pk}/").status_code == 405


def test_it_needs_authentication(rollout):
    assert APIClient().get(URL).status_code == 401
    assert APIClient().get(f"{URL}{rollout.pk}/").status_code == 401


def _bulk_rollouts(group, release, n):
    rows = Rollout.objects.bulk_create(Rollout(organization_id=group.organization_id, group=group,
                                               channel_id=group.channel_id, release=release,
                                               status=RolloutStatus.SUPERSEDED) for _ in range(n))
    hosts = list(Host.objects.filter(group=group))
    RolloutHost.objects.bulk_create(RolloutHost(rollout=r, host=h, state=HostUpdateState.FAILED)
                                    for r in rows for h in hosts)


def test_it_lists_5_or_50_rollouts_in_the_same_number_of_queries(alice, web_group, make_host, make_release,
                                                                 django_assert_num_queries):
    alice.get(URL)  # the API key's last_used is written at most once a minute
    make_host(web_group, "web-1")
    make_host(web_group, "web-2")
    release = make_release("101.0.0")
    _bulk_rollouts(web_group, release, 5)
    # the API key, the count, the page (rollouts with group, channel, release and their counts)
    with django_assert_num_queries(3):
        r = alice.get(URL, {"page_size": 500})
    assert r.json()["count"] == 5
    assert r.json()["results"][0]["counts"]["failed"] == 2
    _bulk_rollouts(web_group, release, 45)
    with django_assert_num_queries(3):
        r = alice.get(URL, {"page_size": 500})
    assert r.json()["count"] == 50
    assert {x["progress"]["done"] for x in r.json()["results"]} == {2}
