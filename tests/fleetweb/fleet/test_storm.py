"""Reconnect storms (issue 10 §5): sockets that connect together are authenticated in batches."""
from __future__ import annotations

import asyncio
import json
import threading

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connection
from django.test.utils import CaptureQueriesContext

from agent import protocol
from fleetweb.asgi import application
from fleetweb.fleet.choices import EventKind
from fleetweb.fleet.consumers import HELLO_BACKLOG_LIMIT
from fleetweb.fleet.models import Event, Host, HostCredential
from fleetweb.fleet.writer import Batcher, Overloaded, hellos
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
    assert [h.host_id if h else None for h in found] == [hosts[0].pk, hosts[1].pk, None, None, None, None,
                                                         hosts[0].pk]
    # what the socket needs next comes with it
    assert (found[1].organization_id, found[1].group_id, found[1].hostname, found[1].status_seq) == (
        hosts[1].organization_id, web_group.pk, hosts[1].hostname, 0)
    assert HostCredential.objects.authenticate(hosts[0].credential).group.channel.name == "stable"
    assert HostCredential.objects.authenticate(revoked.credential) is None
    assert HostCredential.objects.authenticate(hosts[0].credential + "x") is None


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


class HeldBatcher(Batcher):
    """A batcher whose batches wait for the test, on a clock the test moves."""

    max_wait = 10.0

    def __init__(self):
        super().__init__()
        self.now = 0.0
        self.release = threading.Event()
        self.batches: list[list] = []

    def _now(self):
        return self.now

    def _write(self, items):
        self.batches.append(list(items))
        assert self.release.wait(60), "the test never released the batch"
        return [f"answer {item}" for item in items]


async def _until(condition, what):
    deadline = asyncio.get_running_loop().time() + 60
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


async def test_a_request_queued_longer_than_its_caller_waits_is_dropped_not_handled():
    """A reconnect storm fed itself: hellos were answered after the agent had given up on them."""
    batcher = HeldBatcher()
    first = asyncio.ensure_future(batcher.submit(1))
    await _until(lambda: batcher.batches == [[1]], "the first batch never started")
    assert batcher.backlog() == 0.0          # nothing measured yet: no estimate
    stale = asyncio.ensure_future(batcher.submit(2))   # queued at t=0
    await _until(lambda: len(batcher._pending) == 1, "the second request was not queued")
    batcher.now = 11.0                       # the first batch took 11 s: request 2 waited longer than 10 s
    fresh = asyncio.ensure_future(batcher.submit(3))
    batcher.release.set()
    assert await first == "answer 1"
    with pytest.raises(Overloaded, match="waited over 10 s"):
        await stale
    assert await fresh == "answer 3"
    assert batcher.batches == [[1], [3]]     # the abandoned request cost nothing
    assert batcher.overloaded == 1


async def test_the_backlog_is_the_queue_over_the_measured_rate():
    batcher = HeldBatcher()
    batcher.max_wait = None
    batcher.release.set()
    batcher.now = 0.0
    first = asyncio.ensure_future(batcher.submit(1))
    await first                              # one request in 1e-3 s at least: a measured rate
    batcher.release.clear()
    batcher.now = 100.0
    held = asyncio.ensure_future(batcher.submit(2))
    await _until(lambda: len(batcher.batches) == 2, "the second batch never started")
    batcher.now = 102.0                      # it takes 2 s
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(3, 7)]
    await _until(lambda: len(batcher._pending) == 4, "requests were not queued")
    batcher.release.set()
    await held
    await asyncio.gather(*queued)
    # Rates measured: 1 request / 1e-3 s (the clock did not move), then 1 request / 2 s, smoothed.
    assert batcher._rate == pytest.approx(0.5 * (0.5 * 1000 + 0.5 * 0.5) + 0.5 * (4 / 1e-3))
    batcher.release.clear()
    blocked = asyncio.ensure_future(batcher.submit(7))
    await _until(lambda: len(batcher.batches) == 4, "the last batch never started")
    waiting = [asyncio.ensure_future(batcher.submit(i)) for i in range(8, 18)]
    await _until(lambda: len(batcher._pending) == 10, "requests were not queued")
    assert batcher.backlog() == pytest.approx(10 / batcher._rate)
    batcher.release.set()
    await asyncio.gather(blocked, *waiting)


async def _agent(host):
    comm = WebsocketCommunicator(application, "/ws/agent/",
                                 headers=[(b"authorization", f"Bearer {host.credential}".encode())])
    assert (await comm.connect(timeout=60))[0]
    return comm


