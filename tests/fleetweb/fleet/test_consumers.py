"""The agent websocket: authentication, validation of every frame, persistence."""
from __future__ import annotations

import json

import pytest

from agent import protocol
from fleetweb.asgi import application
from fleetweb.fleet.models import Event, Host
from tests.communicators import WebsocketCommunicator
from tests.conftest import partitions

pytestmark = pytest.mark.django_db(transaction=True)


def hello(**over):
    msg = {"type": "hello", "machine_id": "m", "boot_id": "boot-1", "hostname": "web-1", "agent_version": "0.1.0",
           "version": "100.0.0", "partitions": partitions(), "update_status": "IDLE", "group": "stable",
           "reboot_strategy": "best-effort", "policy_revision": 0}
    msg.update(over)
    return msg


async def connect(credential):
    headers = [(b"authorization", f"Bearer {credential}".encode())] if credential else []
    comm = WebsocketCommunicator(application, "/ws/agent/", headers=headers)
    connected, _ = await comm.connect()
    assert connected
    return comm


@pytest.fixture
def host(web_group, make_host):
    return make_host(web_group, hostname="web-1")


async def test_it_closes_a_bad_credential_with_4401(host):
    for credential in ("fwh_000000000000_nope", host.credential + "x", None):
        comm = await connect(credential)
        frame = json.loads(await comm.receive_from())
        assert frame == {"type": "error", "code": "unauthorized", "message": "invalid or revoked credential"}
        out = await comm.receive_output()
        assert out == {"type": "websocket.close", "code": protocol.CLOSE_UNAUTHORIZED}


async def test_it_answers_hello_with_the_group_policy_and_persists_the_host(host):
    comm = await connect(host.credential)
    await comm.send_to(text_data=json.dumps(hello(partitions=partitions(version_b="99.0.0"))))
    policy = json.loads(await comm.receive_from())
    assert policy["type"] == "policy" and policy["channel"] == "stable" and policy["group"] == "web"
    assert policy["reboot_strategy"] == "best-effort"
    protocol.validate(policy, "server")
    stored = await Host.objects.aget(pk=host.pk)
    assert stored.online and stored.boot_id == "boot-1" and stored.partitions[1]["version"] == "99.0.0"
    await comm.disconnect()
    stored = await Host.objects.aget(pk=host.pk)
    assert stored.online is False
    assert await Event.objects.filter(host_id=host.pk, kind="disconnected").aexists()


@pytest.mark.parametrize("frame,code", [
    ("{not json", "malformed"),
    ("[1, 2]", "malformed"),
    ('{"type": "selfdestruct"}', "unknown_type"),
    ('{"type": "hello", "hostname": 5}', "invalid"),
    (json.dumps(hello(partitions=[{"label": "USR-A"}])), "invalid"),
    (json.dumps(hello(update_status="PARTYING")), "invalid"),
    # PostgreSQL stores no NUL: it would fail the batch write of every host in its tick
    (json.dumps(hello(hostname="web\u0000-1")), "invalid"),
    (json.dumps(hello(partitions=[{**partitions()[0], "version": "1\u00002"}, partitions()[1]])), "invalid"),
    ("x" * (protocol.MAX_FRAME_BYTES + 1), "too_large"),
    (json.dumps({"type": "status", "update_status": "IDLE"}), "not_ready"),
])
async def test_it_refuses_bad_frames_with_an_error_and_stores_nothing(host, frame, code):
    before = await Host.objects.aget(pk=host.pk)
    events = await Event.objects.acount()
    comm = await connect(host.credential)
    await comm.send_to(text_data=frame)
    reply = json.loads(await comm.receive_from())
    assert reply["type"] == "error" and reply["code"] == code, reply
    after = await Host.objects.aget(pk=host.pk)
    assert (after.hostname, after.partitions, after.online, after.last_seen) == \
        (before.hostname, before.partitions, before.online, before.last_seen)
    assert await Event.objects.acount() == events
    await comm.disconnect()


async def test_it_persists_status_frames_and_policy_acknowledgements(host):
    comm = await connect(host.credential)
    await comm.send_to(text_data=json.dumps(hello()))
    policy = json.loads(await comm.receive_from())
    await comm.send_to(text_data=protocol.encode("status", "agent", update_status="IDLE", seq=7))
    await comm.send_to(text_data=protocol.encode(
        "event", "agent", kind="policy_applied",
        data={"revision": policy["revision"], "channel": "stable", "reboot_strategy": "best-effort"}))
    await comm.send_to(text_data=protocol.encode("pong", "agent", nonce="n"))  # flushes ordering
    import asyncio

    for _ in range(600):  # up to 30 s: the writer's tick and the ack writer's may be slow on a busy host
        stored = await Host.objects.select_related("group").aget(pk=host.pk)
        if stored.status_seq == 7 and stored.policy_revision == policy["revision"]:
            break
        await asyncio.sleep(0.05)
    assert stored.status_seq == 7
    assert stored.policy_applied
    assert await Event.objects.filter(host_id=host.pk, kind="policy_applied").acount() == 1
    await comm.disconnect()


