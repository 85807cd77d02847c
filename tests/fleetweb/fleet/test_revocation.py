"""Revocation takes effect at once: a revoked, deleted or re-enrolled host's live socket is closed
(4403) and a second connection with the same credential replaces the first (4409).

Before issue 9 the socket stayed open and kept receiving policy frames; each test here waits for the
close frame it expects (a bounded wait for an observable event), it never sleeps."""
from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from agent import protocol
from fleetweb.asgi import application
from fleetweb.fleet.models import EnrollmentToken, Event, Host, HostCredential
from tests.communicators import WebsocketCommunicator
from tests.conftest import partitions

pytestmark = pytest.mark.django_db(transaction=True)


def hello():
    return {"type": "hello", "machine_id": "m", "boot_id": "boot-1", "hostname": "web-1", "agent_version": "0.1.0",
            "version": "100.0.0", "partitions": partitions(), "update_status": "IDLE", "group": "stable",
            "reboot_strategy": "best-effort", "policy_revision": 0}


async def ready(credential):
    comm = WebsocketCommunicator(application, "/ws/agent/",
                                 headers=[(b"authorization", f"Bearer {credential}".encode())])
    connected, _ = await comm.connect()
    assert connected
    await comm.send_to(text_data=json.dumps(hello()))
    assert json.loads(await comm.receive_from())["type"] == "policy"
    return comm


async def closed_with(comm) -> int:
    """The close code the server sent, skipping any frame that came before it."""
    while True:
        out = await comm.receive_output()
        if out["type"] == "websocket.close":
            await comm.disconnect()  # what a real server reports after a close: the consumer cleans up
            return out["code"]


@pytest.fixture
def host(web_group, make_host):
    return make_host(web_group, hostname="web-1")


async def test_revoking_the_credential_closes_the_live_socket_with_4403(host):
    comm = await ready(host.credential)
    n = await sync_to_async(host.revoke_credentials)(actor="alice")
    assert n == 1
    assert await closed_with(comm) == protocol.CLOSE_REVOKED
    assert await sync_to_async(HostCredential.objects.authenticate)(host.credential) is None
    assert await Event.objects.filter(host_id=host.pk, kind="credential_revoked").aexists()
    again = WebsocketCommunicator(application, "/ws/agent/",
                                  headers=[(b"authorization", f"Bearer {host.credential}".encode())])
    await again.connect()
    assert await closed_with(again) == protocol.CLOSE_UNAUTHORIZED


async def test_deleting_the_host_closes_its_socket(host):
    comm = await ready(host.credential)
    await sync_to_async(host.delete_with_event)(actor="alice")
    assert await closed_with(comm) == protocol.CLOSE_REVOKED


async def test_re_enrolling_the_machine_closes_the_old_socket_but_not_the_new_one(host, web_group):
    comm = await ready(host.credential)

    def reenroll():
        host.allow_reenrollment(actor="olga")
        _, secret = EnrollmentToken.objects.issue(web_group)
        return Host.objects.register(secret, machine_id=host.machine_id, hostname="web-1")[1]

    credential = await sync_to_async(reenroll)()
    assert await closed_with(comm) == protocol.CLOSE_REVOKED
    fresh = await ready(credential)  # the new credential's socket stays up and is served
    await fresh.disconnect()


async def test_a_second_connection_with_the_same_credential_replaces_the_first(host):
    first = await ready(host.credential)
    second = await ready(host.credential)
    assert await closed_with(first) == protocol.CLOSE_REPLACED
    await second.send_to(text_data=json.dumps({"type": "pong"}))
    group = await sync_to_async(lambda: host.group)()
    await sync_to_async(group.push_policy)()
    assert json.loads(await second.receive_from())["type"] == "policy"  # the new one is served
    await second.disconnect()


async def test_a_lost_close_message_is_made_good_by_the_credential_recheck(host):
    """The hub's close can be lost (Redis pub/sub while a process re-subscribes): the periodic
    recheck closes a socket whose credential was revoked without any message."""
    from fleetweb.fleet import sweeper

    comm = await ready(host.credential)
    # Revoked behind the hub's back: no close message is published.
    await HostCredential.objects.filter(host_id=host.pk).aupdate(revoked_at=timezone.now())
    assert await sweeper.sweep() >= 1  # (sockets other tests left behind may be counted too)
    assert await closed_with(comm) == protocol.CLOSE_REVOKED
