"""GET /api/v1/events/ (and /api/v1/events/{id}/): the activity log, newest first."""
from __future__ import annotations

from rest_framework.test import APIClient

from fleetweb.fleet.models import Event

URL = "/api/v1/events/"


def test_it_lists_events_newest_first(bob, web_group, make_host):
    make_host(web_group, "web-1")
    web_group.apply_changes({"reboot_strategy": "off"}, actor="alice")
    r = bob.get(URL)
    assert r.status_code == 200
    kinds = [e["kind"] for e in r.json()["results"]]
    assert kinds == ["strategy_changed", "registered", "token_created"]
    item = r.json()["results"][1]
    assert set(item) == {"id", "kind", "message", "host", "host_name", "group", "group_name", "actor", "data",
                         "created"}
    assert item["host_name"] == "web-1" and item["group_name"] == "web"
    assert bob.get(f"{URL}{item['id']}/").json() == item


def test_it_filters_events(alice, web_group, make_host):
    host = make_host(web_group, "web-1")
    make_host(web_group, "web-2")
    assert {e["kind"] for e in alice.get(URL, {"kind": "registered"}).json()["results"]} == {"registered"}
    assert [e["host_name"] for e in alice.get(URL, {"host": str(host.pk)}).json()["results"]] == ["web-1"]
    assert alice.get(URL, {"group": web_group.pk}).json()["count"] == 4
    assert alice.get(URL, {"kind": "bogus"}).status_code == 400


def test_it_paginates(alice, acme):
    for i in range(7):
        Event.objects.record(acme.pk, "agent_event", f"event {i}")
    page = alice.get(URL, {"page_size": 5}).json()
    assert page["count"] == 7 and len(page["results"]) == 5 and page["next"]
    assert page["results"][0]["message"] == "event 6"


def test_it_hides_events_of_other_organizations(charlie, web_group, other_group, make_host):
    make_host(web_group, "ours")
    make_host(other_group, "theirs")
    results = charlie.get(URL).json()["results"]
    assert results and all(e["group"] == other_group.pk for e in results)
    acme_event = Event.objects.filter(organization=web_group.organization).first()
    assert charlie.get(f"{URL}{acme_event.pk}/").status_code == 404


def test_it_is_read_only(alice, acme):
    assert alice.post(URL, {"kind": "registered", "message": "x"}, format="json").status_code == 405


def test_it_needs_authentication(acme):
    assert APIClient().get(URL).status_code == 401


def test_it_lists_events_in_a_constant_number_of_queries(alice, web_group, make_host, django_assert_num_queries):
    alice.get(URL)
    make_host(web_group)
    with django_assert_num_queries(3):
        alice.get(URL)
    for _ in range(5):
        make_host(web_group)
    with django_assert_num_queries(3):
        assert alice.get(URL).json()["count"] == 12
