"""One statement for many rows (fleetweb/core/bulk.py), on PostgreSQL (unnest) and SQLite."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from fleetweb.core import bulk
from fleetweb.fleet.models import Host

pytestmark = pytest.mark.django_db


def test_each_row_gets_its_own_values_of_every_kind(web_group, make_host):
    hosts = [make_host(web_group, hostname=f"bulk-{i}") for i in range(3)]
    connection_ids = [uuid.uuid4() for _ in hosts]
    for host, conn in zip(hosts, connection_ids, strict=True):
        Host.objects.filter(pk=host.pk).update(connection_id=conn)
    when = timezone.now() - timedelta(minutes=5)
    rows = [
        [when, "IDLE", "100.0.0", [{"label": "USR-A", "active": True}], 7, True, hosts[0].pk, connection_ids[0]],
        [when + timedelta(seconds=1), "DOWNLOADING", "", [{"label": "USR-B", "version": None}], 8, False, hosts[1].pk,
         connection_ids[1]],
        # the host's socket was replaced: a frame of the older one must not be written
        [when, "REBOOTING", "999.0.0", [], 9, True, hosts[2].pk, uuid.uuid4()],
    ]
    with CaptureQueriesContext(connection) as queries:
        assert bulk.update_rows(Host, ("last_seen", "update_status", "version", "partitions", "status_seq", "online"),
                                ("id", "connection_id"), rows) == []
    if connection.vendor == "postgresql":
        assert len(queries) == 1
    first, second, third = (Host.objects.get(pk=h.pk) for h in hosts)
    assert (first.last_seen, first.update_status, first.version, first.partitions, first.status_seq, first.online) \
        == (when, "IDLE", "100.0.0", [{"label": "USR-A", "active": True}], 7, True)
    assert (second.update_status, second.version, second.partitions, second.status_seq, second.online) \
        == ("DOWNLOADING", "", [{"label": "USR-B", "version": None}], 8, False)
    assert (third.update_status, third.status_seq) == (hosts[2].update_status, hosts[2].status_seq)


def test_changing_writes_and_returns_only_the_rows_whose_value_moves(web_group, make_host):
    hosts = [make_host(web_group, hostname=f"ack-{i}") for i in range(3)]
    Host.objects.filter(pk=hosts[0].pk).update(policy_revision=5, channel="stable")
    moved = bulk.update_rows(Host, ("policy_revision", "channel"), ("id",),
                             [[5, "beta", hosts[0].pk], [6, "beta", hosts[1].pk], [6, "beta", hosts[2].pk],
                              [6, "beta", uuid.uuid4()]], changing="policy_revision")
    assert sorted(moved) == sorted([hosts[1].pk, hosts[2].pk])
    assert Host.objects.get(pk=hosts[0].pk).channel == "stable"     # same revision: untouched
    assert {Host.objects.get(pk=h.pk).channel for h in hosts[1:]} == {"beta"}
    assert bulk.update_rows(Host, ("policy_revision",), ("id",), [], changing="policy_revision") == []


def test_the_host_table_leaves_room_on_its_pages_for_heartbeat_updates():
    """fillfactor 70 on PostgreSQL (migration fleet 0008): heartbeat updates are HOT, no index is
    rewritten.  SQLite has no such setting and the migration leaves it alone."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT reloptions FROM pg_class WHERE relname = %s", [Host._meta.db_table])
            assert cursor.fetchone()[0] == ["fillfactor=70"]
        else:
            cursor.execute("SELECT count(*) FROM fleet_host")  # the table exists, unchanged
            assert cursor.fetchone()[0] >= 0


def test_any_finds_the_rows_of_a_list_of_ids_sent_as_one_array(web_group, make_host):
    hosts = [make_host(web_group, hostname=f"any-{i}") for i in range(3)]
    wanted = [hosts[0].pk, hosts[2].pk, uuid.uuid4()]
    with CaptureQueriesContext(connection) as queries:
        found = set(Host.objects.filter(pk__any=wanted).values_list("pk", flat=True))
    assert found == {hosts[0].pk, hosts[2].pk}
    assert not Host.objects.filter(pk__any=[]).exists()
    if connection.vendor == "postgresql":
        assert "= ANY(" in queries[0]["sql"]


def test_insert_rows_returns_the_new_keys_in_the_order_of_the_rows(web_group, make_host):
    from fleetweb.fleet.models import Event

    host = make_host(web_group, hostname="ins-0")
    when = timezone.now() - timedelta(hours=1)
    rows = [{"organization_id": web_group.organization_id, "kind": "agent_event", "message": f"m{i}",
             "host_id": host.pk if i % 2 else None, "group_id": None, "data": {"i": i, "quote": "a\"b\\c"},
             "created": when + timedelta(seconds=i)} for i in range(5)]
    with CaptureQueriesContext(connection) as queries:
        ids = Event.objects.insert_rows(rows)
    if connection.vendor == "postgresql":
        assert len(queries) == 1
    assert len(ids) == 5
    stored = {e.pk: e for e in Event.objects.filter(pk__in=ids)}
    for i, pk in enumerate(ids):
        e = stored[pk]
        assert (e.message, e.host_id, e.group_id, e.actor, e.data, e.created) == (
            f"m{i}", host.pk if i % 2 else None, None, "", {"i": i, "quote": "a\"b\\c"}, when + timedelta(seconds=i))
    assert Event.objects.insert_rows([]) == []


def test_a_json_null_value_is_stored_as_sql_null_and_a_missing_conversion_is_refused(web_group, make_host):
    host = make_host(web_group, hostname="null-0")
    Host.objects.filter(pk=host.pk).update(connection_id=uuid.uuid4())
    bulk.update_rows(Host, ("connection_id", "last_seen", "address"), ("id",), [[None, None, "10.0.0.7", host.pk]])
    stored = Host.objects.get(pk=host.pk)
    assert (stored.connection_id, stored.last_seen, stored.address) == (None, None, "10.0.0.7")
    with pytest.raises(TypeError, match="no JSON form"):
        bulk._check_kinds([Host._meta.get_field("registered_at"), type("F", (), {
            "name": "odd", "is_relation": False, "get_internal_type": lambda self: "BinaryField"})()])
