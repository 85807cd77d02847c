"""GET/PATCH/DELETE /api/v1/hosts/ and /api/v1/hosts/{id}/."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from fleetweb.fleet.models import Event, Group, Host

URL = "/api/v1/hosts/"

ITEM_FIELDS = {"id", "hostname", "machine_id", "group", "group_name", "channel", "reported_channel", "version",
               "update_status", "online", "last_seen", "partitions", "policy_applied", "agent_version", "boot_id",
               "registered_at", "reenrollment_allowed_until"}
PARTITION_FIELDS = {"label", "number", "version", "priority", "tries", "successful", "active"}


@pytest.fixture
def db_group(acme):
    return Group.objects.create(organization=acme, name="db", slug="db", channel=acme.channels.get(name="beta"))


def test_it_lists_hosts_with_the_documented_fields(alice, web_group, make_host):
    host = make_host(web_group, "web-1", channel="stable", agent_version="0.1.0", boot_id="b" * 32)
    r = alice.get(URL)
    assert r.status_code == 200
    page = r.json()
    assert set(page) == {"count", "next", "previous", "results"}
    assert page["count"] == 1
    item = page["results"][0]
    assert set(item) == ITEM_FIELDS
    assert item["id"] == str(host.pk)
    assert item["group"] == web_group.pk and item["group_name"] == "web"
    assert item["channel"] == "stable" and item["reported_channel"] == "stable"
    assert item["version"] == "100.0.0" and item["update_status"] == "IDLE"
    assert item["online"] is False and item["policy_applied"] is False
    assert [set(p) for p in item["partitions"]] == [PARTITION_FIELDS, PARTITION_FIELDS]
    assert item["partitions"][0]["active"] is True


def test_it_shows_one_host(bob, web_group, make_host):
    host = make_host(web_group, "web-1")
    r = bob.get(f"{URL}{host.pk}/")
    assert r.status_code == 200
    assert r.json()["hostname"] == "web-1"


def test_it_says_policy_applied_once_the_agent_acknowledged(alice, web_group, make_host):
    host = make_host(web_group)
    Host.objects.filter(pk=host.pk).update(policy_revision=web_group.policy_revision)
    assert alice.get(f"{URL}{host.pk}/").json()["policy_applied"] is True


def test_it_hides_hosts_of_other_organizations(charlie, web_group, make_host, other_group):
    host = make_host(web_group)
    make_host(other_group, "theirs")
    assert [h["hostname"] for h in charlie.get(URL).json()["results"]] == ["theirs"]
    assert charlie.get(f"{URL}{host.pk}/").status_code == 404
    assert charlie.patch(f"{URL}{host.pk}/", {"hostname": "x"}, format="json").status_code == 404
    assert charlie.delete(f"{URL}{host.pk}/").status_code == 404
    assert Host.objects.filter(pk=host.pk, hostname=host.hostname).exists()


def test_it_needs_authentication(web_group, make_host):
    host = make_host(web_group)
    anon = APIClient()
    r = anon.get(URL)
    assert r.status_code == 401
    assert set(r.json()) >= {"detail", "errors"}
    assert anon.get(f"{URL}{host.pk}/").status_code == 401
    anon.credentials(HTTP_AUTHORIZATION="Bearer fwk_000000000000_nope")
    assert anon.get(URL).status_code == 401


def test_it_refuses_a_revoked_api_key(alice, acme):
    from fleetweb.tenancy.models import ApiKey

    ApiKey.objects.get(organization=acme, name="alice-key").revoke()
    assert alice.get(URL).status_code == 401


def test_it_does_not_let_a_viewer_write(bob, web_group, make_host):
    host = make_host(web_group, "web-1")
    assert bob.patch(f"{URL}{host.pk}/", {"hostname": "x"}, format="json").status_code == 403
    assert bob.delete(f"{URL}{host.pk}/").status_code == 403
    host.refresh_from_db()
    assert host.hostname == "web-1"


def test_it_renames_a_host(operator, web_group, make_host):
    host = make_host(web_group, "web-1")
    r = operator.patch(f"{URL}{host.pk}/", {"hostname": "web-01"}, format="json")
    assert r.status_code == 200, r.content
    assert r.json()["hostname"] == "web-01"
    host.refresh_from_db()
    assert host.hostname == "web-01"


def test_it_moves_a_host_and_pushes_the_new_policy(operator, web_group, db_group, make_host, monkeypatch,
                                                   django_capture_on_commit_callbacks):
    from fleetweb.core import hub

    host = make_host(web_group)
    Host.objects.filter(pk=host.pk).update(policy_revision=web_group.policy_revision)
    sent = []
    monkeypatch.setattr(hub, "publish", lambda key, frame: sent.append((key, frame)))
    revision = db_group.policy_revision
    with django_capture_on_commit_callbacks(execute=True):
        r = operator.patch(f"{URL}{host.pk}/", {"group": db_group.pk}, format="json")
    assert r.status_code == 200, r.content
    assert r.json()["group"] == db_group.pk and r.json()["channel"] == "beta"
    assert r.json()["policy_applied"] is False
    host.refresh_from_db()
    assert host.group == db_group and host.policy_revision == 0
    db_group.refresh_from_db()
    assert db_group.policy_revision == revision
    assert sent == [(f"host:{host.pk}", db_group.policy())]
    assert Event.objects.filter(host=host, kind="group_changed").exists()


def test_it_refuses_a_group_of_another_organization(alice, web_group, other_group, make_host):
    host = make_host(web_group)
    r = alice.patch(f"{URL}{host.pk}/", {"group": other_group.pk}, format="json")
    assert r.status_code == 400
    assert "group" in r.json()["errors"] and r.json()["detail"].startswith("group: ")
    host.refresh_from_db()
    assert host.group == web_group


def test_it_refuses_a_blank_hostname(alice, web_group, make_host):
    host = make_host(web_group)
    r = alice.patch(f"{URL}{host.pk}/", {"hostname": ""}, format="json")
    assert r.status_code == 400 and "hostname" in r.json()["errors"]


def test_it_ignores_read_only_fields(alice, web_group, make_host):
    host = make_host(web_group)
    alice.patch(f"{URL}{host.pk}/", {"version": "999.0.0", "machine_id": "x"}, format="json")
    host.refresh_from_db()
    assert host.version == "100.0.0"


def test_it_lets_an_admin_delete_a_host(alice, web_group, make_host):
    host = make_host(web_group, "web-1")
    assert alice.delete(f"{URL}{host.pk}/").status_code == 204
    assert not Host.objects.filter(pk=host.pk).exists()
    assert Event.objects.filter(kind="host_deleted", data__host=str(host.pk)).exists()


def test_it_does_not_let_an_operator_delete_a_host(operator, web_group, make_host):
    host = make_host(web_group)
    assert operator.delete(f"{URL}{host.pk}/").status_code == 403
    assert Host.objects.filter(pk=host.pk).exists()


def test_it_answers_404_for_an_unknown_host(alice, acme):
    assert alice.get(f"{URL}00000000-0000-0000-0000-000000000000/").status_code == 404
    assert alice.get(f"{URL}not-a-uuid/").status_code == 404


# -- filters ----------------------------------------------------------------------------------

@pytest.fixture
def fleet(web_group, db_group, make_host):
    hosts = {
        "web-1": make_host(web_group, "web-1", version="100.0.0"),
        "web-2": make_host(web_group, "web-2", version="101.0.0", machine_id="feedface" * 4),
        "db-1": make_host(db_group, "db-1", version="101.0.0"),
    }
    Host.objects.filter(pk=hosts["web-2"].pk).update(online=True, update_status="DOWNLOADING")
    return hosts


@pytest.mark.parametrize("query, expected", [
    ("", ["db-1", "web-1", "web-2"]),
    ("group=web", ["web-1", "web-2"]),
    ("group=db", ["db-1"]),
    ("channel=beta", ["db-1"]),
    ("channel=stable", ["web-1", "web-2"]),
    ("channel=alpha", []),
    ("version=101.0.0", ["db-1", "web-2"]),
    ("status=DOWNLOADING", ["web-2"]),
    ("online=true", ["web-2"]),
    ("online=false", ["db-1", "web-1"]),
    ("q=WEB", ["web-1", "web-2"]),
    ("q=feedface", ["web-2"]),
    ("group=web&online=false", ["web-1"]),
])
def test_it_filters_hosts(alice, fleet, query, expected):
    r = alice.get(f"{URL}?{query}")
    assert r.status_code == 200, r.content
    assert [h["hostname"] for h in r.json()["results"]] == expected


def test_it_filters_by_group_id(alice, fleet, db_group):
    r = alice.get(URL, {"group": db_group.pk})
    assert [h["hostname"] for h in r.json()["results"]] == ["db-1"]


def test_it_rejects_an_unknown_status(alice, fleet):
    r = alice.get(URL, {"status": "BOGUS"})
    assert r.status_code == 400 and "status" in r.json()["errors"]


def test_it_paginates(alice, web_group, make_host):
    for i in range(5):
        make_host(web_group, f"web-{i}")
    first = alice.get(URL, {"page_size": 2}).json()
    assert first["count"] == 5 and len(first["results"]) == 2
    assert first["previous"] is None and "page=2" in first["next"]
    last = alice.get(URL, {"page_size": 2, "page": 3}).json()
    assert [h["hostname"] for h in last["results"]] == ["web-4"] and last["next"] is None


# -- query counts -----------------------------------------------------------------------------

def _bulk_hosts(group, n, start=0):
    from tests.conftest import partitions

    Host.objects.bulk_create(Host(organization_id=group.organization_id, group=group, machine_id=f"{i:032x}",
                                  hostname=f"bulk-{i:04d}", partitions=partitions()) for i in range(start, start + n))


def test_it_lists_10_or_100_hosts_in_the_same_number_of_queries(alice, web_group, db_group,
                                                                 django_assert_num_queries):
    alice.get(URL)  # the API key's last_used is written at most once a minute
    _bulk_hosts(web_group, 10)
    # the API key, the count, the page (hosts joined with their group and channel)
    with django_assert_num_queries(3):
        r = alice.get(URL, {"page_size": 500})
    assert r.json()["count"] == 10
    _bulk_hosts(web_group, 50, start=10)
    _bulk_hosts(db_group, 40, start=60)
    with django_assert_num_queries(3):
        r = alice.get(URL, {"page_size": 500})
    assert r.json()["count"] == 100


def test_it_accepts_a_logged_in_browser_session(alice, web_group, make_host):
    make_host(web_group, "web-1")
    browser = APIClient()
    browser.force_login(alice.user)
    r = browser.get(URL)
    assert r.status_code == 200 and r.json()["count"] == 1
