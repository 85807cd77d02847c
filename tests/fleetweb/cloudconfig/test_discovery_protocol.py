"""The discovery protocol, request by request, as etcd 3.4's v2discovery client sends it."""
from __future__ import annotations

import json
import re
import threading
import time

import pytest
from django.db import connection
from django.test import Client

from fleetweb.cloudconfig import discovery
from fleetweb.cloudconfig.discovery_models import EXTRA_MEMBERS, DiscoveryToken

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def web():
    return Client()


@pytest.fixture
def token(db):
    return DiscoveryToken.objects.issue(3)


def base(token) -> str:
    return f"/discovery/{token.token}"


def register(web, token, member_id, value):
    # client.Create: PUT <key>?prevExist=false, form value=..., Content-Type x-www-form-urlencoded
    return web.put(f"{base(token)}/{member_id}?prevExist=false", f"value={value}",
                   content_type="application/x-www-form-urlencoded")


def test_new_returns_a_token_url(web, settings):
    settings.FLEET_DISCOVERY_ANONYMOUS = True
    r = web.get("/discovery/new?size=5")
    assert r.status_code == 200 and r["Content-Type"].startswith("text/plain")
    m = re.fullmatch(re.escape(settings.FLEET_PUBLIC_URL) + r"/discovery/([0-9a-f]{32})", r.content.decode())
    assert m
    token = DiscoveryToken.objects.get(token=m.group(1))
    assert token.size == 5 and token.organization is None


@pytest.mark.parametrize("size", ["0", "256", "1000", "x", "-1"])
def test_new_refuses_a_bad_size(web, size, settings):
    settings.FLEET_DISCOVERY_ANONYMOUS = True
    r = web.get(f"/discovery/new?size={size}")
    assert r.status_code == 400 and r.content == b"size must be an integer between 1 and 255\n"
    assert not DiscoveryToken.objects.exists()


@pytest.mark.parametrize("size", [100, 255])
def test_new_takes_the_sizes_discovery_etcd_io_takes(web, size, settings):
    """discovery.etcd.io's own tests create tokens of size 100 (it takes any integer); ours once
    stopped at 99, and stops at 255 (every listing reads all of a token's members)."""
    settings.FLEET_DISCOVERY_ANONYMOUS = True
    r = web.get(f"/discovery/new?size={size}")
    assert r.status_code == 200, r.content
    token = DiscoveryToken.objects.get(token=r.content.decode().rsplit("/", 1)[1])
    assert token.size == size
    assert web.get(f"{base(token)}/_config/size").json()["node"]["value"] == str(size)


def test_new_reads_the_size_from_a_post_form_too(web, settings):
    """discovery.etcd.io reads ``size`` with Go's FormValue: the query string or a POST form."""
    settings.FLEET_DISCOVERY_ANONYMOUS = True
    r = web.post("/discovery/new", {"size": "5"})
    assert r.status_code == 200, r.content
    assert DiscoveryToken.objects.get(token=r.content.decode().rsplit("/", 1)[1]).size == 5


def test_new_with_an_operators_api_key_makes_an_owned_token(web, alice, bob, acme):
    r = web.get("/discovery/new?size=3", HTTP_AUTHORIZATION=f"Bearer {alice.api_key}")
    assert DiscoveryToken.objects.get(token=r.content.decode().rsplit("/", 1)[1]).organization == acme
    assert web.get("/discovery/new", HTTP_AUTHORIZATION=f"Bearer {bob.api_key}").status_code == 403
    assert web.get("/discovery/new", HTTP_AUTHORIZATION="Bearer fwk_nope").status_code == 401


def test_the_size_key(web, token):
    r = web.get(f"{base(token)}/_config/size?quorum=false&recursive=false&sorted=false")
    assert r.status_code == 200 and r["X-Etcd-Index"] == "1"
    assert r.json() == {"action": "get", "node": {"key": f"/{token.token}/_config/size", "value": "3",
                                                   "modifiedIndex": 1, "createdIndex": 1}}


