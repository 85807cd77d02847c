"""Locks pages: per-group panel with holders (host, since, stuck), admin unlock / set-max, the
FleetLock URL shown once, scoping (outsider 404, viewer 403), and a clear word without etcd."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from .conftest import semaphore, smith

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


def login(persona):
    client = Client()
    client.force_login(persona.user)
    return client


@pytest.fixture
def held(acme, web_group, make_host, etcd_endpoints):
    host = make_host(web_group, "web-1")
    smith(acme, "web").lock(host.machine_id)
    return host


def test_the_locks_page_shows_each_group_its_holders_and_hostnames(alice, held, web_group):
    r = login(alice).get("/locks/")
    assert r.status_code == 200
    html = r.content.decode()
    assert f'id="lock-{web_group.pk}"' in html and "0 of 1 free" in html
    assert f'data-holder="{held.machine_id}"' in html and "web-1" in html
    assert 'data-live="lock host event"' in html


def test_the_group_page_loads_the_lock_panel_and_the_fleetlock_url(alice, held, web_group):
    client = login(alice)
    assert f'hx-get="/groups/{web_group.pk}/locks/"' in client.get(f"/groups/{web_group.pk}/").content.decode()
    client.post("/locks/fleetlock/rotate")
    panel = client.get(f"/groups/{web_group.pk}/locks/", **HTMX).content.decode()
    assert panel.startswith("<section") and "/fleetlock/fwl_" in panel and "data-fleetlock-url" in panel


def test_the_outsider_gets_404(charlie, held, web_group):
    client = login(charlie)
    assert client.get(f"/groups/{web_group.pk}/locks/").status_code == 404
    assert client.post(f"/groups/{web_group.pk}/locks/unlock", {"holder": held.machine_id}).status_code == 404
    assert client.post(f"/groups/{web_group.pk}/locks/set-max", {"max": 3}).status_code == 404
    assert held.machine_id not in client.get("/locks/").content.decode()


def test_a_viewer_sees_the_lock_but_may_not_unlock(bob, held, acme, web_group):
    client = login(bob)
    page = client.get(f"/groups/{web_group.pk}/locks/").content.decode()
    assert held.machine_id in page and "Unlock</button>" not in page
    assert client.post(f"/groups/{web_group.pk}/locks/unlock", {"holder": held.machine_id}).status_code == 403
    assert client.post(f"/groups/{web_group.pk}/locks/set-max", {"max": 3}).status_code == 403
    assert client.post("/locks/fleetlock/rotate").status_code == 403
    assert semaphore(acme, "web")["holders"] == [held.machine_id]


def test_an_admin_unlocks_a_stuck_host_and_frees_the_slot(alice, held, acme, web_group):
    from fleetweb.fleet.models import Event, Host

    Host.objects.filter(pk=held.pk).update(online=False, last_seen=timezone.now() - timedelta(hours=2))
    client = login(alice)
    page = client.get(f"/groups/{web_group.pk}/locks/").content.decode()
    assert "data-stuck" in page and "stuck</span>" in page
    r = client.post(f"/groups/{web_group.pk}/locks/unlock", {"holder": held.machine_id}, **HTMX)
    assert r.status_code == 200
    assert "1 of 1 free" in r.content.decode() and "Nobody holds the lock" in r.content.decode()
    assert semaphore(acme, "web") == {"semaphore": 1, "max": 1, "holders": []}
    assert Event.objects.filter(kind="lock_unlocked", actor="alice").exists()


def test_set_max_from_the_page(alice, held, acme, web_group):
    r = login(alice).post(f"/groups/{web_group.pk}/locks/set-max", {"max": "abc"}, **HTMX)
    assert r.status_code == 409 and "whole number" in r.content.decode()
    assert semaphore(acme, "web")["max"] == 1


def test_the_fleetlock_secret_is_shown_once(alice, acme, etcd_endpoints):
    client = login(alice)
    r = client.post("/locks/fleetlock/rotate")
    html = r.content.decode()
    assert r.status_code == 200 and "will not be shown again" in html
    secret = html.split("/fleetlock/")[1].split("/")[0]
    assert secret.startswith("fwl_")
    again = client.get("/locks/").content.decode()
    assert secret not in again and f"fwl_{secret.split('_')[1]}_…" in again


def test_without_etcd_the_pages_say_so(alice, web_group, no_etcd):
    client = login(alice)
    html = client.get("/locks/").content.decode()
    assert 'id="etcd-not-configured"' in html and "ETCD_ENDPOINTS" in html
    r = client.post(f"/groups/{web_group.pk}/locks/unlock", {"holder": "x"}, **HTMX)
    assert r.status_code == 409 and "etcd is not configured" in r.content.decode()
