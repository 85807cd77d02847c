"""Dashboard pages of the updates app: releases (upload), channels (publish, promote, override,
rollback), rollouts (live page, pause/resume/abort) and a group's rollout policy."""
from __future__ import annotations

import hashlib
import io
import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from fleetweb.fleet.models import Event, Group, Host
from fleetweb.updates.choices import HostUpdateState, RolloutStatus
from fleetweb.updates.models import ChannelRelease, Release, Rollout

HTMX = {"HTTP_HX_REQUEST": "true"}
PAYLOAD = b"usr-image " * 4096


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.FLEET_MEDIA_ROOT = tmp_path / "media"
    return settings.FLEET_MEDIA_ROOT


def login(persona):
    client = Client()
    client.force_login(persona.user)
    return client


@pytest.fixture
def web(alice, web_group):
    return login(alice)


def release(org, version, payload=PAYLOAD):
    return Release.objects.create_from_upload(org, version, io.BytesIO(payload + version.encode()), actor="test")


def online(host):
    Host.objects.filter(pk=host.pk).update(online=True, connection_id=uuid.uuid4())
    return host


def stored_files(media):
    return [p for p in media.rglob("*") if p.is_file()] if media.exists() else []


# --- access -------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["/releases/", "/channels/", "/rollouts/"])
def test_it_requires_login(db, url):
    response = Client().get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


def test_it_hides_acme_releases_and_rollouts_from_the_outsider(charlie, acme, web_group, make_host):
    online(make_host(web_group, hostname="web-1"))
    r = release(acme, "200.0.0")
    (rollout,) = acme.channels.get(name="stable").publish(r, "alice")
    client = login(charlie)
    assert client.get(f"/releases/{r.pk}/").status_code == 404
    assert client.get(f"/rollouts/{rollout.pk}/").status_code == 404
    assert client.post(f"/rollouts/{rollout.pk}/pause").status_code == 404
    assert client.post(f"/groups/{web_group.pk}/rollout-policy", {"max_in_flight": 5}).status_code == 404
    assert client.post("/channels/beta/publish", {"release": r.pk}).status_code == 422  # not his release
    assert "200.0.0" not in client.get("/releases/").content.decode()
    assert "200.0.0" not in client.get("/rollouts/").content.decode()
    assert "200.0.0" not in client.get("/channels/").content.decode()
    assert acme.channels.get(name="beta").current_release is None
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.RUNNING


def test_a_viewer_cannot_publish_promote_roll_back_or_pause(bob, acme, web_group, make_host):
    online(make_host(web_group, hostname="web-1"))
    old, new = release(acme, "150.0.0"), release(acme, "200.0.0")
    acme.channels.get(name="alpha").publish(new, "alice")
    stable = acme.channels.get(name="stable")
    stable.publish(old, "alice")
    stable.publish(new, "alice")
    rollout = Rollout.objects.get(group=web_group, release=new)
    client = login(bob)
    page = client.get("/channels/").content.decode()
    assert "need the operator role" in page
    assert client.post("/channels/beta/publish", {"release": new.pk}).status_code == 403
    assert client.post("/channels/beta/promote").status_code == 403
    assert client.post("/channels/stable/rollback", {"release": old.pk, "confirm": "yes"}).status_code == 403
    assert client.post(f"/rollouts/{rollout.pk}/pause").status_code == 403
    assert client.post(f"/groups/{web_group.pk}/rollout-policy", {"max_in_flight": 9}).status_code == 403
    upload = SimpleUploadedFile("usr.img", PAYLOAD)
    assert client.post("/releases/", {"version": "300.0.0", "payload": upload}).status_code == 403
    assert acme.channels.get(name="beta").current_release is None
    assert acme.channels.get(name="stable").current_release == new
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.RUNNING
    assert Group.objects.get(pk=web_group.pk).max_in_flight == 1
    assert not Release.objects.filter(version="300.0.0").exists()


# --- releases -----------------------------------------------------------------------------------

def test_it_uploads_a_release_and_shows_it(operator, acme, web_group, media):
    client = login(operator)
    body = PAYLOAD + b"ok"
    response = client.post("/releases/", {"version": "200.0.0", "payload": SimpleUploadedFile("usr.img", body),
                                          "sha256": hashlib.sha256(body).hexdigest(), "notes": "kernel 6.6"})
    r = Release.objects.get(organization=acme, version="200.0.0")
    assert response.status_code == 302 and response["Location"] == f"/releases/{r.pk}/"
    assert r.size == len(body) and r.created_by == "olga"
    assert Event.objects.filter(kind="release_created", actor="olga").exists()
    page = client.get("/releases/").content.decode()
    assert "200.0.0" in page and r.sha256[:12] in page and r.signing_key.key_id in page
    detail = client.get(f"/releases/{r.pk}/").content.decode()
    assert r.sha256 in detail and "Not on any channel yet" in detail


