"""Dashboard pages of the fleet app: hosts, groups (channel switch toggle, reboot settings), tokens."""
from __future__ import annotations

import pytest
from django.test import Client

from agent import signing
from fleetweb.fleet.models import EnrollmentToken, Event, Group
from fleetweb.updates.models import SigningKey

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def web(alice, web_group):
    client = Client()
    client.force_login(alice.user)
    return client


def login(persona):
    client = Client()
    client.force_login(persona.user)
    return client


# --- access -------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["/hosts/", "/groups/", "/tokens/"])
def test_it_requires_login(db, url):
    response = Client().get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


def test_it_hides_acme_objects_from_the_outsider(charlie, web_group, make_host):
    host = make_host(web_group, hostname="web-1")
    token, _ = EnrollmentToken.objects.issue(web_group, name="t")
    client = login(charlie)
    assert client.get(f"/hosts/{host.pk}/").status_code == 404
    assert client.get(f"/groups/{web_group.pk}/").status_code == 404
    assert client.post(f"/groups/{web_group.pk}/channel", {"channel": "beta"}).status_code == 404
    assert client.post(f"/groups/{web_group.pk}/settings", {"reboot_strategy": "off",
                                                           "max_concurrent_reboots": 1}).status_code == 404
    assert client.post(f"/tokens/{token.pk}/revoke").status_code == 404
    assert "web-1" not in client.get("/hosts/").content.decode()
    web_group.refresh_from_db()
    assert web_group.channel.name == "stable"
    assert EnrollmentToken.objects.get(pk=token.pk).revoked_at is None


# --- hosts --------------------------------------------------------------------------------------

def test_it_lists_hosts_with_filters(web, web_group, make_host):
    make_host(web_group, hostname="web-1", version="100.0.0")
    make_host(web_group, hostname="web-2", version="200.0.0")
    page = web.get("/hosts/").content.decode()
    assert "web-1" in page and "web-2" in page and 'data-live="host event"' in page
    filtered = web.get("/hosts/", {"version": "200.0.0"}).content.decode()
    assert "web-2" in filtered and "web-1" not in filtered
    assert "web-1" in web.get("/hosts/", {"q": "WEB-1"}).content.decode()
    assert "web-1" in web.get("/hosts/", {"channel": "stable", "group": web_group.pk}).content.decode()
    assert "web-1" not in web.get("/hosts/", {"channel": "beta"}).content.decode()
    assert "web-1" not in web.get("/hosts/", {"online": "true"}).content.decode()


def test_it_answers_htmx_with_the_table_fragment(web, web_group, make_host):
    make_host(web_group, hostname="web-1")
    response = web.get("/hosts/", **HTMX)
    body = response.content.decode()
    assert body.lstrip().startswith("<section id=\"host-table\"") or 'id="host-table"' in body[:400]
    assert "<html" not in body and "web-1" in body


