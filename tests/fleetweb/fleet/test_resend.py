"""What reconciliation resends (``Host.objects.resend_frames``), read for a whole batch: after Redis
was down during a switch of a large group, every heartbeat of the next interval finds its agent
behind, and a read per host on the agents' database thread held every status write behind it
(seen in bench/fanin.py: a switch of 5,000 agents acknowledged after 19 s instead of 1.5 s)."""
from __future__ import annotations

import io
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from fleetweb.fleet.models import Group, Host
from fleetweb.updates.choices import HostUpdateState
from fleetweb.updates.models import Release

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet(acme, web_group, make_host):
    db_group = Group.objects.create(organization=acme, name="db", slug="db", channel=acme.channels.get(name="beta"))
    web = [make_host(web_group, hostname=f"web-{i}") for i in range(4)]
    db = [make_host(db_group, hostname=f"db-{i}") for i in range(4)]
    return web, db


def queries(requests) -> tuple[int, list]:
    with CaptureQueriesContext(connection) as ctx:
        frames = Host.objects.resend_frames(requests)
    return len(ctx.captured_queries), frames


def test_a_batch_costs_the_same_queries_whatever_its_size(fleet):
    web, db = fleet
    few, _ = queries([(web[0].pk, True, None), (db[0].pk, True, None)])
    many, frames = queries([(h.pk, True, None) for h in web + db])
    assert many == few
    assert [(f["type"], f["group"], f["channel"]) for (f,) in frames] == \
        [("policy", "web", "stable")] * 4 + [("policy", "db", "beta")] * 4
    revisions = {h.pk: h.group.policy_revision for h in web + db}
    assert [f["revision"] for (f,) in frames] == [revisions[h.pk] for h in web + db]


def test_each_request_gets_what_it_asked_for(fleet, acme):
    web, db = fleet
    release = Release.objects.create_from_upload(acme, "200.0.0", io.BytesIO(b"usr image" * 100), actor="alice")
    rollouts = acme.channels.get(name="stable").publish(release, "alice")
    (rollout,) = rollouts
    # The hosts never connected, so the rollout waits for them: grant one as the worker would.
    assert rollout.hosts.filter(host=web[0]).update(state=HostUpdateState.GRANTED, granted_at=timezone.now()) == 1
    granted = [web[0].pk]
    gone = uuid.uuid4()
    frames = Host.objects.resend_frames([
        (granted[0], False, rollout.pk),        # the update only
        (granted[0], True, rollout.pk),         # both, policy first
        (granted[0], False, rollout.pk + 1000),  # a grant in another rollout: nothing
        (db[0].pk, False, rollout.pk),          # no grant for this host: nothing
        (gone, True, rollout.pk),               # a deleted host: nothing
    ])
    assert [[f["type"] for f in fs] for fs in frames] == [["update"], ["policy", "update"], [], [], []]
    update = frames[0][0]
    assert (update["version"], update["rollout"]) == ("200.0.0", rollout.pk)
    assert frames[1][0]["group"] == "web"