def test_a_wrong_declared_sha256_is_shown_and_nothing_is_stored(web, acme, media):
    response = web.post("/releases/", {"version": "200.0.0", "payload": SimpleUploadedFile("usr.img", PAYLOAD),
                                       "sha256": "0" * 64})
    assert response.status_code == 422
    page = response.content.decode()
    assert "does not match the payload" in page and 'class="field field--error"' in page
    assert not Release.objects.filter(organization=acme).exists()
    assert stored_files(media) == []


def test_a_bad_version_and_a_duplicate_are_refused_inline(web, acme):
    release(acme, "200.0.0")
    bad = web.post("/releases/", {"version": "v2", "payload": SimpleUploadedFile("usr.img", PAYLOAD)})
    assert bad.status_code == 422 and "is not a version" in bad.content.decode()
    dup = web.post("/releases/", {"version": "200.0.0", "payload": SimpleUploadedFile("usr.img", PAYLOAD)})
    assert dup.status_code == 409 and "already exists" in dup.content.decode()
    assert Release.objects.filter(organization=acme).count() == 1


def test_the_release_page_shows_its_channel_history_and_rollouts(web, acme, web_group, make_host):
    online(make_host(web_group, hostname="web-1"))
    r = release(acme, "200.0.0")
    acme.channels.get(name="stable").publish(r, "alice")
    page = web.get(f"/releases/{r.pk}/").content.decode()
    assert "Published" in page and "stable" in page and "web" in page and "/rollouts/" in page


# --- channels -----------------------------------------------------------------------------------

def test_the_channels_page_draws_the_three_channels_in_order(web, acme):
    page = web.get("/channels/").content.decode()
    assert page.index('id="channel-alpha"') < page.index('id="channel-beta"') < page.index('id="channel-stable"')
    assert 'data-live="rollout event"' in page


def test_publishing_starts_a_rollout_and_grants_online_hosts(operator, acme, web_group, make_host):
    host = online(make_host(web_group, hostname="web-1"))
    r = release(acme, "200.0.0")
    client = login(operator)
    response = client.post("/channels/stable/publish", {"release": r.pk}, **HTMX)
    assert response.status_code == 200
    rollout = Rollout.objects.get(group=web_group, release=r)
    body = response.content.decode()
    assert f"/rollouts/{rollout.pk}/" in body and 'data-current="200.0.0"' in body
    assert rollout.hosts.get(host=host).state == HostUpdateState.GRANTED  # Celery runs eager in tests
    assert ChannelRelease.objects.get(channel__name="stable", release=r).actor == "olga"


def test_publishing_an_older_release_is_refused_in_place(web, acme, web_group):
    old, new = release(acme, "150.0.0"), release(acme, "200.0.0")
    stable = acme.channels.get(name="stable")
    stable.publish(new, "alice")
    response = web.post("/channels/stable/publish", {"release": old.pk}, **HTMX)
    assert response.status_code == 409
    assert "use an explicit rollback" in response.content.decode()
    stable.refresh_from_db()
    assert stable.current_release == new


def test_promotion_is_refused_after_a_halted_rollout_and_an_admin_override_is_logged(
        alice, operator, acme, web_group, make_host):
    online(make_host(web_group, hostname="web-1"))
    canary = Group.objects.create(organization=acme, name="canary", slug="canary",
                                  channel=acme.channels.get(name="beta"))
    online(make_host(canary, hostname="canary-1"))
    r = release(acme, "200.0.0")
    acme.channels.get(name="alpha").publish(r, "alice")
    (rollout,) = acme.channels.get(name="beta").publish(r, "alice")
    assert rollout.halt("1 of 1 hosts failed")

    page = login(operator).get("/channels/").content.decode()
    assert "promotion is refused" in page and "Only an admin can override" in page
    refused = login(operator).post("/channels/stable/promote", **HTMX)
    assert refused.status_code == 409
    assert "an admin must override" in refused.content.decode()
    assert login(operator).post("/channels/stable/promote", {"override": "on"}).status_code == 403
    assert acme.channels.get(name="stable").current_release is None

    client = login(alice)
    assert 'name="override"' in client.get("/channels/").content.decode()
    response = client.post("/channels/stable/promote", {"override": "on"}, **HTMX)
    assert response.status_code == 200
    assert acme.channels.get(name="stable").current_release == r
    assert ChannelRelease.objects.get(channel__name="stable", release=r).override is True
    event = Event.objects.get(kind="release_promote", data__channel="stable")
    assert event.actor == "alice" and event.data["override"] is True and "override" in event.message


