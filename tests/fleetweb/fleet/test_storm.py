"""Reconnect storms (issue 10 §5): sockets that connect together are authenticated in batches."""
from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fleetweb.asgi import application
from fleetweb.fleet.models import HostCredential
from tests.conftest import partitions


@pytest.mark.django_db
def test_a_batch_of_credentials_is_checked_in_one_query(web_group, make_host):
    hosts = [make_host(web_group, hostname=f"web-{i}") for i in range(4)]
    revoked = hosts[3]
    revoked.revoke_credentials(actor="alice")
    presented = [hosts[0].credential, hosts[1].credential, hosts[2].credential + "x", revoked.credential,
                 "fwh_nonsense", "", hosts[0].credential]
    with CaptureQueriesContext(connection) as queries:
        found = HostCredential.objects.authenticate_many(presented)
    assert len(queries) == 1
    assert [h.pk if h else None for h in found] == [hosts[0].pk, hosts[1].pk, None, None, None, None, hosts[0].pk]
    assert found[0].group.channel.name == "stable"  # what the socket needs next comes with it


@pytest.mark.django_db(transaction=True)
async def test_many_agents_connecting_at_once_are_all_authenticated_and_answered(web_group, make_host):
    hosts = await sync_to_async(lambda: [make_host(web_group, hostname=f"web-{i:02d}") for i in range(40)])()

    async def one(host):
        comm = WebsocketCommunicator(application, "/ws/agent/",
                                     headers=[(b"authorization", f"Bearer {host.credential}".encode())])
        assert (await comm.connect(timeout=60))[0]
        await comm.send_to(text_data=json.dumps({
            "type": "hello", "machine_id": host.machine_id, "boot_id": "b", "hostname": host.hostname,
            "agent_version": "0.1.0", "version": "100.0.0", "partitions": partitions(), "update_status": "IDLE"}))
        frame = json.loads(await comm.receive_from(timeout=60))
        await comm.disconnect()
        return frame["type"]

    assert await asyncio.gather(*(one(h) for h in hosts)) == ["policy"] * len(hosts)
