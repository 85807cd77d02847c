"""Secret cloud-config fetch URLs (issue 9, item 9): one active URL per organization, group and
host; rotated and revoked by an admin from the API and the dashboard; a rotated-away or revoked URL
answers 404 and writes nothing.  Each attack test here fails on main before this change."""
from __future__ import annotations

import re

import pytest
from django.test import Client

from fleetweb.cloudconfig.models import FetchUrl
from fleetweb.fleet.models import Event

pytestmark = pytest.mark.django_db

DOC = "#cloud-config\nhostname: web\n"


def api(level: str, target=None) -> str:
    if level == "organization":
        return "/api/v1/organization/cloud-config/url"
    return f"/api/v1/{level}s/{target.pk}/cloud-config/url"


def path_of(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def levels(web_group, host):
    return [("organization", None), ("group", web_group), ("host", host)]


def test_an_admin_rotates_reads_and_revokes_every_level(alice, web_group, make_host, client):
    host = make_host(web_group)
    alice.put("/api/v1/organization/cloud-config", {"content": DOC}, format="json")
    for level, target in levels(web_group, host):
        assert alice.get(api(level, target)).status_code == 404  # none yet
        r = alice.post(api(level, target))
        assert r.status_code == 201, r.content
        url = r.json()["url"]
        assert set(r.json()) == {"url"} and "/cloud-config/fwc_" in url
        served = client.get(path_of(url))
        assert served.status_code == 200 and "hostname: web" in served.content.decode()
        info = alice.get(api(level, target)).json()
        assert info["level"] == level and info["url"].endswith("_…") and url not in str(info)
        assert info["created_by"] == "alice" and info["last_used"] is not None
        assert alice.delete(api(level, target)).status_code == 204
        assert alice.delete(api(level, target)).status_code == 404
    kinds = list(Event.objects.filter(kind__startswith="cloud_config_url").values_list("kind", flat=True))
    assert kinds.count("cloud_config_url_rotated") == 3 and kinds.count("cloud_config_url_revoked") == 3


def test_a_revoked_url_is_refused_and_serves_nothing(alice, web_group, make_host, client):
    host = make_host(web_group)
    alice.put(f"/api/v1/groups/{web_group.pk}/cloud-config", {"content": DOC}, format="json")
    for level, target in levels(web_group, host):
        url = path_of(alice.post(api(level, target)).json()["url"])
        assert client.get(url).status_code == 200
        stored = FetchUrl.objects.get(lookup=url.split("_")[1])
        used = stored.last_used
        assert alice.delete(api(level, target)).status_code == 204
        r = client.get(url)
        assert r.status_code == 404 and b"hostname" not in r.content
        stored.refresh_from_db()
        assert stored.last_used == used and stored.revoked_at is not None  # nothing written


def test_a_rotated_away_url_is_refused(alice, web_group, make_host, client):
    host = make_host(web_group)
    alice.put(f"/api/v1/hosts/{host.pk}/cloud-config", {"content": DOC}, format="json")
    for level, target in levels(web_group, host):
        old = path_of(alice.post(api(level, target)).json()["url"])
        new = path_of(alice.post(api(level, target)).json()["url"])
        assert old != new
        assert client.get(old).status_code == 404
        assert client.get(new).status_code == 200
    assert FetchUrl.objects.filter(revoked_at__isnull=True).count() == 3  # one active per target


def test_only_an_admin_of_the_organization_may_rotate_or_revoke(alice, operator, bob, charlie, web_group,
                                                                make_host, client):
    host = make_host(web_group)
    for level, target in levels(web_group, host):
        url = path_of(alice.post(api(level, target)).json()["url"])
        before = list(FetchUrl.objects.values_list("pk", "revoked_at"))
        for who in (operator, bob):
            assert who.post(api(level, target)).status_code == 403
            assert who.delete(api(level, target)).status_code == 403
        if target is not None:  # another organization's group or host does not exist for charlie
            assert charlie.post(api(level, target)).status_code == 404
            assert charlie.delete(api(level, target)).status_code == 404
            assert charlie.get(api(level, target)).status_code == 404
        assert list(FetchUrl.objects.values_list("pk", "revoked_at")) == before
        assert client.get(url).status_code == 200
    # charlie's own organization URL is his organization's, not acme's
    assert charlie.delete(api("organization")).status_code == 404
    assert FetchUrl.objects.filter(revoked_at__isnull=True).count() == 3


# --- dashboard -------------------------------------------------------------------------------

def web_client(member) -> Client:
    web = Client()
    web.force_login(member.user)
    return web


def test_the_dashboard_organization_url_is_issued_not_a_500(alice, client):
    """``POST /cloud-config/organization/url`` answered 500 on main (it treated the organization
    as a host)."""
    alice.put("/api/v1/organization/cloud-config", {"content": DOC}, format="json")
    r = web_client(alice).post("/cloud-config/organization/url", {"action": "rotate"})
    assert r.status_code == 200
    [url] = re.findall(r"https?://\S+/cloud-config/fwc_[A-Za-z0-9_\-]+", r.content.decode())
    served = client.get(path_of(url))
    assert served.status_code == 200 and "hostname: web" in served.content.decode()


def test_the_dashboard_rotates_and_revokes_each_level(alice, web_group, make_host, client):
    host = make_host(web_group)
    web = web_client(alice)
    for page in ("/cloud-config/organization/", f"/cloud-config/groups/{web_group.pk}/",
                 f"/cloud-config/hosts/{host.pk}/"):
        assert "No fetch URL" in web.get(page).content.decode()
        first = re.findall(r"/cloud-config/fwc_[A-Za-z0-9_\-]+", web.post(page + "url").content.decode())[0]
        r = web.post(page + "url", {"action": "rotate"})
        second = re.findall(r"/cloud-config/fwc_[A-Za-z0-9_\-]+", r.content.decode())[0]
        assert client.get(first).status_code == 404 and client.get(second).status_code == 200
        shown = web.get(page).content.decode()
        assert second not in shown and "Revoke" in shown
        assert "revoked" in web.post(page + "url", {"action": "revoke"}).content.decode().lower()
        assert client.get(second).status_code == 404


def test_the_dashboard_refuses_viewers_and_operators(alice, operator, bob, web_group, client):
    url = path_of(alice.post(api("group", web_group)).json()["url"])
    for who in (operator, bob):
        web = web_client(who)
        page = f"/cloud-config/groups/{web_group.pk}/url"
        assert web.post(page, {"action": "rotate"}).status_code == 403
        assert web.post(page, {"action": "revoke"}).status_code == 403
        assert web.post("/cloud-config/organization/url").status_code == 403
    assert client.get(url).status_code == 200
    assert FetchUrl.objects.count() == 1


def test_a_refused_url_is_not_logged(alice, web_group, client, caplog):
    url = path_of(alice.post(api("group", web_group)).json()["url"])
    alice.delete(api("group", web_group))
    with caplog.at_level("DEBUG"):
        assert client.get(url).status_code == 404
    assert url.rsplit("/", 1)[1] not in caplog.text
