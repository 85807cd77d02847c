"""Discovery cannot be abused (issue 9 §4): each attack fails on main before this fix."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from fleetweb.cloudconfig.discovery_models import DiscoveryToken
from fleetweb.cloudconfig.tasks import delete_expired_discovery_tokens

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_session_cookie_alone_creates_no_token_by_get(operator):
    """CSRF by GET: a link or an <img> in a page the victim opens must not create a token."""
    web = Client()
    web.force_login(operator.user)
    r = web.get("/discovery/new?size=3")
    assert r.status_code == 403 and r.json()["code"] == "session_not_accepted"
    assert not DiscoveryToken.objects.exists()


def test_a_session_cookie_is_refused_even_when_anonymous_creation_is_on(operator, settings):
    settings.FLEET_DISCOVERY_ANONYMOUS = True
    web = Client()
    web.force_login(operator.user)
    assert web.get("/discovery/new").json()["code"] == "session_not_accepted"
    assert not DiscoveryToken.objects.exists()


def test_anonymous_creation_is_refused_by_default():
    r = Client().get("/discovery/new?size=3")
    assert r.status_code == 401 and r.json()["code"] == "anonymous_disabled"
    assert not DiscoveryToken.objects.exists()


def test_an_operators_api_key_still_creates_a_token_by_get(operator, acme, settings):
    r = Client().get("/discovery/new?size=3", HTTP_AUTHORIZATION=f"Bearer {operator.api_key}")
    assert r.status_code == 200 and r.content.decode().startswith(f"{settings.FLEET_PUBLIC_URL}/discovery/")
    assert DiscoveryToken.objects.get().organization == acme


def test_a_bad_api_key_is_refused_with_a_code():
    r = Client().get("/discovery/new", HTTP_AUTHORIZATION="Bearer fwk_nope")
    assert r.status_code == 401 and r.json()["code"] == "invalid_api_key"
    assert not DiscoveryToken.objects.exists()


def test_anonymous_creation_is_rate_limited_per_address(settings):
    settings.FLEET_DISCOVERY_ANONYMOUS = True
    settings.FLEET_DISCOVERY_ANONYMOUS_RATE = "2/hour"
    web = Client(REMOTE_ADDR=f"2001:db8::{uuid.uuid4().hex[:4]}")  # fresh in a shared Redis
    assert [web.get("/discovery/new").status_code for _ in range(2)] == [200, 200]
    r = web.get("/discovery/new")
    assert r.status_code == 429 and r.json()["code"] == "rate_limited"
    assert DiscoveryToken.objects.count() == 2


def test_anonymous_tokens_are_capped(settings):
    settings.FLEET_DISCOVERY_ANONYMOUS = True
    settings.FLEET_DISCOVERY_ANONYMOUS_MAX_TOKENS = 1
    DiscoveryToken.objects.issue(3)
    r = Client(REMOTE_ADDR="192.0.2.78").get("/discovery/new")
    assert r.status_code == 429 and r.json()["code"] == "anonymous_tokens_exhausted"
    assert DiscoveryToken.objects.count() == 1


def test_an_unused_token_expires_and_is_deleted(settings):
    token = DiscoveryToken.objects.issue(3)
    web = Client()
    assert web.get(f"/discovery/{token.token}/_config/size").status_code == 200
    DiscoveryToken.objects.filter(pk=token.pk).update(
        last_used=timezone.now() - timedelta(seconds=settings.FLEET_DISCOVERY_TOKEN_TTL + 1))
    assert web.get(f"/discovery/{token.token}/_config/size").status_code == 404
    r = web.put(f"/discovery/{token.token}/abc?prevExist=false", "value=a=http://10.0.0.1:2380",
                content_type="application/x-www-form-urlencoded")
    assert r.status_code == 404 and not token.members.exists()
    fresh = DiscoveryToken.objects.issue(3)
    assert delete_expired_discovery_tokens() >= 1
    assert list(DiscoveryToken.objects.all()) == [fresh]


def test_a_use_keeps_a_token_alive(settings):
    token = DiscoveryToken.objects.issue(3)
    old = timezone.now() - timedelta(seconds=settings.FLEET_DISCOVERY_TOKEN_TTL - 120)
    DiscoveryToken.objects.filter(pk=token.pk).update(last_used=old)
    assert Client().get(f"/discovery/{token.token}").status_code == 200
    token.refresh_from_db()
    assert token.last_used > old


def test_the_beat_schedule_deletes_expired_tokens(settings):
    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "fleetweb.cloudconfig.tasks.delete_expired_discovery_tokens" in tasks