def test_promotion_without_a_failed_rollout_needs_no_override(operator, acme, web_group):
    r = release(acme, "200.0.0")
    acme.channels.get(name="beta").publish(r, "alice")
    response = login(operator).post("/channels/stable/promote")
    assert response.status_code == 302 and response["Location"] == "/channels/"
    assert acme.channels.get(name="stable").current_release == r


def test_rolling_back_asks_for_confirmation_first(web, acme, web_group, make_host):
    online(make_host(web_group, hostname="web-1", version="150.0.0"))
    old, new = release(acme, "150.0.0"), release(acme, "200.0.0")
    stable = acme.channels.get(name="stable")
    stable.publish(old, "alice")
    stable.publish(new, "alice")
    page = web.get("/channels/").content.decode()
    assert 'data-rollback="stable"' in page
    ask = web.post("/channels/stable/rollback", {"release": old.pk}, **HTMX)
    assert ask.status_code == 200
    assert "install the lower version" in ask.content.decode() and 'name="confirm"' in ask.content.decode()
    stable.refresh_from_db()
    assert stable.current_release == new
    done = web.post("/channels/stable/rollback", {"release": old.pk, "confirm": "yes"}, **HTMX)
    assert done.status_code == 200
    stable.refresh_from_db()
    assert stable.current_release == old
    assert Rollout.objects.filter(group=web_group, release=old, allow_downgrade=True).exists()


def test_rolling_back_to_a_release_the_channel_never_had_is_refused(web, acme, web_group):
    a, b = release(acme, "150.0.0"), release(acme, "200.0.0")
    acme.channels.get(name="stable").publish(b, "alice")
    response = web.post("/channels/stable/rollback", {"release": a.pk, "confirm": "yes"}, **HTMX)
    assert response.status_code == 422
    assert acme.channels.get(name="stable").current_release == b


# --- rollouts -----------------------------------------------------------------------------------

@pytest.fixture
def rollout(acme, web_group, make_host):
    for i in range(3):
        online(make_host(web_group, hostname=f"web-{i}"))
    r = release(acme, "200.0.0")
    (rollout,) = acme.channels.get(name="stable").publish(r, "alice")
    return rollout


def test_the_rollout_page_shows_counts_hosts_chart_and_policy(web, rollout, web_group):
    rh = rollout.hosts.order_by("host__hostname").first()
    rh.finish(HostUpdateState.FAILED, "sha256 mismatch")
    Event.objects.record(web_group.organization_id, "booted_new_version", "booted", group=web_group,
                         host_id=rollout.hosts.last().host_id, data={"version": "200.0.0"})
    page = web.get(f"/rollouts/{rollout.pk}/").content.decode()
    assert 'data-live="rollout host event"' in page and f'data-live-group="{web_group.pk}"' in page
    assert 'data-state="failed"' in page and "sha256 mismatch" in page
    assert "progress-failed" in page and 'class="vchart"' in page and 'data-version="200.0.0"' in page
    assert 'data-version="100.0.0"' in page and "Rollout policy" in page
    assert f"/groups/{web_group.pk}/#group-rollout-policy" in page
    fragment = web.get(f"/rollouts/{rollout.pk}/", **HTMX).content.decode()
    assert fragment.lstrip().startswith('<div id="rollout"') and "<html" not in fragment
    listing = web.get("/rollouts/").content.decode()
    assert f"/rollouts/{rollout.pk}/" in listing and 'data-status="running"' in listing


