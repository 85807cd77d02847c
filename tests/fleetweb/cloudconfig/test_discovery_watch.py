"""An open discovery watch costs no database query per poll (issue 9, item 4): it is woken through
the hub when its token changes, with only a slow recheck (FLEET_DISCOVERY_WATCH_RECHECK) behind it.
Before this fix a watch re-read the token every 0.25 s."""
from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async

from fleetweb import asgi
from fleetweb.cloudconfig import discovery
from fleetweb.cloudconfig.discovery_models import DiscoveryToken
from fleetweb.core.hub import hub
from tests.communicators import HttpCommunicator

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def loads(monkeypatch):
    """How many times a watch read its token from the database."""
    calls = []
    real = discovery._load

    def counting(token_str):
        calls.append(token_str)
        return real(token_str)

    monkeypatch.setattr(discovery, "_load", counting)
    return calls


async def watch(token, wait_index=2):
    comm = HttpCommunicator(asgi.application, "GET",
                            f"/discovery/{token.token}?wait=true&recursive=true&waitIndex={wait_index}",
                            headers=[(b"host", b"127.0.0.1")])
    return await comm.get_response()


async def until_waiting(token, n):
    """Until N watches of the token wait for a wake-up: each has read the token and joined the hub
    (observed, not slept).  A change made before a watch joined would wake nobody."""
    deadline = asyncio.get_running_loop().time() + 60
    while len(hub._local.get(token.watch_key, ())) < n:
        assert asyncio.get_running_loop().time() < deadline, "the watches never started waiting"
        await asyncio.sleep(0.01)


async def test_a_watch_that_sees_no_change_reads_the_token_once(settings, loads):
    settings.DISCOVERY_WAIT = 1
    settings.FLEET_DISCOVERY_WATCH_RECHECK = 60
    token = await sync_to_async(DiscoveryToken.objects.issue)(3)
    response = await watch(token)
    assert response["status"] == 200 and response["body"] == b""  # timed out: the client asks again
    assert len(loads) == 1


async def test_a_registration_wakes_the_watch_which_reads_the_token_once_more(settings, loads):
    settings.DISCOVERY_WAIT = 30
    settings.FLEET_DISCOVERY_WATCH_RECHECK = 60
    token = await sync_to_async(DiscoveryToken.objects.issue)(3)
    pending = asyncio.ensure_future(watch(token))
    await until_waiting(token, 1)
    assert discovery._watches.get(token.token) == 1 and len(loads) == 1
    await sync_to_async(token.register)("abc", "abc=http://10.0.0.1:2380")
    response = await pending
    assert response["status"] == 200
    assert json.loads(response["body"])["node"]["key"].endswith("/abc")
    assert len(loads) == 2  # the first read, and one after the wake-up


async def open_watches(token, n):
    """Start N watches and return once the server holds all of them (observed, not slept)."""
    tasks = [asyncio.ensure_future(watch(token)) for _ in range(n)]
    await until_waiting(token, n)
    assert sum(discovery._watches.values()) == n
    return tasks


async def test_watches_are_bounded_per_token(settings):
    settings.FLEET_DISCOVERY_WATCHES_PER_TOKEN = 2
    settings.DISCOVERY_WAIT = 30
    token = await sync_to_async(DiscoveryToken.objects.issue)(3)
    other = await sync_to_async(DiscoveryToken.objects.issue)(3)
    tasks = await open_watches(token, 2)
    refused = await watch(token)
    assert refused["status"] == 429
    assert json.loads(refused["body"])["cause"] == "too many open watches on this token"
    await sync_to_async(other.register)("abc", "abc=http://10.0.0.1:2380")
    assert (await watch(other, wait_index=2))["status"] == 200  # another token is not affected
    await sync_to_async(token.register)("abc", "abc=http://10.0.0.1:2380")
    assert [(await t)["status"] for t in tasks] == [200, 200]
    assert not discovery._watches


async def test_watches_are_bounded_per_process(settings):
    settings.FLEET_DISCOVERY_WATCHES_PER_PROCESS = 2
    settings.DISCOVERY_WAIT = 30
    token = await sync_to_async(DiscoveryToken.objects.issue)(3)
    other = await sync_to_async(DiscoveryToken.objects.issue)(3)
    tasks = await open_watches(token, 2)
    refused = await watch(other)
    assert refused["status"] == 503
    assert json.loads(refused["body"])["cause"] == "too many open watches on this server"
    await sync_to_async(token.register)("abc", "abc=http://10.0.0.1:2380")
    assert [(await t)["status"] for t in tasks] == [200, 200]
