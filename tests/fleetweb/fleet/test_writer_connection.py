"""The agent writers' database connection (fleetweb/fleet/writer.py): checked at most once a second,
and a batch that fails on a connection that died meanwhile runs again on a new one."""
from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError, connection, connections

from fleetweb.fleet import writer
from fleetweb.fleet.models import Host

pytestmark = pytest.mark.django_db(transaction=True)


def _cut() -> bool:
    """The server ends this thread's database session, as a restart or pg_terminate_backend from
    another session does.  SQLite has no server session to lose: nothing is cut (False)."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("select pg_backend_pid()")
        backend = cursor.fetchone()[0]
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("select pg_terminate_backend(%s)", [backend])
    finally:
        other.close()
    return True


async def test_a_batch_whose_connection_died_runs_again_on_a_new_one(web_group, make_host, monkeypatch):
    host = await sync_to_async(make_host)(web_group, hostname="cut-0")
    monkeypatch.setattr(writer, "_checked_at", float("inf"))  # no health check before the batch: it meets the cut
    cut = await writer.on_db_thread(lambda _batch: _cut())(None)
    calls = []

    def write(batch):
        calls.append(batch)
        return list(Host.objects.filter(pk=host.pk).values_list("hostname", flat=True))

    assert await writer.on_db_thread(write)("b1") == ["cut-0"]
    assert calls == (["b1", "b1"] if cut else ["b1"])  # the first attempt met the dead connection


async def test_a_write_that_keeps_failing_is_reported_not_retried_for_ever(monkeypatch):
    calls = []

    def write(batch):
        calls.append(batch)
        raise OperationalError("the database is down")

    with pytest.raises(OperationalError):
        await writer.on_db_thread(write)("b")
    assert calls == ["b", "b"]