def test_registration_is_put_if_absent(web, token):
    r = register(web, token, "8e9e05c52164694d", "m1=http://10.0.0.1:2380")
    assert r.status_code == 201 and r["X-Etcd-Index"] == "2"
    assert r.json() == {"action": "create", "node": {"key": f"/{token.token}/8e9e05c52164694d",
                                                      "value": "m1=http://10.0.0.1:2380",
                                                      "modifiedIndex": 2, "createdIndex": 2}}
    again = register(web, token, "8e9e05c52164694d", "m1=http://10.0.0.9:2380")
    assert again.status_code == 412
    assert again.json() == {"errorCode": 105, "message": "Key already exists",
                            "cause": f"/{token.token}/8e9e05c52164694d", "index": 2}
    assert token.members.get().value == "m1=http://10.0.0.1:2380"


def test_the_token_directory_lists_members_in_creation_order(web, token):
    register(web, token, "b", "m1=http://a:2380")
    register(web, token, "a", "m2=http://b:2380")
    r = web.get(f"{base(token)}?quorum=false&recursive=false&sorted=false")
    assert r.status_code == 200 and r["X-Etcd-Index"] == "3"
    node = r.json()["node"]
    assert node["dir"] is True and node["key"] == f"/{token.token}"
    # etcd v2 hides keys whose name starts with "_" from listings: _config is not listed.
    assert [n["key"].rsplit("/", 1)[1] for n in node["nodes"]] == ["b", "a"]
    assert [n.get("createdIndex") for n in node["nodes"]] == [2, 3]
    assert web.get(f"{base(token)}?recursive=true").json()["node"] == node
    assert web.get(f"{base(token)}/_config/size").json()["node"]["value"] == "3"  # by its own path


def test_a_discovery_url_with_a_trailing_slash_is_the_same_token(web, token):
    """etcd's client keeps the trailing slash of ``--discovery http://.../<token>/`` when it lists the
    members and when it watches the token (it drops it for _config/size and its registration); an
    HTML 404 there made etcd exit with "response is invalid json"."""
    register(web, token, "aa", "m1=http://a:2380")
    listing = web.get(f"{base(token)}/?quorum=false&recursive=false&sorted=false")
    assert listing.status_code == 200 and listing["Content-Type"] == "application/json"
    assert listing.json() == web.get(f"{base(token)}?quorum=false&recursive=false&sorted=false").json()
    assert [n["value"] for n in listing.json()["node"]["nodes"]] == ["m1=http://a:2380"]
    watched = web.get(f"{base(token)}/?recursive=true&wait=true&waitIndex=2")
    assert watched.status_code == 200 and watched.json()["node"]["key"] == f"/{token.token}/aa"


def test_a_recursive_watch_never_reports_the_hidden_size_key(web, token):
    """From index 1 a recursive watch of the token answers with the first member, not with the
    ``_config/size`` key created at index 1 (etcd v2 hides it from recursive watches)."""
    register(web, token, "aa", "m1=http://a:2380")
    r = web.get(f"{base(token)}?wait=true&recursive=true&waitIndex=1")
    assert r.json() == {"action": "create", "node": {"key": f"/{token.token}/aa", "value": "m1=http://a:2380",
                                                      "modifiedIndex": 2, "createdIndex": 2}}
    size = web.get(f"{base(token)}/_config/size?wait=true&waitIndex=1")  # a watch of the key itself does
    assert size.json()["action"] == "create" and size.json()["node"]["key"].endswith("/_config/size")


def test_wait_index_zero_waits_for_the_next_change(web, token, settings):
    """``waitIndex=0`` is no index: the watch waits for the next change instead of replaying index 1."""
    settings.DISCOVERY_WAIT = 0.3
    register(web, token, "aa", "m1=http://a:2380")
    r = web.get(f"{base(token)}?wait=true&recursive=true&waitIndex=0")
    assert r.status_code == 200 and r.content == b""  # nothing after index 2 within the wait


