"""The cluster-config layer against a real throw-away etcd: scoping, JSON markers, history, watch."""
from __future__ import annotations

import threading

import pytest

from fleetweb.cloudconfig.etcd import (
    ConfigStore,
    ConfigWatch,
    EtcdUnavailable,
    InvalidJSON,
    KeyNotFound,
    KeyRefused,
    make_client,
    wait_until,
)
from scripts.services import test_etcd_endpoints


@pytest.fixture
def etcd():
    c = make_client(test_etcd_endpoints())
    c.call("delete_prefix", "fleet/store-test/")
    c.call("delete_prefix", "fleet/store-other/")
    yield c
    c.close()


@pytest.fixture
def org(etcd):
    return ConfigStore("store-test", etcd=etcd)


def test_it_writes_under_the_organization_prefix(org, etcd):
    entry = org.put("app/name", "web")
    assert entry.etcd_key == "fleet/store-test/config/app/name"
    assert etcd.get("fleet/store-test/config/app/name")[0] == b"web"
    assert (entry.version, entry.create_revision == entry.mod_revision) == (1, True)


@pytest.mark.parametrize("key", ["../secret", "a/../../x", "/fleet/other/config/x", "a//b", "./a", "a/.", "a/",
                                 "", "a\\b", "a\x00b", "%2e%2e/x", "_meta/x", "groups/web/x", "a b"])
def test_it_refuses_keys_that_could_leave_the_scope(org, key):
    with pytest.raises(KeyRefused):
        org.put(key, "x")


def test_it_keeps_group_keys_in_the_group_prefix_and_out_of_the_org_list(org, etcd):
    group = ConfigStore("store-test", "web", etcd=etcd)
    group.put("port", "80")
    org.put("region", "eu")
    assert [e.key for e in org.list()] == ["region"]
    assert [(e.key, e.etcd_key) for e in group.list()] == [("port", "fleet/store-test/config/groups/web/port")]
    with pytest.raises(KeyRefused):
        ConfigStore("store-test", "../x", etcd=etcd)


def test_it_does_not_see_another_organizations_keys(org, etcd):
    ConfigStore("store-other", etcd=etcd).put("secret", "s")
    assert org.list() == []
    with pytest.raises(KeyNotFound):
        org.get("secret")


def test_it_validates_json_for_marked_keys_and_writes_nothing_when_invalid(org, etcd):
    org.put("db.json", '{"host": "a"}', as_json=True)
    with pytest.raises(InvalidJSON) as exc:
        org.put("db.json", '{"host": ')
    assert "not valid JSON" in exc.value.message and exc.value.field == "value"
    assert org.get("db.json").value == '{"host": "a"}' and org.get("db.json").json
    with pytest.raises(InvalidJSON):
        org.put("new.json", "nope", as_json=True)
    with pytest.raises(KeyNotFound):
        org.get("new.json")
    org.put("db.json", "plain now", as_json=False)  # unmarking allows any text
    assert not org.get("db.json").json
    assert etcd.get("fleet/store-test/config/_meta/db.json")[0] is None


def test_it_walks_the_revision_history_newest_first(org):
    for v in ("1", "2", "3"):
        org.put("counter", v)
    org.put("other", "x")
    h = org.history("counter")
    assert [r["value"] for r in h["revisions"]] == ["3", "2", "1"]
    assert [r["version"] for r in h["revisions"]] == [3, 2, 1]
    assert len({r["create_revision"] for r in h["revisions"]}) == 1
    assert h["revisions"][0]["mod_revision"] > h["revisions"][1]["mod_revision"] > h["revisions"][2]["mod_revision"]
    assert not h["compacted"]


def test_it_says_when_history_was_compacted(org, etcd):
    org.put("c", "1")
    org.put("c", "2")
    last = org.put("c", "3")
    etcd.call("compact", last.mod_revision)
    h = org.history("c")
    assert [r["value"] for r in h["revisions"]] == ["3"] and h["compacted"]


def test_it_deletes_a_key_and_its_marker(org, etcd):
    org.put("gone.json", "{}", as_json=True)
    org.delete("gone.json")
    assert etcd.get("fleet/store-test/config/gone.json")[0] is None
    assert etcd.get("fleet/store-test/config/_meta/gone.json")[0] is None
    with pytest.raises(KeyNotFound):
        org.delete("gone.json")


def test_it_reports_an_unreachable_etcd():
    from scripts.services import free_port

    store = ConfigStore("store-test", etcd=make_client([f"http://127.0.0.1:{free_port()}"], timeout=1))
    with pytest.raises(EtcdUnavailable):
        store.list()


def test_the_watch_sends_a_notice_per_change(org, etcd):
    seen, lock = [], threading.Lock()

    def notify(org_id, payload):
        with lock:
            seen.append((org_id, payload))

    watch = ConfigWatch(42, "store-test", notify=notify, endpoints=test_etcd_endpoints())
    watch.start()
    try:
        assert watch.ready.wait(30)
        org.put("live", "1")
        ConfigStore("store-test", "web", etcd=etcd).put("port", "80")
        ConfigStore("store-other", etcd=etcd).put("noise", "x")  # another organization: not ours
        org.delete("live")
        assert wait_until(lambda: len(seen) >= 3, timeout=30)
    finally:
        watch.stop()
    payloads = [p for _, p in seen]
    assert {o for o, _ in seen} == {42}
    assert payloads[0] == {"kind": "etcd", "event": "put", "key": "live", "scope": "org",
                           "revision": payloads[0]["revision"]}
    assert payloads[1]["scope"] == "group" and payloads[1]["group_slug"] == "web" and payloads[1]["key"] == "port"
    assert payloads[2]["event"] == "delete" and payloads[2]["key"] == "live"
