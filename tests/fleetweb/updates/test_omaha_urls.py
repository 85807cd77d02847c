"""Issue 9 item 1: Omaha cannot be spoofed.  Per-group Omaha URLs (``/v1/update/<secret>/``),
the anonymous ``/v1/update/`` that writes nothing, agent-managed hosts, bounded requests, and the
``/api/v1/groups/{id}/omaha-url`` API.  The attack tests fail on main before this fix."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from django.test import Client

from fleetweb.fleet.models import Event, Group, Host, HostCredential
from fleetweb.updates import omaha
from fleetweb.updates.choices import HostUpdateState
from fleetweb.updates.models import OmahaUrl, RolloutHost

from .test_omaha import APPID, request_xml, stable


def post(url, body):
    return Client().post(url, data=body, content_type="text/xml")


def snapshot():
    """Everything an Omaha request could write."""
    return (list(Host.objects.order_by("pk").values_list("pk", "group_id", "version", "boot_id", "channel",
                                                       "last_seen", "online", "update_status")),
            Event.objects.count(), list(RolloutHost.objects.order_by("pk").values_list("pk", "state")))


def app_of(response):
    assert response.status_code == 200, response.content
    [app] = ET.fromstring(response.content).findall("app")
    return app


def omaha_host(make_host, group, **kw):
    host = make_host(group, **kw)
    HostCredential.objects.filter(host=host).delete()
    return host


@pytest.fixture
def web_url(web_group):
    return OmahaUrl.url(OmahaUrl.objects.rotate(web_group, actor="alice")[1])


@pytest.fixture
def granted(acme, web_group, online_hosts, make_release):
    """An Omaha-managed host of the web group granted 101.0.0."""
    [host] = online_hosts(1)
    HostCredential.objects.filter(host=host).delete()
    stable(acme).publish(make_release("101.0.0"), "alice")
    assert RolloutHost.objects.get(host=host).state == HostUpdateState.GRANTED
    return host


def path(url):
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


# --- attacks ---------------------------------------------------------------------------------

def test_the_anonymous_endpoint_cannot_spoof_a_known_host(granted):
    before = snapshot()
    app = app_of(post("/v1/update/", request_xml(granted.machine_id, "9.9.9", track="evil",
                                                 events=[(3, 0, 7)])))
    assert app.get("status") == "ok" and app.find("event").get("status") == "ok"
    assert app.find("updatecheck").get("status") == "noupdate"  # no signed payload URL leaks
    assert snapshot() == before
    assert RolloutHost.objects.get(host=granted).state == HostUpdateState.GRANTED


def test_a_refused_omaha_url_is_not_logged(web_group, caplog):
    secret = OmahaUrl.objects.rotate(web_group)[1]
    OmahaUrl.objects.revoke(web_group)
    with caplog.at_level("DEBUG"):
        assert post(f"/v1/update/{secret}/", request_xml("e" * 32)).status_code == 404
    assert secret not in caplog.text


def test_the_anonymous_endpoint_enrolls_nothing(web_group):
    before = snapshot()
    app_of(post("/v1/update/", request_xml("a" * 32)))
    assert snapshot() == before


def test_one_organizations_url_cannot_touch_another_organizations_host(web_url, other_group, make_host):
    theirs = omaha_host(make_host, other_group)
    before = Event.objects.filter(organization=other_group.organization).count()
    post(path(web_url), request_xml(theirs.machine_id, "9.9.9", events=[(3, 0, 7)]))
    theirs_after = Host.objects.get(pk=theirs.pk)
    assert (theirs_after.version, theirs_after.last_seen, theirs_after.group_id) == (
        theirs.version, None, other_group.pk)
    assert Event.objects.filter(organization=other_group.organization).count() == before


def test_a_known_host_of_another_group_is_not_moved(acme, web_group, make_host):
    db_group = Group.objects.create(organization=acme, name="db", slug="db", channel=acme.channels.get(name="beta"))
    host = omaha_host(make_host, db_group)
    db_secret = OmahaUrl.objects.rotate(db_group)[1]
    web_secret = OmahaUrl.objects.rotate(web_group)[1]
    post(f"/v1/update/{web_secret}/", request_xml(host.machine_id, "100.1.0"))
    host.refresh_from_db()
    assert host.group_id == db_group.pk and host.version == "100.1.0"
    post(f"/v1/update/{db_secret}/", request_xml(host.machine_id, "100.2.0"))
    host.refresh_from_db()
    assert host.group_id == db_group.pk and host.version == "100.2.0"


def test_an_agent_managed_host_gets_noupdate_and_nothing_changes(acme, web_group, online_hosts, web_url,
                                                                  make_release):
    [host] = online_hosts(1)  # holds an agent credential
    stable(acme).publish(make_release("101.0.0"), "alice")
    before = snapshot()
    app = app_of(post(path(web_url), request_xml(host.machine_id, "9.9.9", events=[(3, 0, 44)])))
    assert app.find("updatecheck").get("status") == "noupdate"
    assert snapshot() == before
    assert RolloutHost.objects.get(host=host).state == HostUpdateState.GRANTED


def test_a_rotated_or_revoked_url_is_refused_and_writes_nothing(web_group, granted):
    old = OmahaUrl.objects.rotate(web_group)[1]
    new = OmahaUrl.objects.rotate(web_group)[1]
    before = snapshot()
    r = post(f"/v1/update/{old}/", request_xml(granted.machine_id, events=[(3, 0, 7)]))
    assert r.status_code == 404
    assert snapshot() == before
    OmahaUrl.objects.revoke(web_group)
    before = snapshot()
    r = post(f"/v1/update/{new}/", request_xml(granted.machine_id, events=[(3, 0, 7)]))
    assert r.status_code == 404
    assert post("/v1/update/fwo_000000000000_guess/", request_xml(granted.machine_id)).status_code == 404
    assert snapshot() == before


def test_too_many_apps_or_events_are_refused_and_nothing_is_written(web_url, granted):
    one = request_xml(granted.machine_id, events=[(3, 0, 7)]).decode()
    app = one[one.index("<app "):one.index("</request>")]
    many_apps = one.replace(app, app * (omaha.MAX_APPS + 1)).encode()
    before = snapshot()
    r = post(path(web_url), many_apps)
    assert r.status_code == 400 and b"too many <app>" in r.content
    r = post(path(web_url), request_xml(granted.machine_id, events=[(13, 1, None)] * (omaha.MAX_EVENTS + 1)))
    assert r.status_code == 400 and b"too many <event>" in r.content
    assert snapshot() == before
    assert app_of(post(path(web_url), one.replace(app, app * 1).encode())).get("status") == "ok"


def test_an_unknown_appid_is_answered_error_unknown_application_and_writes_nothing(web_url, granted):
    before = snapshot()
    body = request_xml(granted.machine_id, events=[(3, 0, 7)]).replace(APPID.encode(), b"{not-the-os}")
    app = app_of(post(path(web_url), body))
    assert app.get("status") == "error-unknownApplication" and list(app) == []
    body = request_xml("b" * 32).replace(APPID.encode(), b"{not-the-os}")
    assert app_of(post(path(web_url), body)).get("status") == "error-unknownApplication"
    assert snapshot() == before


# --- enrollment on the group's URL -----------------------------------------------------------

def test_the_first_request_enrolls_an_omaha_managed_host_in_the_group(web_group, web_url):
    app = app_of(post(path(web_url), request_xml("c" * 32, "100.3.0", track="stable")))
    assert app.find("updatecheck").get("status") == "noupdate"
    host = Host.objects.get(machine_id="c" * 32)
    assert (host.organization_id, host.group_id, host.version, host.channel, host.online) == (
        web_group.organization_id, web_group.pk, "100.3.0", "stable", True)
    assert not host.credentials.exists()
    assert Event.objects.filter(host=host, kind="registered").count() == 1
    app_of(post(path(web_url.rstrip("/")), request_xml("c" * 32, "100.4.0")))  # SERVER= without the slash
    assert Host.objects.filter(machine_id="c" * 32).count() == 1
    assert Host.objects.get(machine_id="c" * 32).version == "100.4.0"


# --- API -------------------------------------------------------------------------------------

def api(group):
    return f"/api/v1/groups/{group.pk}/omaha-url"


def test_an_admin_issues_rotates_and_revokes_the_url(alice, web_group):
    assert alice.get(api(web_group)).status_code == 404
    r = alice.post(api(web_group))
    assert r.status_code == 201
    body = r.json()
    assert set(body) == {"url", "update_conf"} and "/v1/update/fwo_" in body["url"]
    assert body["update_conf"] == f"SERVER={body['url']}\nGROUP=stable\n"
    shown = alice.get(api(web_group)).json()
    assert shown["url"].startswith("fwo_") and body["url"].split("/")[-2] not in str(shown)
    assert app_of(post(path(body["url"]), request_xml("d" * 32))).get("status") == "ok"
    rotated = alice.post(api(web_group)).json()["url"]
    assert post(path(body["url"]), request_xml("d" * 32)).status_code == 404
    assert alice.delete(api(web_group)).status_code == 204
    assert post(path(rotated), request_xml("d" * 32)).status_code == 404
    assert alice.delete(api(web_group)).status_code == 404
    kinds = list(Event.objects.filter(group=web_group).order_by("id").values_list("kind", flat=True))
    assert [k for k in kinds if k.startswith("omaha_url")] == [
        "omaha_url_rotated", "omaha_url_rotated", "omaha_url_revoked"]


def test_only_an_admin_of_the_organization_may_issue_or_revoke(operator, bob, charlie, web_group):
    before = OmahaUrl.objects.count()
    assert operator.post(api(web_group)).status_code == 403
    assert bob.post(api(web_group)).status_code == 403
    assert charlie.post(api(web_group)).status_code == 404  # another organization's group
    assert charlie.delete(api(web_group)).status_code == 404
    assert charlie.get(api(web_group)).status_code == 404
    assert OmahaUrl.objects.count() == before


# --- dashboard -------------------------------------------------------------------------------

def test_the_group_page_issues_the_update_conf_lines_once_and_revokes(alice, bob, web_group):
    web = Client()
    web.force_login(alice.user)
    page = f"/groups/{web_group.pk}/omaha-url"
    assert "omaha-url" in web.get(f"/groups/{web_group.pk}/").content.decode()
    assert "No Omaha URL" in web.get(page, HTTP_HX_REQUEST="true").content.decode()
    r = web.post(page, {"action": "rotate"}, HTTP_HX_REQUEST="true")
    [url] = re.findall(r"SERVER=(\S+/v1/update/fwo_\S+/)", r.content.decode())
    assert f"SERVER={url}\nGROUP=stable" in r.content.decode()
    assert app_of(post(path(url), request_xml("f" * 32))).get("status") == "ok"
    shown = web.get(page).content.decode()
    assert url not in shown and OmahaUrl.objects.get(group=web_group).masked in shown
    viewer = Client()
    viewer.force_login(bob.user)
    assert viewer.post(page, {"action": "revoke"}).status_code == 403
    web.post(page, {"action": "revoke"})
    assert post(path(url), request_xml("f" * 32)).status_code == 404