def test_members_past_the_size_are_stored_as_upstream_up_to_a_bound(web, token):
    """discovery.etcd.io stores a member that registers past the size; etcd's client then sees its
    index past the size in the listing and reports the cluster full itself (and can fall back to a
    proxy).  Past EXTRA_MEMBERS more, registrations are refused: the URL is a public secret."""
    for i in range(3 + EXTRA_MEMBERS):
        assert register(web, token, f"{i + 1:x}", f"m{i}=http://h{i}:2380").status_code == 201
    listing = web.get(base(token)).json()["node"]["nodes"]
    assert [n["createdIndex"] for n in listing] == list(range(2, 5 + EXTRA_MEMBERS))
    r = register(web, token, "ff", "m99=http://h99:2380")
    assert r.status_code == 412 and r.json()["message"] == "cluster is full" and r.json()["errorCode"] == 101
    assert token.members.count() == 3 + EXTRA_MEMBERS


def test_wait_returns_a_past_event_at_once(web, token):
    register(web, token, "aa", "m1=http://a:2380")
    # createSelf: Watcher(selfKey, AfterIndex: createdIndex-1) → waitIndex=createdIndex
    r = web.get(f"{base(token)}/aa?wait=true&waitIndex=2&recursive=false")
    assert r.status_code == 200
    assert r.json() == {"action": "create", "node": {"key": f"/{token.token}/aa", "value": "m1=http://a:2380",
                                                      "modifiedIndex": 2, "createdIndex": 2}}


def test_wait_with_recursive_holds_until_the_next_member(settings, token):
    settings.DISCOVERY_WAIT = 60  # ended by the registration below, not by the clock
    register(Client(), token, "aa", "m1=http://a:2380")
    result = {}

    def waiter():
        try:
            result["r"] = Client().get(f"{base(token)}?wait=true&waitIndex=3&recursive=true")
        finally:
            connection.close()  # this thread's, or the test database cannot be dropped

    th = threading.Thread(target=waiter)
    th.start()
    deadline = time.monotonic() + 30
    while not discovery._watches.get(token.token):  # until the server holds the watch (observed, not slept)
        assert th.is_alive() and time.monotonic() < deadline, result
        time.sleep(0.01)
    assert "r" not in result  # still waiting: nothing at index 3 yet
    register(Client(), token, "bb", "m2=http://b:2380")
    th.join(60)
    # Only a watch that waited can answer with bb: it did not exist when the watch began.
    assert result["r"].status_code == 200
    assert result["r"].json()["node"]["key"] == f"/{token.token}/bb"
    assert result["r"].json()["node"]["modifiedIndex"] == 3


def test_wait_times_out_with_an_empty_body_so_the_client_asks_again(web, token, settings):
    settings.DISCOVERY_WAIT = 0.3
    r = web.get(f"{base(token)}?wait=true&waitIndex=2&recursive=true")
    assert r.status_code == 200 and r.content == b"" and r["X-Etcd-Index"] == "1"


def test_unknown_tokens_and_keys_are_v2_not_found(web, token):
    r = web.get("/discovery/" + "0" * 32 + "/_config/size")
    assert r.status_code == 404 and r.json()["errorCode"] == 100
    assert web.get(f"{base(token)}/nobody").json()["message"] == "Key not found"
    assert web.get("/discovery/not-a-token").status_code == 404


def test_config_keys_are_read_only(web, token):
    r = web.put(f"{base(token)}/_config/size", "value=9", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 403 and r.json()["errorCode"] == 107
    assert DiscoveryToken.objects.get(pk=token.pk).size == 3


def test_delete_frees_a_members_slot(web, token):
    register(web, token, "aa", "m1=http://a:2380")
    r = web.delete(f"{base(token)}/aa")
    assert r.status_code == 200 and r.json()["action"] == "delete" and r.json()["prevNode"]["value"] == "m1=http://a:2380"
    assert token.members.count() == 0


def test_four_members_registering_at_once_get_distinct_indexes(token):
    out = []

    def go(i):
        try:
            out.append(register(Client(), token, f"{i + 10:x}", f"m{i}=http://h{i}:2380"))
        finally:
            connection.close()  # this thread's, or the test database cannot be dropped

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert sorted(r.status_code for r in out) == [201, 201, 201, 201]  # the fourth is told "full" by etcd
    assert sorted(json.loads(r.content)["node"]["createdIndex"] for r in out) == [2, 3, 4, 5]
