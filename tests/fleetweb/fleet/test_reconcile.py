"""Reconciliation (issue 10 §3): pushes travel through Redis pub/sub, which loses them while Redis
is down; every heartbeat says what the agent applied, and the server resends what it missed."""
from __future__ import annotations

import io
import json
import socket
import subprocess
import time

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from agent import protocol
from fleetweb.asgi import application
from fleetweb.core.hub import hub
from fleetweb.fleet.models import Group
from fleetweb.updates.models import Release
from tests.conftest import partitions
from tests.fleetweb.reboots.test_isolation import ROOT_PASSWORD, auth_etcd  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db(transaction=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_redis():
    """A Redis of this test's own, which it stops to play an outage; the hub starts over on it."""
    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(1200):  # up to 60 s on a loaded machine
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None:
                raise RuntimeError("redis-server exited") from None
            time.sleep(0.05)
    with override_settings(REDIS_URL=url):
        hub._loop, hub._sync_redis = None, None  # subscribe and publish on this Redis
        yield proc
    proc.kill()
    proc.wait()
    hub._loop, hub._sync_redis = None, None


def stop(proc):
    proc.kill()
    proc.wait()


def hello(**over):
    return {"type": "hello", "machine_id": "m", "boot_id": "boot-1", "hostname": "web-1", "agent_version": "0.1.0",
            "version": "100.0.0", "partitions": partitions(), "update_status": "IDLE", "group": "stable",
            "reboot_strategy": "best-effort", **over}


async def connect(credential):
    comm = WebsocketCommunicator(application, "/ws/agent/", headers=[(b"authorization", f"Bearer {credential}".encode())])
    connected, _ = await comm.connect()
    assert connected
    return comm


async def next_frame(comm, kind, timeout=30):
    while True:
        frame = json.loads(await comm.receive_from(timeout=timeout))
        if frame["type"] == kind:
            return frame


async def heartbeats_until_a_policy(comm, seq, what, **reported):
    """Send IDLE status frames reporting ``reported`` until a frame comes back (a heartbeat asks for
    reconciliation at most once a second; the writer's tick is 50 ms); returns (seq, the policy)."""
    deadline = time.monotonic() + 60
    while True:
        seq += 1
        await comm.send_to(text_data=protocol.encode("status", "agent", update_status="IDLE", seq=seq, **reported))
        if not await comm.receive_nothing(timeout=0.3):
            return seq, await next_frame(comm, "policy")
        assert time.monotonic() < deadline, f"{what} never came"


@pytest.fixture
def host(web_group, make_host):
    return make_host(web_group, hostname="web-1")


async def test_a_channel_switch_made_while_redis_is_down_is_saved_and_reaches_the_agent_on_its_next_heartbeat(
        private_redis, host, alice, acme):
    comm = await connect(host.credential)
    await comm.send_to(text_data=json.dumps(hello()))
    first = await next_frame(comm, "policy")
    await comm.send_to(text_data=protocol.encode("event", "agent", kind="policy_applied",
                                                 data={"revision": first["revision"], "channel": "stable"}))
    stop(private_redis)

    response = await sync_to_async(alice.patch)(f"/api/v1/groups/{host.group_id}/", {"channel": "beta"}, format="json")
    assert response.status_code == 200, response.content
    group = await Group.objects.select_related("channel").aget(pk=host.group_id)
    assert group.channel.name == "beta" and group.policy_revision == first["revision"] + 1
    assert hub.lost >= 1  # the push itself was lost with Redis

    # The agent's heartbeat says it still runs the old revision: the server resends the new one.
    await comm.send_to(text_data=protocol.encode("status", "agent", update_status="IDLE", seq=1,
                                                 policy_revision=first["revision"]))
    pushed = await next_frame(comm, "policy")
    assert pushed["channel"] == "beta" and pushed["revision"] == first["revision"] + 1
    protocol.validate(pushed, "server")
    await comm.disconnect()


async def test_an_update_grant_lost_with_redis_is_resent_when_the_idle_agent_reports(private_redis, host, acme):
    comm = await connect(host.credential)
    await comm.send_to(text_data=json.dumps(hello()))
    policy = await next_frame(comm, "policy")
    stop(private_redis)

    def publish_a_release():
        release = Release.objects.create_from_upload(acme, "200.0.0", io.BytesIO(b"usr image" * 100), actor="alice")
        (rollout,) = acme.channels.get(name="stable").publish(release, "alice")
        return rollout

    rollout = await sync_to_async(publish_a_release)()
    granted = await sync_to_async(lambda: list(rollout.hosts.values_list("state", flat=True)))()
    assert granted == ["granted"]  # the worker granted it; its update frame went nowhere

    await comm.send_to(text_data=protocol.encode("status", "agent", update_status="IDLE", seq=1,
                                                 policy_revision=policy["revision"]))
    update = await next_frame(comm, "update")
    assert update["version"] == "200.0.0" and update["rollout"] == rollout.pk
    protocol.validate(update, "server")
    await comm.disconnect()


async def test_an_agent_that_reports_the_current_revision_is_sent_nothing_again(private_redis, host, alice):
    """Up-to-date heartbeats cost no resend.  Observable without waiting for "nothing": after them a
    switch is lost with Redis, and the first policy frame the agent then gets is the new revision,
    not a copy of the one it already runs."""
    comm = await connect(host.credential)
    await comm.send_to(text_data=json.dumps(hello()))
    policy = await next_frame(comm, "policy")
    await comm.send_to(text_data=protocol.encode("event", "agent", kind="policy_applied",
                                                 data={"revision": policy["revision"], "channel": "stable"}))
    for seq in (1, 2, 3):
        await comm.send_to(text_data=protocol.encode("status", "agent", update_status="IDLE", seq=seq,
                                                     policy_revision=policy["revision"]))
    stop(private_redis)
    response = await sync_to_async(alice.patch)(f"/api/v1/groups/{host.group_id}/", {"channel": "beta"}, format="json")
    assert response.status_code == 200, response.content
    await comm.send_to(text_data=protocol.encode("status", "agent", update_status="IDLE", seq=4,
                                                 policy_revision=policy["revision"]))
    resent = await next_frame(comm, "policy")
    assert (resent["revision"], resent["channel"]) == (policy["revision"] + 1, "beta")
    await comm.disconnect()


async def test_a_cloud_config_change_pushed_while_redis_is_down_reaches_the_agent_by_its_heartbeats(
        private_redis, host):
    """A cloud-config change moves no policy revision: its push is a policy frame with a new
    ``cloud_config_revision``, and the agent reports the one it last synced in its heartbeats."""
    from fleetweb.cloudconfig.models import CloudConfig

    comm = await connect(host.credential)
    await comm.send_to(text_data=json.dumps(hello()))
    first = await next_frame(comm, "policy")
    synced = first["cloud_config_revision"]
    stop(private_redis)

    def change_the_group_document():
        doc = CloudConfig.objects.for_group(host.group)
        return doc.save_content("#cloud-config\nhostname: renamed\n", None)

    revision = await sync_to_async(change_the_group_document)()
    assert revision is not None and revision.pk != synced
    assert hub.lost >= 1  # its push was lost with Redis

    # The agent still reports the revision it synced: after two heartbeats and a second since the
    # policy it has, the server resends the policy, which carries the new revision.
    _seq, pushed = await heartbeats_until_a_policy(comm, 0, "the policy with the new cloud-config revision",
                                                   policy_revision=first["revision"], cloud_config_revision=synced)
    assert pushed["cloud_config_revision"] == revision.pk and pushed["revision"] == first["revision"]
    protocol.validate(pushed, "server")
    await comm.disconnect()


async def test_an_etcd_password_rotated_while_redis_is_down_reaches_the_agent_by_its_heartbeats(
        private_redis, auth_etcd, host, alice):  # noqa: F811
    """A rotation moves no policy revision either: the host's own policy frame carries its etcd
    credentials and their ``etcd_credentials_revision``, which the agent reports back once applied.
    The old password stops working at once, so a lost push would leave the host locked out of its
    reboot lock until the next change of its group."""
    from fleetweb.reboots import etcd

    await sync_to_async(etcd.enable_auth)([auth_etcd.url], "root", ROOT_PASSWORD)
    await sync_to_async(etcd.reset_client)()
    comm = await connect(host.credential)
    await comm.send_to(text_data=json.dumps(hello()))
    first = await next_frame(comm, "policy")
    applied = first["etcd_credentials_revision"]
    assert first["etcd_password"] and isinstance(applied, int)
    stop(private_redis)

    response = await sync_to_async(alice.post)(f"/api/v1/hosts/{host.pk}/rotate-etcd-credentials")
    assert response.status_code == 200, response.content
    assert hub.lost >= 1  # its push was lost with Redis

    seq, pushed = await heartbeats_until_a_policy(comm, 0, "the policy with the new etcd password",
                                                  policy_revision=first["revision"], etcd_credentials_revision=applied)
    assert pushed["etcd_credentials_revision"] == applied + 1 and pushed["revision"] == first["revision"]
    assert pushed["etcd_username"] == first["etcd_username"] and pushed["etcd_password"] != first["etcd_password"]
    protocol.validate(pushed, "server")

    # Once the agent reports the new revision, its heartbeats bring no copy of that frame.  Observable
    # without waiting for "nothing": a switch is then lost with Redis too, and the next policy frame
    # the agent gets is the switch's new revision.
    for _ in range(3):
        seq += 1
        await comm.send_to(text_data=protocol.encode("status", "agent", update_status="IDLE", seq=seq,
                                                     policy_revision=first["revision"],
                                                     etcd_credentials_revision=applied + 1))
    response = await sync_to_async(alice.patch)(f"/api/v1/groups/{host.group_id}/", {"channel": "beta"}, format="json")
    assert response.status_code == 200, response.content
    _seq, switched = await heartbeats_until_a_policy(comm, seq, "the switch", policy_revision=first["revision"],
                                                     etcd_credentials_revision=applied + 1)
    assert (switched["revision"], switched["channel"]) == (first["revision"] + 1, "beta")
    assert switched["etcd_password"] == pushed["etcd_password"]  # the host's own fields ride along
    await comm.disconnect()
