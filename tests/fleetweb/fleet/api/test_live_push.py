"""API writes reach connected agents at once: PATCH a host's group or a group's channel."""
from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async

from fleetweb.asgi import application
from fleetweb.fleet.models import Group
from tests.communicators import WebsocketCommunicator
from tests.conftest import partitions

pytestmark = pytest.mark.django_db(transaction=True)


async def connected_agent(host):
    comm = WebsocketCommunicator(application, "/ws/agent/",
                                 headers=[(b"authorization", f"Bearer {host.credential}".encode())])
    connected, _ = await comm.connect()
    assert connected
    await comm.send_to(text_data=json.dumps({
        "type": "hello", "machine_id": host.machine_id, "boot_id": "boot-1", "hostname": host.hostname,
        "agent_version": "0.1.0", "version": "100.0.0", "partitions": partitions(), "update_status": "IDLE",
        "group": "stable", "reboot_strategy": "best-effort", "policy_revision": 0}))
    first = json.loads(await comm.receive_from())
    assert first["type"] == "policy"
    return comm, first


async def test_it_pushes_the_new_groups_policy_to_a_moved_host(operator, acme, web_group, make_host):
    host = await sync_to_async(make_host)(web_group, "web-1")
    db = await Group.objects.acreate(organization=acme, name="db", slug="db",
                                     channel=await acme.channels.aget(name="alpha"))
    comm, first = await connected_agent(host)
    assert first["group"] == "web"
    r = await sync_to_async(operator.patch)(f"/api/v1/hosts/{host.pk}/", {"group": db.pk}, format="json")
    assert r.status_code == 200, r.content
    pushed = json.loads(await comm.receive_from())
    assert pushed["type"] == "policy" and pushed["group"] == "db" and pushed["channel"] == "alpha"
    await comm.disconnect()


async def test_it_pushes_a_channel_switch_made_through_the_api(operator, web_group, make_host):
    host = await sync_to_async(make_host)(web_group, "web-1")
    comm, first = await connected_agent(host)
    r = await sync_to_async(operator.patch)(f"/api/v1/groups/{web_group.pk}/", {"channel": "beta"}, format="json")
    assert r.status_code == 200, r.content
    pushed = json.loads(await comm.receive_from())
    assert pushed["channel"] == "beta" and pushed["revision"] == first["revision"] + 1
    await comm.disconnect()
