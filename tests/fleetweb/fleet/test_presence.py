"""Who counts as online: an agent's host while it heartbeats, a host that only speaks Omaha while it
keeps checking for updates (every 45 min or so with update_engine)."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from fleetweb.fleet.models import Event, Host

pytestmark = pytest.mark.django_db


@pytest.fixture
def presence(settings):
    settings.FLEET_OFFLINE_AFTER = 90
    settings.FLEET_OMAHA_OFFLINE_AFTER = 7200


def seen(host, seconds_ago: float, now, agent: bool):
    Host.objects.filter(pk=host.pk).update(online=True, last_seen=now - timedelta(seconds=seconds_ago),
                                           connection_id=uuid.uuid4() if agent else None)


def states(*hosts):
    return [Host.objects.get(pk=h.pk).online for h in hosts]


def test_an_agent_host_goes_offline_after_missed_heartbeats_and_an_omaha_host_after_missed_checks(
        presence, web_group, make_host):
    now = timezone.now()
    agent, omaha = make_host(web_group, hostname="agent-1"), make_host(web_group, hostname="omaha-1")
    seen(agent, 100, now, agent=True)
    seen(omaha, 100, now, agent=False)
    assert Host.objects.reap_offline(now) == 1
    assert states(agent, omaha) == [False, True]
    assert Host.objects.get(pk=agent.pk).connection_id is None
    assert Event.objects.get(host=agent, kind="went_offline").message == \
        "Host agent-1 went offline: no heartbeat for 90 s"

    seen(omaha, 3600, now, agent=False)                 # one missed check: still online
    assert Host.objects.reap_offline(now) == 0 and states(omaha) == [True]
    seen(omaha, 7201, now, agent=False)
    assert Host.objects.reap_offline(now) == 1 and states(omaha) == [False]
    assert Event.objects.get(host=omaha, kind="went_offline").message == \
        "Host omaha-1 went offline: no update check for 7200 s"
    assert Host.objects.reap_offline(now) == 0           # once


def test_hosts_seen_recently_stay_online(presence, web_group, make_host):
    now = timezone.now()
    agent, omaha = make_host(web_group, hostname="agent-1"), make_host(web_group, hostname="omaha-1")
    seen(agent, 30, now, agent=True)
    seen(omaha, 1800, now, agent=False)
    assert Host.objects.reap_offline(now) == 0 and states(agent, omaha) == [True, True]
    assert not Event.objects.filter(kind="went_offline").exists()
