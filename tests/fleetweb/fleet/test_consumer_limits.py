"""A compromised host cannot flood the server nor forge server events (issue 9 §12).

Both attack tests fail on main before this fix (no budget, any event kind stored)."""
from __future__ import annotations

import asyncio
import json

import pytest

from agent import protocol
from fleetweb.asgi import application
from fleetweb.fleet.models import Event, Host
from fleetweb.fleet.ratelimit import FrameLimiter
from tests.communicators import WebsocketCommunicator
from tests.fleetweb.fleet.test_consumers import hello

pytestmark = pytest.mark.django_db(transaction=True)

FORGED = ["rollout_completed", "key_rotated", "token_created", "host_deleted", "credential_revoked",
          "made_up_kind"]


async def ready(host):
    comm = WebsocketCommunicator(application, "/ws/agent/",
                                 headers=[(b"authorization", f"Bearer {host.credential}".encode())])
    connected, _ = await comm.connect()
    assert connected
    await comm.send_to(text_data=json.dumps(hello()))
    assert json.loads(await comm.receive_from())["type"] == "policy"
    return comm


@pytest.fixture
def host(web_group, make_host):
    return make_host(web_group, hostname="web-1")


async def test_a_host_cannot_record_server_event_kinds(host):
    comm = await ready(host)
    before = await Event.objects.acount()
    for kind in FORGED:
        await comm.send_to(text_data=protocol.encode("event", "agent", kind=kind, data={"rollout": 1}))
        reply = json.loads(await comm.receive_from())
        assert reply == {"type": "error", "code": "forbidden_kind",
                         "message": f"agents may not record {kind!r} events"}
    assert await Event.objects.acount() == before
    assert not await Event.objects.filter(data__kind__in=FORGED).aexists()
    await comm.disconnect()


async def test_a_frame_flood_is_warned_then_closed_with_4429(host, settings):
    settings.FLEET_AGENT_FRAME_LIMITS = {"hello": "3/hour", "event": "5/hour", "status": "5/hour"}
    settings.FLEET_AGENT_RATE_TOLERANCE = 10
    comm = await ready(host)
    for seq in range(1, 40):
        await comm.send_to(text_data=protocol.encode("status", "agent", update_status="IDLE", seq=seq))
    warning = json.loads(await comm.receive_from())
    assert warning["type"] == "error" and warning["code"] == protocol.ERR_RATE_LIMITED
    assert await comm.receive_output() == {"type": "websocket.close", "code": protocol.CLOSE_RATE_LIMITED}
    assert protocol.CLOSE_RATE_LIMITED == 4429
    # What a server reports after the close; the consumer handles every frame before it, and its
    # disconnect writes what it accepted: all of the burst, none of the flood.
    await comm.disconnect()
    stored = await Host.objects.aget(pk=host.pk)
    assert stored.status_seq == 5          # only the burst got through


async def test_the_limiter_warns_once_then_closes(settings):
    settings.FLEET_AGENT_FRAME_LIMITS = {"hello": "1/hour", "event": "1/hour", "status": "1/hour"}
    settings.FLEET_AGENT_RATE_TOLERANCE = 3
    limiter = FrameLimiter()
    assert [await limiter.check("status") for _ in range(4)] == ["ok", "warn", "drop", "close"]
    assert await limiter.check("pong") == "close"  # a pong draws from the status budget
    assert await limiter.check("event") == "ok"       # budgets are per frame kind
    assert await FrameLimiter().check("status") == "ok"  # and per connection
    limiter.forget()
    assert await limiter.check("status") == "ok"


async def test_a_budget_refills_at_its_rate(settings):
    """A leaky bucket: after a burst of N, a frame fits again once period / N has passed."""
    settings.FLEET_AGENT_FRAME_LIMITS = {"hello": "2/second", "event": "2/second", "status": "2/second"}
    settings.FLEET_AGENT_RATE_TOLERANCE = 100
    limiter = FrameLimiter()
    assert [await limiter.check("status") for _ in range(3)] == ["ok", "ok", "warn"]
    deadline = asyncio.get_running_loop().time() + 30
    while await limiter.check("status") != "ok":  # refills within half a second: waits for that, never a fixed time
        assert asyncio.get_running_loop().time() < deadline, "the status budget never refilled"
        await asyncio.sleep(0.05)
