"""cluster-config API and dashboard page: scoping (outsider 404, viewer 403), JSON validation,
prefix escapes, no-etcd answers.  Against a real etcd."""
from __future__ import annotations

import pytest

from fleetweb.cloudconfig import etcd as etcd_layer
from scripts.services import test_etcd_endpoints

LIST, KEY, HISTORY = "/api/v1/cluster-config/", "/api/v1/cluster-config/key", "/api/v1/cluster-config/history"


@pytest.fixture(autouse=True)
def etcd(settings):
    settings.ETCD_ENDPOINTS = test_etcd_endpoints()
    etcd_layer.reset_client()
    c = etcd_layer.make_client()
    for slug in ("acme", "other"):
        c.call("delete_prefix", f"fleet/{slug}/config/")
    yield c
    c.close()
    etcd_layer.reset_client()
    etcd_layer.stop_watches()


def put(client, key, value, json=None, **scope):
    body = {"key": key, "value": value}
    if json is not None:
        body["json"] = json
    qs = "&".join(f"{k}={v}" for k, v in scope.items())
    return client.put(f"{KEY}?{qs}" if qs else KEY, body, format="json")


def test_it_lists_the_organizations_keys(alice, etcd):
    assert put(alice, "region", "eu").status_code == 200
    etcd.put("fleet/acme/config/groups/web/port", "80")  # a group key is not in the org list
    r = alice.get(LIST)
    assert r.status_code == 200
    assert r.json()["prefix"] == "fleet/acme/config/"
    assert [(e["key"], e["value"], e["etcd_key"]) for e in r.json()["results"]] == [
        ("region", "eu", "fleet/acme/config/region")]


def test_it_keeps_group_keys_under_the_group(alice, web_group, etcd):
    r = put(alice, "port", "8080", scope="group", group=web_group.pk)
    assert r.status_code == 200 and r.json()["etcd_key"] == "fleet/acme/config/groups/web/port"
    r = alice.get(LIST, {"scope": "group", "group": web_group.pk})
    assert [e["key"] for e in r.json()["results"]] == ["port"] and r.json()["group"] == web_group.pk
    assert alice.get(KEY, {"scope": "group", "group": web_group.pk, "key": "port"}).json()["value"] == "8080"


def test_the_outsider_gets_404_for_another_organizations_group(charlie, web_group):
    assert charlie.get(LIST, {"scope": "group", "group": web_group.pk}).status_code == 404
    assert put(charlie, "x", "y", scope="group", group=web_group.pk).status_code == 404
    assert charlie.get(HISTORY, {"scope": "group", "group": web_group.pk, "key": "x"}).status_code == 404


def test_the_outsider_sees_only_its_own_prefix(alice, charlie):
    put(alice, "secret", "acme-only")
    assert charlie.get(LIST).json()["results"] == []
    assert charlie.get(KEY, {"key": "secret"}).status_code == 404
    assert charlie.get(LIST).json()["prefix"] == "fleet/other/config/"


def test_the_viewer_reads_but_cannot_write(alice, bob):
    put(alice, "region", "eu")
    assert bob.get(KEY, {"key": "region"}).status_code == 200
    r = put(bob, "region", "us")
    assert r.status_code == 403
    assert bob.delete(f"{KEY}?key=region").status_code == 403
    assert alice.get(KEY, {"key": "region"}).json()["value"] == "eu"


def test_the_operator_writes_and_deletes(operator):
    assert put(operator, "a", "1").status_code == 200
    assert operator.delete(f"{KEY}?key=a").status_code == 204
    assert operator.get(KEY, {"key": "a"}).status_code == 404
    assert operator.delete(f"{KEY}?key=a").status_code == 404


def test_json_keys_refuse_invalid_json_and_write_nothing(alice, etcd):
    assert put(alice, "db.json", '{"host": "a"}', json=True).status_code == 200
    r = put(alice, "db.json", "{broken")
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["detail"] and "value" in r.json()["errors"]
    assert etcd.get("fleet/acme/config/db.json")[0] == b'{"host": "a"}'
    r = put(alice, "fresh.json", "nope", json=True)
    assert r.status_code == 400 and etcd.get("fleet/acme/config/fresh.json")[0] is None
    assert alice.get(KEY, {"key": "db.json"}).json()["json"] is True