def _hello(host):
    return json.dumps({"type": "hello", "machine_id": host.machine_id, "boot_id": "b", "hostname": host.hostname,
                       "agent_version": "0.1.0", "version": "100.0.0", "partitions": partitions(),
                       "update_status": "IDLE"})


@pytest.mark.django_db(transaction=True)
async def test_a_socket_arriving_behind_a_long_hello_queue_is_told_to_come_back_later(web_group, make_host,
                                                                                     monkeypatch):
    host = await sync_to_async(make_host)(web_group, hostname="web-late")
    monkeypatch.setattr(hellos, "backlog", lambda: HELLO_BACKLOG_LIMIT + 1)
    comm = await _agent(host)
    assert await comm.receive_output(timeout=60) == {"type": "websocket.close", "code": 1013}
    assert protocol.CLOSE_TRY_AGAIN_LATER == 1013
    stored = await Host.objects.aget(pk=host.pk)
    assert (stored.online, stored.connection_id) == (False, None)   # nothing recorded for it
    assert not await Event.objects.filter(host=host.pk, kind=EventKind.CONNECTED).aexists()


@pytest.mark.django_db(transaction=True)
async def test_a_hello_that_waited_past_the_agents_timeout_is_closed_not_answered(web_group, make_host,
                                                                                 monkeypatch):
    host = await sync_to_async(make_host)(web_group, hostname="web-slow")
    comm = await _agent(host)
    clock = iter(range(0, 10_000, 100))     # every reading 100 s after the last: the hello waited too long
    monkeypatch.setattr(hellos, "_now", lambda: float(next(clock)))
    await comm.send_to(text_data=_hello(host))
    assert await comm.receive_output(timeout=60) == {"type": "websocket.close", "code": 1013}
    stored = await Host.objects.aget(pk=host.pk)
    assert (stored.online, stored.hostname) == (False, "web-slow")
    assert not await Event.objects.filter(host=host.pk, kind=EventKind.CONNECTED).aexists()


@pytest.mark.django_db(transaction=True)
async def test_agent_frames_are_handled_while_the_agent_thread_is_busy(web_group, make_host):
    """Frames that need no database are answered while the agents' sync thread is held (by a long
    batch write, here by the test): channels' dispatch used to hop to that thread for every frame."""
    host = await sync_to_async(make_host)(web_group, hostname="web-busy")
    comm = await _agent(host)
    await comm.send_to(text_data=_hello(host))
    assert json.loads(await comm.receive_from(timeout=60))["type"] == "policy"
    entered, release = threading.Event(), threading.Event()

    def hold():
        entered.set()
        release.wait(60)

    holder = asyncio.ensure_future(sync_to_async(hold, thread_sensitive=True)())
    assert await asyncio.to_thread(entered.wait, 60), "the agent thread was never held"
    try:
        await comm.send_to(text_data="{not json")
        reply = json.loads(await comm.receive_from(timeout=60))
        assert reply["type"] == "error" and reply["code"] == protocol.ERR_MALFORMED
        assert not holder.done()             # answered while the thread was still held
    finally:
        release.set()
    await holder
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_many_sockets_closing_at_once_mark_each_host_offline_once(web_group, make_host):
    """A network cut closes every socket together: each host goes offline with one event, written
    in batches; a socket replaced by a newer one before it closed leaves its host online."""
    hosts = await sync_to_async(lambda: [make_host(web_group, hostname=f"cut-{i:02d}") for i in range(20)])()
    comms = []
    for host in hosts:
        comm = await _agent(host)
        await comm.send_to(text_data=_hello(host))
        assert json.loads(await comm.receive_from(timeout=60))["type"] == "policy"
        comms.append(comm)
    newer = await _agent(hosts[0])               # host 0 reconnects: its first socket is replaced
    await newer.send_to(text_data=_hello(hosts[0]))
    assert json.loads(await newer.receive_from(timeout=60))["type"] == "policy"

    await asyncio.gather(*(comm.disconnect(timeout=60) for comm in comms))

    stored = {h.hostname: h async for h in Host.objects.filter(pk__in=[h.pk for h in hosts])}
    assert stored["cut-00"].online and stored["cut-00"].connection_id is not None
    assert [name for name, h in sorted(stored.items()) if h.online] == ["cut-00"]
    assert all(h.connection_id is None for name, h in stored.items() if name != "cut-00")
    events = [e async for e in Event.objects.filter(kind=EventKind.DISCONNECTED, host__in=[h.pk for h in hosts])]
    assert sorted(e.host_id for e in events) == sorted(h.pk for h in hosts[1:])
    assert all(e.message.startswith("Host cut-") and "disconnected (code" in e.message for e in events)
    await newer.disconnect(timeout=60)
    assert not (await Host.objects.aget(pk=hosts[0].pk)).online