async def test_it_pushes_a_channel_switch_to_connected_agents(host, acme):
    from asgiref.sync import sync_to_async

    comm = await connect(host.credential)
    await comm.send_to(text_data=json.dumps(hello()))
    first = json.loads(await comm.receive_from())
    group = await sync_to_async(lambda: host.group)()
    beta = await acme.channels.aget(name="beta")
    await sync_to_async(group.apply_changes)({"channel": beta}, actor="alice")
    pushed = json.loads(await comm.receive_from())
    assert pushed["type"] == "policy" and pushed["channel"] == "beta"
    assert pushed["revision"] == first["revision"] + 1
    await comm.disconnect()


async def test_a_hosts_status_is_stored_before_an_event_it_sent_afterwards(host, monkeypatch):
    """A host reports its partition marked good, then that it booted the new version: whoever reads the event
    (the rollout, the dashboard, an API client) must find the partition state the host reported before it."""
    import asyncio

    from fleetweb.fleet.writer import writer

    monkeypatch.setattr(writer, "tick", 0.5)  # a busy writer: status frames wait a while before they are written
    comm = await connect(host.credential)
    await comm.send_to(text_data=json.dumps(hello()))
    await comm.receive_from()
    await comm.send_to(text_data=protocol.encode(
        "status", "agent", update_status="IDLE", seq=3, version="200.0.0",
        partitions=partitions(active="USR-B", version_b="200.0.0")))
    await comm.send_to(text_data=protocol.encode(
        "event", "agent", kind="booted_new_version", data={"version": "200.0.0", "previous_version": "100.0.0"}))
    for _ in range(3000):  # up to 30 s: the event waits for the status's tick (0.5 s) to be written
        if await Event.objects.filter(host_id=host.pk, kind="booted_new_version").aexists():
            break
        await asyncio.sleep(0.01)
    stored = await Host.objects.aget(pk=host.pk)
    assert await Event.objects.filter(host_id=host.pk, kind="booted_new_version").aexists()
    assert stored.version == "200.0.0" and stored.status_seq == 3
    assert [p["label"] for p in stored.partitions if p["active"]] == ["USR-B"]
    await comm.disconnect()


async def test_a_frame_writes_only_what_it_carries(host):
    """A status frame without partitions and a pong leave the stored partitions alone (the socket
    no longer keeps a copy of them to write back), and a status with partitions replaces them."""
    comm = await connect(host.credential)
    await comm.send_to(text_data=json.dumps(hello()))
    assert json.loads(await comm.receive_from())["type"] == "policy"
    booted = partitions()
    booted[0]["version"] = "101.0.0"
    await comm.send_to(text_data=protocol.encode("status", "agent", update_status="IDLE", seq=1, partitions=booted))
    await comm.send_to(text_data=protocol.encode("status", "agent", update_status="IDLE", seq=2, version="100.0.0"))
    await comm.send_to(text_data=protocol.encode("pong", "agent", nonce="n"))
    await comm.disconnect()  # flushes this socket's frames before the host is marked offline
    stored = await Host.objects.aget(pk=host.pk)
    assert stored.status_seq == 2
    assert stored.partitions == booted
    assert (stored.version, stored.update_status, stored.online) == ("100.0.0", "IDLE", False)


async def test_a_heartbeat_asks_for_reconciliation_at_most_once_a_second(host, monkeypatch):
    """Reconciliation reads what the server expects of the host after the write: once per second
    per socket is enough (a resend waits a second anyway), not for each of the several status
    frames a second an agent sends while it downloads.  On a fake clock."""
    import asyncio

    from fleetweb.fleet import consumers
    from fleetweb.fleet.writer import writer

    clock = [1000.0]
    monkeypatch.setattr(consumers.AgentConsumer, "_now", staticmethod(lambda: clock[0]))
    asked = []
    submit = writer.submit

    async def recording(host_id, connection_id, fields):
        if "update_status" in fields:
            asked.append(bool(fields.get("reconcile")))
        await submit(host_id, connection_id, fields)

    monkeypatch.setattr(writer, "submit", recording)
    comm = await connect(host.credential)
    await comm.send_to(text_data=json.dumps(hello()))
    await comm.receive_from()

    async def statuses(count):
        seen = len(asked)
        for _ in range(count):
            await comm.send_to(text_data=protocol.encode("status", "agent", update_status="IDLE"))
        for _ in range(1200):  # until the socket handled them (up to 60 s on a loaded machine)
            if len(asked) == seen + count:
                return asked[seen:]
            await asyncio.sleep(0.05)
        raise AssertionError(f"{len(asked) - seen} of {count} status frames handled")

    assert await statuses(3) == [True, False, False]
    clock[0] += consumers.RECONCILE_EVERY - 0.01
    assert await statuses(1) == [False]
    clock[0] += 0.01
    assert await statuses(2) == [True, False]
    await comm.disconnect()
