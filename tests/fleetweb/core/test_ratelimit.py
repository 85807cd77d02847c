"""Rate limits fail open when their storage (Redis) is unreachable: served uncounted, a warning
logged, never a 500 (found by the Redis fault drill: every API request answered 500)."""
from __future__ import annotations

import logging
import socket

import pytest
from rest_framework.test import APIClient

from fleetweb.core import ratelimit


@pytest.fixture
def redis_down(settings):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    ratelimit.limiter.cache_clear()
    ratelimit._warned_at = 0.0
    yield
    ratelimit.limiter.cache_clear()


@pytest.mark.django_db
def test_an_api_request_is_served_while_the_rate_limit_storage_is_down(redis_down, alice, web_group, caplog):
    with caplog.at_level(logging.WARNING, logger="fleetweb.core.ratelimit"):
        r = alice.get(f"/api/v1/groups/{web_group.pk}/")
        assert r.status_code == 200, r.content
        bad = APIClient().get("/api/v1/groups/", HTTP_AUTHORIZATION="Bearer fwk_000000000000_nope")
        assert bad.status_code == 401
    assert any("rate limits are not counted" in rec.getMessage() for rec in caplog.records)
