"""Dashboard pages of the core app: login, overview, activity."""
from __future__ import annotations

import pytest
from django.test import Client

from fleetweb.fleet.models import Event
from tests.conftest import PASSWORD


def login(persona):
    client = Client()
    client.force_login(persona.user)
    return client


@pytest.mark.parametrize("url", ["/", "/activity/"])
def test_it_requires_login(db, url):
    response = Client().get(url)
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_login_page_renders_and_logs_in(alice):
    client = Client()
    assert "Log in" in client.get("/login/").content.decode()
    response = client.post("/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200
    assert client.post("/logout/").status_code == 302
    assert client.get("/").status_code == 302


def test_overview_counts_hosts(alice, web_group, make_host):
    make_host(web_group, hostname="web-1", version="100.0.0")
    make_host(web_group, hostname="web-2", version="101.0.0")
    page = login(alice).get("/").content.decode()
    assert "Acme" in page and "<svg" in page and "100.0.0" in page and "101.0.0" in page
    assert 'data-live="host group event"' in page and "/static/js/live.js" in page
    assert "/api/docs/" in page


def test_overview_shows_only_own_organization(charlie, web_group, make_host):
    make_host(web_group, hostname="acme-secret-host")
    page = login(charlie).get("/").content.decode()
    assert "acme-secret-host" not in page and "Other" in page


def test_activity_filters_by_kind(alice, web_group, make_host):
    make_host(web_group, hostname="web-1")
    Event.objects.record(web_group.organization_id, "channel_changed", "Group web switched", group=web_group)
    client = login(alice)
    page = client.get("/activity/").content.decode()
    assert "registered in group web" in page and "Group web switched" in page
    only = client.get("/activity/", {"kind": "channel_changed"}).content.decode()
    assert "Group web switched" in only and "registered in group web" not in only
    fragment = client.get("/activity/", {"kind": "channel_changed"}, HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in fragment and 'id="activity"' in fragment


def test_a_user_without_organization_is_refused(db):
    from django.contrib.auth.models import User

    client = Client()
    client.force_login(User.objects.create_user("nobody", password=PASSWORD))
    assert client.get("/").status_code == 403