def _count_queries(client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        assert client.get("/hosts/").status_code == 200
    return len(ctx.captured_queries)


def test_host_list_query_count_does_not_grow_with_hosts(web, web_group, make_host, django_assert_num_queries):
    for i in range(10):
        make_host(web_group, hostname=f"a-{i:03d}")
    ten = _count_queries(web)
    other = Group.objects.create(organization=web_group.organization, name="db", slug="db",
                                 channel=web_group.organization.channels.get(name="beta"))
    for i in range(90):
        make_host(other if i % 2 else web_group, hostname=f"b-{i:03d}", version=f"{100 + i % 3}.0.0")
    with django_assert_num_queries(ten):
        page = web.get("/hosts/")
    assert page.content.decode().count("data-host=") == 50


def test_host_detail_draws_the_disk(web, web_group, make_host):
    host = make_host(web_group, hostname="web-1")
    page = web.get(f"/hosts/{host.pk}/").content.decode()
    for label in ("EFI-SYSTEM", "BIOS-BOOT", "USR-A", "USR-B", "OEM", "OEM-CONFIG", "ROOT"):
        assert label in page
    assert "disk-part--active" in page and "100.0.0" in page and host.machine_id in page


# --- groups -------------------------------------------------------------------------------------

def test_group_pages_render(web, web_group, make_host):
    make_host(web_group, hostname="web-1")
    assert "web" in web.get("/groups/").content.decode()
    page = web.get(f"/groups/{web_group.pk}/").content.decode()
    assert 'value="beta"' in page and "web-1" in page and "pending" in page


def test_a_viewer_cannot_switch_the_channel(bob, web_group):
    client = login(bob)
    page = client.get(f"/groups/{web_group.pk}/").content.decode()
    assert "disabled" in page
    assert client.post(f"/groups/{web_group.pk}/channel", {"channel": "beta"}).status_code == 403
    assert client.post(f"/groups/{web_group.pk}/settings", {"reboot_strategy": "off",
                                                           "max_concurrent_reboots": 1}).status_code == 403
    web_group.refresh_from_db()
    assert web_group.channel.name == "stable" and web_group.reboot_strategy == "best-effort"
    assert not Event.objects.filter(kind="channel_changed").exists()


def test_an_operator_switches_the_channel(operator, web_group, make_host):
    make_host(web_group, hostname="web-1")
    client = login(operator)
    response = client.post(f"/groups/{web_group.pk}/channel", {"channel": "beta"}, **HTMX)
    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="group-policy"' in body and 'hx-swap-oob="true"' in body
    web_group.refresh_from_db()
    assert web_group.channel.name == "beta" and web_group.policy_revision == 2
    event = Event.objects.get(kind="channel_changed")
    assert event.group_id == web_group.pk and event.actor == "olga"


def test_without_htmx_a_switch_redirects_back(web, web_group):
    response = web.post(f"/groups/{web_group.pk}/channel", {"channel": "alpha"})
    assert response.status_code == 302 and response["Location"] == f"/groups/{web_group.pk}/"
    web_group.refresh_from_db()
    assert web_group.channel.name == "alpha"


def test_an_unknown_channel_is_refused(web, web_group):
    response = web.post(f"/groups/{web_group.pk}/channel", {"channel": "nightly"}, **HTMX)
    assert response.status_code == 422
    assert "Unknown channel" in response.content.decode()
    web_group.refresh_from_db()
    assert web_group.channel.name == "stable" and web_group.policy_revision == 1
    assert not Event.objects.filter(kind="channel_changed").exists()


def test_reboot_settings_are_saved(web, web_group):
    response = web.post(f"/groups/{web_group.pk}/settings", {
        "reboot_strategy": "etcd-lock", "max_concurrent_reboots": 2,
        "reboot_window_start": "sat 04:00", "reboot_window_length": "2h", "lock_stuck_after": 600}, **HTMX)
    assert response.status_code == 200 and "Saved" in response.content.decode()
    web_group.refresh_from_db()
    assert (web_group.reboot_strategy, web_group.max_concurrent_reboots, web_group.reboot_window_start,
            web_group.reboot_window_length, web_group.lock_stuck_after) == ("etcd-lock", 2, "sat 04:00", "2h", 600)
    assert Event.objects.filter(kind="strategy_changed").exists()


@pytest.mark.parametrize("start,length", [("25:00", "1h"), ("sat 14:00", "1j"), ("sat", "1h"), ("04:00", "")])
def test_an_invalid_reboot_window_is_shown_and_nothing_saved(web, web_group, start, length):
    for headers in (HTMX, {}):
        response = web.post(f"/groups/{web_group.pk}/settings", {
            "reboot_strategy": "off", "max_concurrent_reboots": 3, "lock_stuck_after": 900,
            "reboot_window_start": start, "reboot_window_length": length}, **headers)
        assert response.status_code == 422
        assert 'class="error"' in response.content.decode()
    web_group.refresh_from_db()
    assert (web_group.reboot_strategy, web_group.max_concurrent_reboots, web_group.reboot_window_start,
            web_group.policy_revision) == ("best-effort", 1, "", 1)
    assert not Event.objects.exists()


def test_a_lock_stuck_after_under_10_seconds_is_refused(web, web_group):
    response = web.post(f"/groups/{web_group.pk}/settings", {
        "reboot_strategy": "off", "max_concurrent_reboots": 1, "lock_stuck_after": 5}, **HTMX)
    assert response.status_code == 422 and "Must be at least 10 seconds." in response.content.decode()
    web_group.refresh_from_db()
    assert web_group.lock_stuck_after == 900 and web_group.reboot_strategy == "best-effort"


def test_an_operator_creates_a_group(operator, acme):
    client = login(operator)
    response = client.post("/groups/", {"name": "Edge nodes", "channel": "alpha"})
    group = Group.objects.get(organization=acme, slug="edge-nodes")
    assert response.status_code == 302 and response["Location"] == f"/groups/{group.pk}/"
    assert group.channel.name == "alpha"
    again = client.post("/groups/", {"name": "Edge nodes", "channel": "alpha"})
    assert again.status_code == 422 and "already exists" in again.content.decode()


# --- tokens -------------------------------------------------------------------------------------

def test_a_new_token_secret_is_shown_once(web, web_group, settings):
    response = web.post("/tokens/", {"group": web_group.pk, "name": "rack 4", "expires_in_hours": 2,
                                     "max_uses": 5})
    assert response.status_code == 200
    token = EnrollmentToken.objects.get(name="rack 4")
    body = response.content.decode()
    secret = body.split("--token ")[1].split(" ")[0].strip()
    assert secret.startswith(f"fwe_{token.lookup}_")
    key_hash = signing.fingerprint(SigningKey.objects.active(web_group.organization).public_key)
    assert f"agent register --server {settings.FLEET_PUBLIC_URL} --token {secret} --key-hash {key_hash}" in body
    assert token.max_uses == 5 and token.expires_at is not None
    later = web.get("/tokens/").content.decode()
    assert "rack 4" in later and secret not in later
    assert response["Cache-Control"].startswith("max-age=0") or "no-cache" in response["Cache-Control"]


def test_the_token_form_refuses_more_uses_than_a_token_can_count(web, web_group):
    response = web.post("/tokens/", {"group": web_group.pk, "name": "huge", "max_uses": 45688885835})
    assert response.status_code == 422
    assert not EnrollmentToken.objects.filter(name="huge").exists()


def test_token_states_and_revoke(web, bob, web_group):
    token, _ = EnrollmentToken.objects.issue(web_group, name="old")
    assert login(bob).post(f"/tokens/{token.pk}/revoke").status_code == 403
    assert "Revoke" not in login(bob).get("/tokens/").content.decode()
    assert web.post(f"/tokens/{token.pk}/revoke").status_code == 302
    token.refresh_from_db()
    assert token.state == "revoked"
    assert "revoked" in web.get("/tokens/").content.decode()


def test_a_viewer_cannot_create_tokens(bob, web_group):
    assert login(bob).post("/tokens/", {"group": web_group.pk, "name": "x"}).status_code == 403
    assert not EnrollmentToken.objects.filter(name="x").exists()


def test_token_form_cannot_use_another_orgs_group(web, other_group):
    response = web.post("/tokens/", {"group": other_group.pk, "name": "sneaky"})
    assert response.status_code == 422
    assert not EnrollmentToken.objects.filter(name="sneaky").exists()
