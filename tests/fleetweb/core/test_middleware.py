"""The middleware chain stays async under ASGI, and the static files middleware still serves files."""
from __future__ import annotations

import asyncio

import pytest
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.test import AsyncRequestFactory
from django.utils.module_loading import import_string


def test_every_middleware_is_async_capable():
    # One sync-only middleware and Django runs every request, async long polls included, in the one
    # shared sync thread (tests/e2e/test_discovery_cluster.py shows what that did to the discovery).
    sync_only = [path for path in settings.MIDDLEWARE
                 if not getattr(import_string(path), "async_capable", False)]
    assert sync_only == [], f"make these async capable (MiddlewareMixin or both modes): {sync_only}"


def test_the_asgi_handler_builds_an_async_chain():
    handler = ASGIHandler()
    assert asyncio.iscoroutinefunction(handler._middleware_chain)


@pytest.mark.django_db
def test_a_static_file_is_served_whole_through_the_async_chain():
    handler = ASGIHandler()
    request = AsyncRequestFactory().get("/static/css/fleetweb.css")
    response = asyncio.run(handler._middleware_chain(request))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/css")
    assert response.is_async  # read off the event loop, without Django's sync-iterator warning

    async def body():
        return b"".join([chunk async for chunk in response.streaming_content])

    assert asyncio.run(body()) == (settings.BASE_DIR / "static" / "css" / "fleetweb.css").read_bytes()
