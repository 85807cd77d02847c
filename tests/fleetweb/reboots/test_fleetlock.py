"""FleetLock server: Zincati's exact requests (pretty-printed JSON, no Content-Type, the
fleet-lock-protocol header), errors as {kind, value}, recursive lock, steady-state by a non-holder."""
from __future__ import annotations

import json

import pytest
from django.test import Client

from .conftest import semaphore, smith

pytestmark = pytest.mark.django_db


def zincati_body(node_id: str, group: str) -> bytes:
    # What Zincati sends: serde_json::to_string_pretty of {"client_params": {"id", "group"}}.
    return json.dumps({"client_params": {"id": node_id, "group": group}}, indent=2).encode()


@pytest.fixture
def fleetlock(acme, etcd_endpoints):
    from fleetweb.reboots.models import FleetLockSecret

    _, secret = FleetLockSecret.objects.rotate(acme, actor="alice")
    client = Client()

    def post(op: str, node_id="a1b2c3", group="web", headers=None, body=None, secret_=None):
        headers = {"fleet-lock-protocol": "true"} if headers is None else headers
        return client.generic("POST", f"/fleetlock/{secret_ or secret}/v1/{op}",
                              data=zincati_body(node_id, group) if body is None else body,
                              content_type="", **{f"HTTP_{k.upper().replace('-', '_')}": v
                                                  for k, v in headers.items()})

    post.secret = secret
    return post


def test_it_locks_and_unlocks_with_zincatis_exact_request(fleetlock, acme, web_group):
    r = fleetlock("pre-reboot")
    assert r.status_code == 200, r.content
    assert semaphore(acme, "web") == {"semaphore": 0, "max": 1, "holders": ["a1b2c3"]}
    r = fleetlock("steady-state")
    assert r.status_code == 200
    assert semaphore(acme, "web") == {"semaphore": 1, "max": 1, "holders": []}


def test_it_needs_no_content_type(fleetlock, acme):
    r = fleetlock("pre-reboot", group="nodes")
    assert r.status_code == 200
    assert semaphore(acme, "nodes")["holders"] == ["a1b2c3"]


def test_the_lock_is_recursive_per_id(fleetlock, acme):
    assert fleetlock("pre-reboot", node_id="n1", group="db").status_code == 200
    assert fleetlock("pre-reboot", node_id="n1", group="db").status_code == 200
    assert semaphore(acme, "db") == {"semaphore": 0, "max": 1, "holders": ["n1"]}
    r = fleetlock("pre-reboot", node_id="n2", group="db")
    assert r.status_code == 409
    assert r.json()["kind"] == "lock_unavailable" and set(r.json()) == {"kind", "value"}


def test_steady_state_by_a_non_holder_is_200_and_changes_nothing(fleetlock, acme):
    fleetlock("pre-reboot", node_id="n1", group="db")
    r = fleetlock("steady-state", node_id="someone-else", group="db")
    assert r.status_code == 200
    assert semaphore(acme, "db") == {"semaphore": 0, "max": 1, "holders": ["n1"]}


def test_a_missing_header_is_refused(fleetlock, acme):
    r = fleetlock("pre-reboot", headers={})
    assert r.status_code == 400
    assert r.json()["kind"] == "missing_header"
    r = fleetlock("pre-reboot", headers={"fleet-lock-protocol": "false"})
    assert r.json()["kind"] == "missing_header"
    assert semaphore(acme, "web") is None


@pytest.mark.parametrize("group", ["prod/database", "", "web group", "wéb", 5, None])
def test_a_bad_group_is_refused(fleetlock, group):
    r = fleetlock("pre-reboot", body=json.dumps({"client_params": {"id": "n1", "group": group}}).encode())
    assert r.status_code == 400
    assert r.json()["kind"] == "bad_group"


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"client_params": 1}',
                                  b'{"client_params": {"group": "web"}}', b'{"client_params": {"id": "", "group": "web"}}'])
def test_a_malformed_body_is_bad_request(fleetlock, body):
    r = fleetlock("pre-reboot", body=body)
    assert r.status_code == 400
    assert r.json()["kind"] == "bad_request"


def test_an_unknown_or_rotated_secret_is_not_found(fleetlock, acme):
    from fleetweb.reboots.models import FleetLockSecret

    assert fleetlock("pre-reboot", secret_="fwl_000000000000_nope").json()["kind"] == "not_found"
    old = fleetlock.secret
    FleetLockSecret.objects.rotate(acme)
    r = fleetlock("pre-reboot", secret_=old)
    assert r.status_code == 404 and r.json()["kind"] == "not_found"


def test_the_secret_is_stored_hashed(fleetlock, acme):
    from fleetweb.reboots.models import FleetLockSecret

    row = FleetLockSecret.objects.get(organization=acme)
    assert fleetlock.secret not in (row.digest, row.lookup) and len(row.digest) == 64


def test_it_shares_the_agents_semaphore_and_the_groups_max(fleetlock, acme, web_group):
    web_group.max_concurrent_reboots = 2
    web_group.save()
    smith(acme, "web", 2).lock("agent-machine-id")     # an agent of the group holds one slot
    assert fleetlock("pre-reboot", node_id="zincati-1").status_code == 200
    assert fleetlock("pre-reboot", node_id="zincati-2").status_code == 409
    assert semaphore(acme, "web") == {"semaphore": 0, "max": 2, "holders": ["agent-machine-id", "zincati-1"]}


def test_it_is_logged(fleetlock, acme, web_group):
    from fleetweb.fleet.models import Event

    fleetlock("pre-reboot")
    fleetlock("steady-state")
    kinds = list(Event.objects.filter(organization=acme, group=web_group).values_list("kind", flat=True))
    assert "lock_taken" in kinds and "lock_released" in kinds


def test_without_etcd_it_says_so(acme, no_etcd):
    from fleetweb.reboots.models import FleetLockSecret

    _, secret = FleetLockSecret.objects.rotate(acme)
    r = Client().generic("POST", f"/fleetlock/{secret}/v1/pre-reboot", data=zincati_body("n", "web"),
                         content_type="", HTTP_FLEET_LOCK_PROTOCOL="true")
    assert r.status_code == 503 and r.json()["kind"] == "etcd_not_configured"


def test_get_is_not_allowed_and_says_so_in_the_protocols_error_body(fleetlock):
    r = Client().get(f"/fleetlock/{fleetlock.secret}/v1/pre-reboot", HTTP_FLEET_LOCK_PROTOCOL="true")
    assert r.status_code == 405 and r.json() == {"kind": "method_not_allowed", "value": "FleetLock requests are POST"}
    assert r["Allow"] == "POST"


@pytest.mark.parametrize("value", ["TRUE", "True", "1", "false"])
def test_the_protocol_header_must_say_exactly_true(fleetlock, acme, value):
    """As the FleetLock protocol and airlock require; ours once lowercased and trimmed it."""
    r = fleetlock("pre-reboot", group="exact", headers={"fleet-lock-protocol": value})
    assert r.status_code == 400 and r.json()["kind"] == "missing_header"
    assert semaphore(acme, "exact") is None  # nothing written