@pytest.mark.parametrize("key", ["../other/config/x", "/fleet/other/config/x", "a/../../../other/config/x",
                                 "groups/web/x", "_meta/x", "a//b", "..", "%2e%2e/x"])
def test_keys_that_would_leave_the_prefix_are_refused(alice, etcd, key):
    r = put(alice, key, "x")
    assert r.status_code == 400 and r.json()["errors"].get("key")
    assert alice.get(KEY, {"key": key}).status_code == 400
    assert alice.get(HISTORY, {"key": key}).status_code == 400
    assert list(etcd.call("get_prefix", "fleet/other/")) == []


def test_it_returns_a_keys_history(alice):
    for v in ("1", "2", "3"):
        put(alice, "n", v)
    r = alice.get(HISTORY, {"key": "n"})
    assert r.status_code == 200
    assert [(x["value"], x["version"]) for x in r.json()["revisions"]] == [("3", 3), ("2", 2), ("1", 1)]


def test_a_bad_scope_is_a_400(alice):
    assert alice.get(LIST, {"scope": "cluster"}).status_code == 400
    assert alice.get(LIST, {"scope": "group"}).status_code == 400


def test_without_etcd_it_says_so(alice, settings):
    settings.ETCD_ENDPOINTS = []
    r = alice.get(LIST)
    assert r.status_code == 503 and "ETCD_ENDPOINTS" in r.json()["detail"]


# ---------------------------------------------------------------------------------------------
# Dashboard
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def browser_of(client):
    def login(api_client):
        client.force_login(api_client.user)
        return client
    return login


def test_the_page_lists_keys_and_shows_history(alice, browser_of):
    put(alice, "region", "eu")
    put(alice, "region", "us")
    page = browser_of(alice)
    r = page.get("/cluster-config/?key=region")
    html = r.content.decode()
    assert r.status_code == 200
    assert 'data-live="etcd"' in html and 'data-key="region"' in html and 'id="etcd-history"' in html
    assert html.count("<tr><td class=\"num\">") == 2  # two revisions
    partial = page.get("/cluster-config/?scope=org", HTTP_HX_REQUEST="true")
    assert partial.content.decode().lstrip().startswith('<section id="etcd-keys"')


def test_the_page_saves_and_refuses_invalid_json(alice, browser_of, etcd):
    page = browser_of(alice)
    r = page.post("/cluster-config/save", {"scope": "org", "key": "cfg.json", "value": '{"a": 1}', "json": "on"})
    assert r.status_code == 302 and "key=cfg.json" in r["Location"]
    r = page.post("/cluster-config/save", {"scope": "org", "key": "cfg.json", "value": "{", "json": "on"})
    assert r.status_code == 422 and "not valid JSON" in r.content.decode()
    assert etcd.get("fleet/acme/config/cfg.json")[0] == b'{"a": 1}'
    r = page.post("/cluster-config/save", {"scope": "org", "key": "../x", "value": "1"})
    assert r.status_code == 422


def test_the_page_refuses_viewers_and_outsiders(bob, charlie, web_group, browser_of, client):
    page = browser_of(bob)
    assert page.post("/cluster-config/save", {"key": "a", "value": "1"}).status_code == 403
    client.logout()
    page = browser_of(charlie)
    assert page.get(f"/cluster-config/?scope=group&group={web_group.pk}").status_code == 404
    assert page.post("/cluster-config/save", {"scope": "group", "group": web_group.pk, "key": "a",
                                              "value": "1"}).status_code == 404


def test_the_page_says_when_etcd_is_not_configured(alice, browser_of, settings):
    settings.ETCD_ENDPOINTS = []
    r = browser_of(alice).get("/cluster-config/")
    assert r.status_code == 200 and "etcd is not configured" in r.content.decode()
