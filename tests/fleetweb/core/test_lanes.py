"""The concurrency model (fleetweb/core/lanes.py): views run on a bounded set of request lanes,
agents on their own thread; slow requests never stall an agent, and lanes keep their database
connections."""
from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import HttpCommunicator, WebsocketCommunicator
from django.test import override_settings

from fleetweb import asgi
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
