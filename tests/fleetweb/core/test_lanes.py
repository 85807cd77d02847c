"""The concurrency model (fleetweb/core/lanes.py): views run on a bounded set of request lanes,
agents on their own thread; slow requests never stall an agent, and lanes keep their database
connections."""
from __future__ import annotations

import asyncio
import json
import re
from urllib.parse import urlencode

import pytest
from asgiref.sync import sync_to_async
from channels.testing import HttpCommunicator, WebsocketCommunicator
from django.test import override_settings

from fleetweb import asgi
from fleetweb.core import hashers
from tests.conftest import partitions

from . import lanes_urls

pytestmark = [pytest.mark.django_db(transaction=True),
              pytest.mark.urls("tests.fleetweb.core.lanes_urls")]


@pytest.fixture(autouse=True)
def released():
    lanes_urls.release.clear()
    yield
    lanes_urls.release.set()


def get(path):
    return HttpCommunicator(asgi.application, "GET", path, headers=[(b"host", b"localhost")])


async def wait_entered(n):
    for _ in range(n):
        assert await asyncio.to_thread(lanes_urls.entered.acquire, True, 60), "a blocked view never started"


async def test_an_agent_is_answered_while_every_request_lane_is_held_by_a_slow_request(web_group, make_host):
    host = await sync_to_async(make_host)(web_group, hostname="web-1")
    size = asgi.request_lanes.size
    slow = [asyncio.ensure_future(get("/_test/blocked").get_response(timeout=120))
            for _ in range(size + 2)]  # every lane held, two more requests queued behind them
    await wait_entered(size)
    assert asgi.request_lanes.busy == size

    agent = WebsocketCommunicator(asgi.application, "/ws/agent/",
                                  headers=[(b"authorization", f"Bearer {host.credential}".encode())])
    assert (await agent.connect(timeout=60))[0]
    await agent.send_to(text_data=json.dumps({
        "type": "hello", "machine_id": "m", "boot_id": "b", "hostname": "web-1", "agent_version": "0.1.0",
        "version": "100.0.0", "partitions": partitions(), "update_status": "IDLE"}))
    policy = json.loads(await agent.receive_from(timeout=60))
    assert policy["type"] == "policy"
    # The agent was answered while no slow request had finished.
    assert not any(task.done() for task in slow)

    lanes_urls.release.set()
    responses = await asyncio.gather(*slow)
    assert [r["status"] for r in responses] == [200] * (size + 2)
    await wait_entered(2)  # the queued two ran once lanes were free
    await agent.disconnect()


@override_settings(DEBUG=False)
async def test_a_lane_keeps_its_database_session_across_requests():
    seen = set()
    for _ in range(3 * asgi.request_lanes.size):
        response = await get("/_test/session").get_response(timeout=60)
        assert response["status"] == 200
        body = json.loads(response["body"])
        assert body["thread"].startswith("fleet-request-")
        seen.add((body["thread"], body["backend"]))
    # One session per lane thread, however many requests: none opened per request.
    threads = {thread for thread, _ in seen}
    assert len(seen) == len(threads) <= asgi.request_lanes.size


def _cut(raw, backend):
    """Cut a lane's connection the way a database does (PostgreSQL: the server ends the session)."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("select pg_terminate_backend(%s)", [backend])
    else:
        raw.close()


@pytest.mark.parametrize("method,status", [("GET", 200), ("POST", 503)])
async def test_a_request_whose_database_connection_is_cut_is_not_answered_500(method, status):
    lanes_urls.cut.update(calls=0, raw=None, backend=None)
    request = asyncio.ensure_future(HttpCommunicator(asgi.application, method, "/_test/cut",
                                                     headers=[(b"host", b"localhost")]).get_response(timeout=120))
    await wait_entered(1)
    await sync_to_async(_cut)(lanes_urls.cut["raw"], lanes_urls.cut["backend"])
    lanes_urls.release.set()
    response = await request
    assert response["status"] == status, response["body"][:300]
    if method == "GET":  # read again on a fresh connection
        body = json.loads(response["body"])
        assert body["calls"] == 2
    else:  # a write may or may not have been saved: the client is told to retry, not shown a 500
        assert {k.lower(): v for k, v in response["headers"]}[b"retry-after"] == b"1"
        assert b"database connection was lost" in response["body"]
    # The lane serves the next request on a fresh connection.
    after = await get("/_test/session").get_response(timeout=60)
    assert after["status"] == 200


def _login_form(body: bytes, headers) -> tuple[str, str]:
    """The CSRF cookie and form token of the login page, as a browser would send them back."""
    cookie = next(v.decode() for k, v in headers if k.lower() == b"set-cookie" and v.startswith(b"csrftoken="))
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1).decode()
    return cookie.split(";", 1)[0], token


async def test_sign_ins_wait_for_a_hash_slot_without_holding_request_lanes(settings):
    """A login flood: sign-ins wait for the hash slot on the event loop, the API and pages keep their
    lanes, and past FLEET_LOGIN_QUEUE a sign-in is refused at once.  Before the login gate every
    waiting sign-in held a lane, and with more of them than lanes nothing else was answered."""
    size = asgi.request_lanes.size
    settings.FLEET_PASSWORD_HASH_CONCURRENCY = 1
    settings.FLEET_LOGIN_QUEUE = size + 2
    settings.AXES_FAILURE_LIMIT = 100  # the lockout is tested elsewhere: here every attempt reaches the hash
    page = await HttpCommunicator(asgi.application, "GET", "/login/",
                                  headers=[(b"host", b"localhost")]).get_response(timeout=60)
    cookie, token = _login_form(page["body"], page["headers"])

    def sign_in():
        form = urlencode({"csrfmiddlewaretoken": token, "username": "nobody", "password": "wrong-passphrase"})
        return HttpCommunicator(asgi.application, "POST", "/login/", body=form.encode(), headers=[
            (b"host", b"localhost"), (b"cookie", cookie.encode()),
            (b"content-type", b"application/x-www-form-urlencoded")]).get_response(timeout=120)

    slot = hashers.hash_slots()
    assert slot.acquire(timeout=60)  # the hash slot is busy: the first sign-in to get in waits on it
    try:
        admitted = [asyncio.ensure_future(sign_in()) for _ in range(size + 3)]
        deadline = asyncio.get_running_loop().time() + 60
        while asgi.login_gate.waiting < size + 2:  # one holds the gate, the others queue before it
            assert asyncio.get_running_loop().time() < deadline, f"{asgi.login_gate.waiting} sign-ins queued"
            await asyncio.sleep(0.01)
        assert asgi.request_lanes.busy <= 1

        refused = await sign_in()
        assert refused["status"] == 429
        assert {k.lower(): v for k, v in refused["headers"]}[b"retry-after"] == b"5"
        assert b"Too many sign-in attempts" in refused["body"]

        answered = await get("/_test/session").get_response(timeout=60)  # a lane is free for it
        assert answered["status"] == 200
        assert not any(task.done() for task in admitted)
    finally:
        slot.release()
    responses = await asyncio.gather(*admitted)
    assert [r["status"] for r in responses] == [200] * (size + 3)  # the form again, with its error
    assert all(b"Please enter a correct" in r["body"] for r in responses)
