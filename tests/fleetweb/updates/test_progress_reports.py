"""Update progress in an agent's status frames moves its rollout entry in the heartbeat group commit;
the frames a replaced socket still delivers change nothing."""
from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async

from agent import protocol
from fleetweb.fleet.models import Event, Host
from fleetweb.fleet.writer import writer
from fleetweb.updates.choices import HostUpdateState
from fleetweb.updates.models import RolloutHost
from tests.conftest import partitions
from tests.fleetweb.fleet.test_consumers import connect, hello

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def granted(acme, web_group, online_hosts, make_release):
    """web-00 holds a grant in a running rollout of 101.0.0."""
    web_group.max_in_flight = 1
    web_group.save()
    [host] = online_hosts(1)
    [rollout] = acme.channels.get(name="stable").publish(make_release("101.0.0"), "alice")
    rollout.advance()
    entry = RolloutHost.objects.get(rollout=rollout, host=host)
    assert entry.state == HostUpdateState.GRANTED
    return host, entry


async def entry_state(entry):
    fresh = await RolloutHost.objects.aget(pk=entry.pk)
    return fresh.state, fresh.progress


async def until(check, timeout=30.0):
    for _ in range(int(timeout / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


def status(seq, update_status, rollout=None, progress=None, **extra):
    fields = {"update_status": update_status, "seq": seq, **extra}
    if rollout is not None:
        fields.update(rollout=rollout, target_version="101.0.0")
    if progress is not None:
        fields["progress"] = progress
    return protocol.encode("status", "agent", **fields)


async def test_status_frames_move_the_rollout_entry_with_progress_and_the_last_state_of_a_tick_wins(granted):
    host, entry = granted
    comm = await connect(host.credential)
    await comm.send_to(text_data=json.dumps(hello(hostname="web-00")))
    await comm.receive_from()
    await comm.send_to(text_data=status(1, "DOWNLOADING", entry.rollout_id, 0.4))
    await until(lambda: _is(entry, (HostUpdateState.DOWNLOADING, 0.4)))
    for seq, st in enumerate(("VERIFYING", "FINALIZING", "UPDATED_NEED_REBOOT"), start=2):
        await comm.send_to(text_data=status(seq, st, entry.rollout_id))
    await comm.send_to(text_data=protocol.encode("pong", "agent", nonce="n"))  # a frame without progress
    # past DOWNLOADING the download is complete, whatever percentage was last written
    await until(lambda: _is(entry, (HostUpdateState.NEED_REBOOT, 1.0)))
    stored = await Host.objects.aget(pk=host.pk)
    assert (stored.update_status, stored.status_seq) == ("UPDATED_NEED_REBOOT", 4)
    # a finished entry never moves again, whatever a late frame says
    await sync_to_async(entry.finish)(HostUpdateState.SUCCEEDED)
    await comm.send_to(text_data=status(5, "DOWNLOADING", entry.rollout_id, 0.1))
    await until(lambda: _seq(host, 5))
    assert await entry_state(entry) == (HostUpdateState.SUCCEEDED, 1.0)
    await comm.disconnect()


async def test_frames_a_replaced_socket_still_delivers_change_neither_the_host_nor_its_rollout_entry(
        granted, monkeypatch):
    host, entry = granted
    monkeypatch.setattr(writer, "tick", 0.3)  # both sockets' frames wait in the same tick
    old = await connect(host.credential)
    await old.send_to(text_data=json.dumps(hello(hostname="web-00")))
    await old.receive_from()
    await old.send_to(text_data=status(1, "DOWNLOADING", entry.rollout_id, 0.5))
    await until(lambda: _is(entry, (HostUpdateState.DOWNLOADING, 0.5)))

    # the host rebooted into the new version; its old socket is still draining queued frames
    new = await connect(host.credential)
    await new.send_to(text_data=json.dumps(hello(hostname="web-00", boot_id="boot-2", version="101.0.0",
                                                 partitions=partitions("USR-B", version_b="101.0.0"))))
    await new.receive_from()
    good = partitions("USR-B", version_b="101.0.0")
    good[1]["successful"] = True
    await new.send_to(text_data=status(1, "IDLE", version="101.0.0", partitions=good))
    await old.send_to(text_data=status(9, "DOWNLOADING", entry.rollout_id, 0.9, version="100.0.0",
                                       partitions=partitions()))
    await until(lambda: _seq(host, 1))
    await old.send_to(text_data=protocol.encode("pong", "agent", nonce="flush"))
    # The old socket goes away: its consumer handles every frame it was sent, then its disconnect
    # waits until the writer has written them (or refused them) before it ends.
    await old.disconnect()
    stored = await Host.objects.aget(pk=host.pk)
    assert stored.version == "101.0.0" and stored.status_seq == 1
    assert [(p["label"], p["active"], p["successful"]) for p in stored.partitions] == [
        ("USR-A", False, True), ("USR-B", True, True)]
    assert await entry_state(entry) == (HostUpdateState.DOWNLOADING, 0.5)
    await new.disconnect()


async def _is(entry, expected) -> bool:
    return await entry_state(entry) == expected


async def _seq(host, seq) -> bool:
    return (await Host.objects.aget(pk=host.pk)).status_seq == seq


async def test_a_heartbeat_showing_the_new_version_booted_and_marked_good_finishes_the_entry(granted):
    """The agent reports the partition marked good, then sends ``booted_new_version``; a web process
    killed between the two lost the event, and the entry waited in "rebooting" until the update
    timeout failed it.  The heartbeat itself finishes it; the event, when it comes, changes nothing."""
    host, entry = granted
    await sync_to_async(lambda: RolloutHost.objects.filter(pk=entry.pk).update(state=HostUpdateState.REBOOTING))()
    comm = await connect(host.credential)
    await comm.send_to(text_data=json.dumps(hello(hostname="web-00")))
    await comm.receive_from()
    # Booted the new version, not yet marked good (the health check runs): nothing moves.
    trying = partitions(active="USR-B", version_b="101.0.0")
    trying[1].update(successful=False, tries=1)
    await comm.send_to(text_data=status(1, "IDLE", partitions=trying, version="101.0.0"))
    await until(lambda: _seq(host, 1))
    assert (await entry_state(entry))[0] == HostUpdateState.REBOOTING
    # Another version on the active partition, marked good: not this rollout's either.
    await comm.send_to(text_data=status(2, "IDLE", partitions=partitions(active="USR-A", version_a="100.0.0",
                                                                          version_b="101.0.0"), version="100.0.0"))
    await until(lambda: _seq(host, 2))
    assert (await entry_state(entry))[0] == HostUpdateState.REBOOTING
    # Marked good on the rollout's version: the entry succeeds without any event.
    good = partitions(active="USR-B", version_b="101.0.0")
    good[1]["successful"] = True
    await comm.send_to(text_data=status(3, "IDLE", partitions=good, version="101.0.0"))
    await until(lambda: _is(entry, (HostUpdateState.SUCCEEDED, entry.progress)))
    # The activity log shows the boot, though no event came (a killed web process lost it).
    assert await boots(host, entry) == ["Host web-00: booted the new version 101.0.0"]
    recorded = await boot_data(host, entry)
    assert (recorded["partition"], recorded["reported_by"]) == ("USR-B", "heartbeat")
    await comm.send_to(text_data=protocol.encode("event", "agent", kind="booted_new_version",
                                                 data={"version": "101.0.0", "rollout": entry.rollout_id,
                                                       "previous_version": "100.0.0", "partition": "USR-B"}))
    await comm.send_to(text_data=status(4, "IDLE", partitions=good, version="101.0.0"))
    await until(lambda: _seq(host, 4))
    assert (await entry_state(entry))[0] == HostUpdateState.SUCCEEDED
    # The event, when it comes, is not a second boot (the fault drills count one per host).
    await comm.send_to(text_data=protocol.encode("event", "agent", kind="download_retrying", data={"marker": 1}))
    await until(lambda: _events_with_marker(host))
    assert await boots(host, entry) == ["Host web-00: booted the new version 101.0.0"]
    # ... but what it adds goes into the one entry (the host's timeline shows "(was 100.0.0)").
    recorded = await boot_data(host, entry)
    assert recorded["previous_version"] == "100.0.0" and "reported_by" not in recorded
    await comm.disconnect()


async def boot_data(host, entry) -> dict:
    return await sync_to_async(lambda: Event.objects.get(
        host_id=host.pk, kind="booted_new_version", data__rollout=entry.rollout_id).data)()


async def boots(host, entry) -> list[str]:
    return await sync_to_async(lambda: list(Event.objects.filter(
        host_id=host.pk, kind="booted_new_version", data__rollout=entry.rollout_id).values_list("message", flat=True)))()


async def _events_with_marker(host) -> bool:
    return await sync_to_async(Event.objects.filter(host_id=host.pk, data__marker=1).exists)()
