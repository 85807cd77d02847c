"""The reboot semaphore (agent/locksmith.py) against a real etcd: locksmith's vectors (DESIGN §4)."""
from __future__ import annotations

import json
import uuid

import pytest

from agent.etcd import make_client
from agent.locksmith import GLOBAL_KEY, LockError, Locksmith, Semaphore, group_key, query_escape
from scripts.services import test_etcd_endpoints


@pytest.fixture(scope="module")
def etcd():
    client = make_client(test_etcd_endpoints())
    yield client
    client.close()


@pytest.fixture
def prefix() -> str:
    return f"test/{uuid.uuid4().hex}/"


def raw(etcd, key) -> dict:
    value, _ = etcd.get(key)
    return json.loads(value)


def test_it_builds_locksmith_keys():
    assert GLOBAL_KEY == "coreos.com/updateengine/rebootlock/semaphore"
    assert group_key(None) == GLOBAL_KEY
    assert group_key("") == GLOBAL_KEY
    assert group_key("web") == "coreos.com/updateengine/rebootlock/groups/web/semaphore"
    assert group_key("prod/database") == "coreos.com/updateengine/rebootlock/groups/prod%2Fdatabase/semaphore"
    assert group_key("web", "fleet/acme/") == "fleet/acme/coreos.com/updateengine/rebootlock/groups/web/semaphore"
    assert group_key(None, "fleet/acme/") == "fleet/acme/" + GLOBAL_KEY


@pytest.mark.parametrize("text, escaped", [
    ("prod/database", "prod%2Fdatabase"), ("a b", "a+b"), ("a-b_c.d~e", "a-b_c.d~e"),
    ("x+y", "x%2By"), ("é", "%C3%A9"), ("a&b=c?", "a%26b%3Dc%3F"), ("50%", "50%25"),
])
def test_it_escapes_groups_like_go_query_escape(text, escaped):
    assert query_escape(text) == escaped


def test_it_creates_the_key_with_the_default_max_in_locksmith_json(etcd, prefix):
    ls = Locksmith(etcd, "web", prefix, default_max=3)
    assert ls.get() == Semaphore(semaphore=3, max=3, holders=[])
    value, _ = etcd.get(ls.key)
    assert value == b'{"semaphore":3,"max":3,"holders":[]}'


def test_it_keeps_holders_sorted_and_the_exact_json_shape(etcd, prefix):
    ls = Locksmith(etcd, "web", prefix, default_max=3)
    for holder in ("m3", "m1", "m2"):
        ls.lock(holder)
    assert raw(etcd, ls.key) == {"semaphore": 0, "max": 3, "holders": ["m1", "m2", "m3"]}
    assert list(raw(etcd, ls.key)) == ["semaphore", "max", "holders"]
    assert ls.holders() == ["m1", "m2", "m3"]


def test_it_fails_to_lock_when_the_semaphore_is_exhausted(etcd, prefix):
    ls = Locksmith(etcd, "web", prefix)
    ls.lock("a")
    with pytest.raises(LockError) as err:
        ls.lock("b")
    assert err.value.code == "no_slots"
    assert err.value.holders == ["a"]
    assert raw(etcd, ls.key) == {"semaphore": 0, "max": 1, "holders": ["a"]}


def test_it_lets_a_holder_lock_twice(etcd, prefix):
    ls = Locksmith(etcd, "web", prefix, default_max=2)
    ls.lock("a")
    assert ls.lock("a") == Semaphore(1, 2, ["a"])
    ls.lock("b")
    assert ls.lock("a") == Semaphore(0, 2, ["a", "b"])   # even with no free slot


def test_it_unlocks_a_non_holder_without_change(etcd, prefix):
    ls = Locksmith(etcd, "web", prefix)
    ls.lock("a")
    _, before = etcd.get(ls.key)
    assert ls.unlock("nobody") == Semaphore(0, 1, ["a"])
    _, after = etcd.get(ls.key)
    assert after.mod_revision == before.mod_revision
    assert ls.unlock("a") == Semaphore(1, 1, [])


def test_it_reads_null_holders(etcd, prefix):
    key = group_key("legacy", prefix)
    etcd.put(key, '{"semaphore":1,"max":1,"holders":null}')
    ls = Locksmith(etcd, "legacy", prefix)
    assert ls.get() == Semaphore(1, 1, [])
    ls.lock("m")
    assert raw(etcd, key) == {"semaphore": 0, "max": 1, "holders": ["m"]}


