"""How HTTP requests are dispatched under ASGI: the middleware chain runs as one sync call, and the
views that wait (the discovery watch) are served without it, so they never hold the sync thread."""
from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from fleetweb import asgi
from fleetweb.cloudconfig import discovery
from fleetweb.cloudconfig.discovery_models import DiscoveryToken
from tests.communicators import HttpCommunicator

pytestmark = pytest.mark.django_db(transaction=True)


async def get(path: str) -> tuple[int, dict, bytes]:
    comm = HttpCommunicator(asgi.application, "GET", path, headers=[(b"host", b"127.0.0.1")])
    response = await comm.get_response()
    return response["status"], {k.decode().lower(): v.decode() for k, v in response["headers"]}, response["body"]


@pytest.mark.parametrize("path, waiting", [
    ("/discovery/" + "a" * 32, True),
    ("/discovery/" + "0f" * 16 + "/_config/size", True),
    ("/discovery/new", False),
    ("/discovery/tokens/", False),
    ("/discovery/" + "a" * 31, False),
    ("/api/v1/hosts/", False),
])
def test_only_the_discovery_keys_bypass_the_middleware_chain(path, waiting):
    assert bool(asgi.WAITING_VIEW_PATHS.match(path)) is waiting


def test_the_chain_is_one_awaitable_around_the_sync_middleware():
    assert asyncio.iscoroutinefunction(asgi.django_asgi_app._middleware_chain)
    assert asyncio.iscoroutinefunction(asgi.waiting_view_app._middleware_chain)


async def test_a_page_goes_through_the_middleware_and_a_discovery_key_does_not():
    status, headers, _ = await get("/login/")
    assert status == 200 and headers["x-frame-options"] == "DENY"   # XFrameOptionsMiddleware ran
    token = await sync_to_async(DiscoveryToken.objects.issue)(3)
    status, headers, body = await get(f"/discovery/{token.token}/_config/size")
    assert status == 200 and b'"value": "3"' in body
    assert "x-frame-options" not in headers and headers["x-etcd-index"] == "1"


async def test_a_watch_that_times_out_answers_empty_while_other_requests_are_served(settings):
    settings.DISCOVERY_WAIT = 10  # the page below must be served well within it, even on a busy host
    token = await sync_to_async(DiscoveryToken.objects.issue)(3)
    watch = asyncio.ensure_future(get(f"/discovery/{token.token}?wait=true&recursive=true&waitIndex=2"))
    for _ in range(3000):  # until the server holds the watch (observed, not slept)
        if discovery._watches.get(token.token):
            break
        await asyncio.sleep(0.01)
    assert discovery._watches.get(token.token) == 1 and not watch.done()
    status, _, _ = await get("/login/")             # served while the watch is open
    assert status == 200 and not watch.done()
    status, _, body = await watch
    assert status == 200 and body == b""            # etcd's client asks again with the same index
