"""The organization's FleetLock URL (issue 9, item 9): issued, rotated and revoked by an admin from
the API (``/api/v1/fleetlock-url``) and the locks page; a revoked or rotated-away URL answers 404
``not_found`` and takes no lock.  Each attack test here fails on main before this change."""
from __future__ import annotations

import json
import re

import pytest
from django.test import Client

from fleetweb.fleet.models import Event
from fleetweb.reboots.models import FleetLockSecret

from .conftest import semaphore

pytestmark = pytest.mark.django_db
API = "/api/v1/fleetlock-url"


def pre_reboot(base_url: str, node_id="n1", group="web"):
    path = "/" + base_url.split("://", 1)[1].split("/", 1)[1]
    return Client().generic("POST", path + "v1/pre-reboot",
                            data=json.dumps({"client_params": {"id": node_id, "group": group}}),
                            content_type="", HTTP_FLEET_LOCK_PROTOCOL="true")


def test_an_admin_issues_reads_rotates_and_revokes(alice, acme, etcd_endpoints):
    assert alice.get(API).status_code == 404
    r = alice.post(API)
    assert r.status_code == 201, r.content
    url = r.json()["url"]
    assert "/fleetlock/fwl_" in url and f'base_url = "{url}"' in r.json()["zincati_config"]
    info = alice.get(API).json()
    assert info["url"].endswith("_…") and url not in str(info) and "alice" in info["created_by"]
    assert pre_reboot(url).status_code == 200
    assert alice.delete(API).status_code == 204
    assert alice.delete(API).status_code == 404
    kinds = list(Event.objects.filter(organization=acme, kind__startswith="fleetlock").values_list("kind", flat=True))
    assert sorted(kinds) == ["fleetlock_revoked", "fleetlock_rotated"]


def test_a_revoked_url_is_refused_and_takes_no_lock(alice, acme, etcd_endpoints):
    url = alice.post(API).json()["url"]
    assert alice.delete(API).status_code == 204
    events = Event.objects.count()
    r = pre_reboot(url, group="revoked")
    assert r.status_code == 404 and r.json()["kind"] == "not_found"
    assert semaphore(acme, "revoked") is None  # no semaphore created, no lock taken
    assert Event.objects.count() == events


def test_a_rotated_away_url_is_refused_and_takes_no_lock(alice, acme, etcd_endpoints):
    old = alice.post(API).json()["url"]
    new = alice.post(API).json()["url"]
    r = pre_reboot(old, group="rotated")
    assert r.status_code == 404 and r.json()["kind"] == "not_found"
    assert semaphore(acme, "rotated") is None
    assert pre_reboot(new, group="rotated").status_code == 200
    assert semaphore(acme, "rotated")["holders"] == ["n1"]


def test_only_an_admin_may_rotate_or_revoke(alice, operator, bob, charlie, acme, other_org, etcd_endpoints):
    url = alice.post(API).json()["url"]
    stored = FleetLockSecret.objects.get(organization=acme)
    for who in (operator, bob):
        assert who.post(API).status_code == 403
        assert who.delete(API).status_code == 403
    assert bob.get(API).status_code == 200  # a viewer reads the masked URL
    # another organization's admin only ever reaches his own organization's URL
    assert charlie.delete(API).status_code == 404
    assert charlie.get(API).status_code == 404
    assert FleetLockSecret.objects.get(organization=acme).digest == stored.digest
    assert not FleetLockSecret.objects.filter(organization=other_org).exists()
    assert pre_reboot(url, group="kept").status_code == 200


def test_the_locks_page_revokes_for_admins_only(alice, operator, bob, acme, etcd_endpoints):
    web = Client()
    web.force_login(alice.user)
    html = web.post("/locks/fleetlock/rotate", {"action": "rotate"}).content.decode()
    [url] = re.findall(r"https?://\S+/fleetlock/fwl_[^/\s<]+/", html)
    assert "Revoke URL" in web.get("/locks/").content.decode()
    for who in (operator, bob):
        other = Client()
        other.force_login(who.user)
        assert other.post("/locks/fleetlock/rotate", {"action": "revoke"}).status_code == 403
    assert pre_reboot(url, group="page").status_code == 200
    assert web.post("/locks/fleetlock/rotate", {"action": "revoke"}).status_code == 200
    assert not FleetLockSecret.objects.filter(organization=acme).exists()
    assert pre_reboot(url, group="page2").status_code == 404
    assert semaphore(acme, "page2") is None


def test_a_refused_url_is_not_logged(alice, etcd_endpoints, caplog):
    url = alice.post(API).json()["url"]
    alice.delete(API)
    with caplog.at_level("DEBUG"):
        assert pre_reboot(url).status_code == 404
    assert url.rstrip("/").rsplit("/", 1)[1] not in caplog.text