def test_it_adds_the_difference_on_set_max(etcd, prefix):
    ls = Locksmith(etcd, None, prefix)
    ls.lock("a")
    assert ls.set_max(3) == (Semaphore(0, 1, ["a"]), Semaphore(2, 3, ["a"]))  # before and after
    ls.lock("b")
    ls.lock("c")
    assert ls.set_max(1)[1] == Semaphore(-2, 1, ["a", "b", "c"])
    with pytest.raises(LockError) as err:
        ls.lock("d")
    assert err.value.code == "no_slots"
    ls.unlock("a")
    ls.unlock("b")
    assert ls.get() == Semaphore(0, 1, ["c"])
    with pytest.raises(LockError) as err:
        ls.set_max(-1)
    assert err.value.code == "invalid"


def test_it_refuses_a_value_that_is_not_locksmith_json(etcd, prefix):
    key = group_key("broken", prefix)
    etcd.put(key, "not json")
    with pytest.raises(LockError) as err:
        Locksmith(etcd, "broken", prefix).lock("a")
    assert err.value.code == "invalid"
    assert etcd.get(key)[0] == b"not json"


def test_it_reads_a_value_without_max_as_locksmith_does(etcd, prefix):
    """locksmith's reader (Go's encoding/json) takes ``{"semaphore": 1}`` with max 0 (its own test), as
    well as ``null``, ``{}`` and keys in another case; ours refused them, and ``agent lock status`` and
    the locks API showed an error for a semaphore locksmithctl reads fine."""
    key = group_key("legacy-nomax", prefix)
    etcd.put(key, '{"semaphore": 1}')
    ls = Locksmith(etcd, "legacy-nomax", prefix)
    assert ls.get() == Semaphore(1, 0, [])
    assert ls.set_max(2) == (Semaphore(1, 0, []), Semaphore(3, 2, []))
    assert raw(etcd, key) == {"semaphore": 3, "max": 2, "holders": []}
    assert Semaphore.from_json("null") == Semaphore.from_json("{}") == Semaphore(0, 0, [])
    assert Semaphore.from_json('{"Semaphore": 1, "MAX": 2, "Holders": ["a"]}') == Semaphore(1, 2, ["a"])
    for bad in ('{"semaphore": "1", "max": 1}', '{"semaphore": 1.5}', '{"semaphore": true}', '[1]', '{"semaphore:'):
        with pytest.raises(LockError) as err:
            Semaphore.from_json(bad)
        assert err.value.code == "invalid", bad


def test_it_keeps_groups_apart(etcd, prefix):
    web, db = Locksmith(etcd, "web", prefix), Locksmith(etcd, "prod/database", prefix)
    web.lock("a")
    db.lock("b")
    assert web.holders() == ["a"] and db.holders() == ["b"]
    assert etcd.get(prefix + "coreos.com/updateengine/rebootlock/groups/prod%2Fdatabase/semaphore")[0]


def test_it_says_etcd_is_unavailable():
    from scripts.services import start_etcd
    with start_etcd() as server:
        client = make_client([server.url], timeout=10)
        ls = Locksmith(client, "web")
        ls.lock("a")
        server.stop()
        with pytest.raises(LockError) as err:
            ls.unlock("a")
        assert err.value.code == "etcd_unavailable"
        client.close()


def test_it_works_with_etcd_auth_limited_to_the_org_prefix_and_logs_in_again_on_an_invalid_token(tmp_path):
    import subprocess

    from scripts.services import start_etcd

    with start_etcd(None, None) as server:
        def ctl(*args, user=None):
            cmd = ["etcdctl", "--endpoints", server.url, *(["--user", user] if user else []), *args]
            subprocess.run(cmd, check=True, capture_output=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        ctl("user", "add", "root:rootpw")
        ctl("role", "add", "org-acme")
        ctl("role", "grant-permission", "org-acme", "--prefix=true", "readwrite", "fleet/acme/")
        ctl("user", "add", "acme:acmepw")
        ctl("user", "grant-role", "acme", "org-acme")
        ctl("auth", "enable")

        client = make_client([server.url], user="acme", password="acmepw")
        ours = Locksmith(client, "web", "fleet/acme/")
        assert ours.lock("m1").holders == ["m1"]
        with pytest.raises(LockError) as err:
            Locksmith(client, "web", "fleet/other/").lock("m1")
        assert "permission denied" in str(err.value)
        client.client.metadata = (("token", "expired-token"),)       # as if the token had expired
        assert ours.unlock("m1").holders == []
        client.close()
        with pytest.raises(LockError) as err:
            Locksmith(make_client([server.url], user="acme", password="wrong"), "web", "fleet/acme/").get()
        assert "authentication failed" in str(err.value)