def test_pause_resume_and_abort_change_the_status_and_refuse_twice(operator, rollout):
    client = login(operator)
    paused = client.post(f"/rollouts/{rollout.pk}/pause", **HTMX)
    assert paused.status_code == 200 and 'data-status="paused"' in paused.content.decode()
    again = client.post(f"/rollouts/{rollout.pk}/pause", **HTMX)
    assert again.status_code == 409 and "Cannot pause a rollout that is paused" in again.content.decode()
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.PAUSED

    assert client.post(f"/rollouts/{rollout.pk}/resume", **HTMX).status_code == 200
    assert client.post(f"/rollouts/{rollout.pk}/resume", **HTMX).status_code == 409
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.RUNNING

    aborted = client.post(f"/rollouts/{rollout.pk}/abort")
    assert aborted.status_code == 302 and aborted["Location"] == f"/rollouts/{rollout.pk}/"
    assert client.post(f"/rollouts/{rollout.pk}/abort").status_code == 409
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.ABORTED
    assert [e.kind for e in Event.objects.filter(data__rollout=rollout.pk, actor="olga").order_by("id")] == [
        "rollout_paused", "rollout_running", "rollout_aborted"]
    assert client.post(f"/rollouts/{rollout.pk}/explode").status_code == 404


def test_rollout_list_pages_use_a_fixed_number_of_queries(web, acme, web_group, make_host,
                                                        django_assert_max_num_queries):
    for i in range(3):
        online(make_host(web_group, hostname=f"web-{i}"))
    stable = acme.channels.get(name="stable")
    for v in ("200.0.0", "201.0.0", "202.0.0", "203.0.0"):
        stable.publish(release(acme, v), "alice")
    with django_assert_max_num_queries(8):
        assert web.get("/rollouts/").status_code == 200


# --- group rollout policy -----------------------------------------------------------------------

def test_the_group_page_has_the_rollout_policy_form(web, web_group):
    page = web.get(f"/groups/{web_group.pk}/").content.decode()
    assert 'id="group-rollout-policy"' in page and 'name="max_in_flight"' in page


def test_saving_the_rollout_policy(operator, web_group):
    data = {"updates_enabled": "on", "max_in_flight": 5, "max_updates_per_period": 10, "update_period": 600,
            "update_timeout": 900, "safe_mode": "on", "failure_threshold": 20, "failure_threshold_percent": "on"}
    response = login(operator).post(f"/groups/{web_group.pk}/rollout-policy", data, **HTMX)
    assert response.status_code == 200 and "Saved" in response.content.decode()
    g = Group.objects.get(pk=web_group.pk)
    assert (g.max_in_flight, g.max_updates_per_period, g.update_period, g.update_timeout, g.safe_mode,
            g.failure_threshold, g.failure_threshold_percent) == (5, 10, 600, 900, True, 20, True)
    assert Event.objects.filter(kind="group_changed", group=web_group, actor="olga").exists()


def test_an_invalid_rollout_policy_is_shown_inline_and_nothing_is_saved(web, web_group):
    data = {"updates_enabled": "on", "max_in_flight": 0, "max_updates_per_period": 0, "update_period": 600,
            "update_timeout": 5, "failure_threshold": 150, "failure_threshold_percent": "on"}
    response = web.post(f"/groups/{web_group.pk}/rollout-policy", data, **HTMX)
    assert response.status_code == 422
    body = response.content.decode()
    assert "Must be at least 1." in body and "at least 10 seconds" in body and "between 1 and 100" in body
    full = web.post(f"/groups/{web_group.pk}/rollout-policy", data)
    assert full.status_code == 422 and "<html" in full.content.decode()
    g = Group.objects.get(pk=web_group.pk)
    assert (g.max_in_flight, g.update_timeout, g.failure_threshold) == (1, 3600, 1)
    assert not Event.objects.filter(kind="group_changed").exists()


# --- host update timeline -----------------------------------------------------------------------

def test_the_host_page_shows_the_update_timeline_and_the_ab_flip(web, rollout, web_group):
    from tests.conftest import partitions

    rh = rollout.hosts.order_by("host__hostname").first()
    host = rh.host
    Host.objects.filter(pk=host.pk).update(partitions=partitions(active="USR-B", version_b="200.0.0"))
    org = web_group.organization_id
    Event.objects.record(org, "update_installed", "installed", host_id=host.pk, group=web_group,
                         data={"version": "200.0.0", "partition": "USR-B", "rollout": rollout.pk})
    Event.objects.record(org, "booted_new_version", "booted", host_id=host.pk, group=web_group,
                         data={"version": "200.0.0", "partition": "USR-B", "previous_version": "100.0.0",
                               "rollout": rollout.pk})
    page = web.get(f"/hosts/{host.pk}/").content.decode()
    assert 'id="host-update-timeline"' in page
    assert page.index("Granted") < page.index("written to USR-B") < page.index("Rebooted into new version")
    assert "USR-A → USR-B" in page and f"rollout #{rollout.pk}" in page
