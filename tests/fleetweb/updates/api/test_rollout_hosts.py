"""GET /api/v1/rollouts/{id}/hosts."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from fleetweb.updates.choices import HostUpdateState
from fleetweb.updates.models import RolloutHost

URL = "/api/v1/rollouts/{}/hosts"
FIELDS = {"id", "host", "hostname", "state", "progress", "error", "attempts", "from_version", "granted_at",
          "finished_at"}


@pytest.fixture
def rollout(acme, web_group, online_hosts, make_release):
    web_group.max_in_flight = 2
    web_group.save()
    online_hosts(4)
    [rollout] = acme.channels.get(name="stable").publish(make_release("101.0.0"), "alice")
    entries = {rh.host.hostname: rh for rh in rollout.hosts.select_related("host")}
    entries["web-00"].finish(HostUpdateState.FAILED, "sha256 mismatch")
    entries["web-01"].move(HostUpdateState.DOWNLOADING, 0.25)
    return rollout


def test_it_lists_the_hosts_of_a_rollout_with_their_state(bob, rollout):
    r = bob.get(URL.format(rollout.pk))
    assert r.status_code == 200
    page = r.json()
    assert set(page) == {"count", "next", "previous", "results"} and page["count"] == 4
    rows = {h["hostname"]: h for h in page["results"]}
    assert list(rows) == ["web-00", "web-01", "web-02", "web-03"]
    assert set(rows["web-00"]) == FIELDS
    assert (rows["web-00"]["state"], rows["web-00"]["error"]) == ("failed", "sha256 mismatch")
    assert rows["web-00"]["granted_at"] and rows["web-00"]["finished_at"] and rows["web-00"]["attempts"] == 1
    assert (rows["web-01"]["state"], rows["web-01"]["progress"]) == ("downloading", 0.25)
    assert rows["web-03"]["state"] == "pending" and rows["web-03"]["granted_at"] is None
    assert rows["web-03"]["from_version"] == "100.0.0"


def test_it_filters_by_state_and_paginates(bob, rollout):
    assert [h["hostname"] for h in bob.get(URL.format(rollout.pk), {"state": "failed"}).json()["results"]] == [
        "web-00"]
    page = bob.get(URL.format(rollout.pk), {"page_size": 3, "page": 2}).json()
    assert [h["hostname"] for h in page["results"]] == ["web-03"] and page["next"] is None
    assert bob.get(URL.format(rollout.pk), {"state": "lost"}).status_code == 400


def test_it_answers_404_to_an_outsider_and_for_an_unknown_rollout(charlie, bob, rollout):
    r = charlie.get(URL.format(rollout.pk))
    assert r.status_code == 404 and set(r.json()) >= {"detail", "errors"}
    assert bob.get(URL.format(rollout.pk + 1000)).status_code == 404


def test_it_needs_authentication(rollout):
    assert APIClient().get(URL.format(rollout.pk)).status_code == 401


def test_it_lists_few_or_many_hosts_in_the_same_number_of_queries(alice, rollout, web_group, make_host,
                                                                 django_assert_num_queries):
    alice.get(URL.format(rollout.pk))
    # the API key, the rollout, the count, the page (entries joined with their host)
    with django_assert_num_queries(4):
        assert alice.get(URL.format(rollout.pk)).json()["count"] == 4
    hosts = [make_host(web_group, f"web-{i:02d}") for i in range(4, 40)]
    RolloutHost.objects.bulk_create(RolloutHost(rollout=rollout, host=h) for h in hosts)
    with django_assert_num_queries(4):
        assert alice.get(URL.format(rollout.pk), {"page_size": 500}).json()["count"] == 40
