"""Group commit for agent heartbeats.

Every `status` frame is persisted, but one UPDATE per frame would cap a process at a few
hundred frames per second.  Frames that arrive within one tick (50 ms) are merged per host and
written with a single bulk UPDATE; the sending consumer awaits the write, so a frame is only
"processed" once it is in the database.
"""
from __future__ import annotations

import asyncio
import logging

from channels.db import database_sync_to_async
from django.db import close_old_connections, transaction

log = logging.getLogger(__name__)

FIELDS = ("last_seen", "update_status", "version", "partitions", "status_seq", "online")


class StatusWriter:
    def __init__(self, tick: float = 0.05, max_batch: int = 2000):
        self.tick = tick
        self.max_batch = max_batch
        self._pending: dict = {}
        self._waiters: list[asyncio.Future] = []
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, host_id, connection_id, fields: dict) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._task, self._pending, self._waiters = loop, None, {}, []
        self._pending[host_id] = (connection_id, fields)
        fut = loop.create_future()
        self._waiters.append(fut)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        await fut

    async def _run(self) -> None:
        while self._pending:
            await asyncio.sleep(self.tick)
            batch, waiters = self._pending, self._waiters
            self._pending, self._waiters = {}, []
            try:
                await database_sync_to_async(self._write)(batch)
            except Exception as exc:  # keep the sockets: report the failure to each sender
                log.exception("status write failed")
                for w in waiters:
                    if not w.done():
                        w.set_exception(exc)
                continue
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    @staticmethod
    def _write(batch: dict) -> None:
        from .models import Host

        close_old_connections()
        with transaction.atomic():
            # Only the host's current connection may write its state: a frame from a socket that a
            # reconnect (e.g. after a reboot) replaced must not overwrite the fresh hello.
            current = dict(Host.objects.select_for_update().filter(pk__in=list(batch))
                           .values_list("pk", "connection_id"))
            objs = [Host(pk=pk, **{f: fields[f] for f in FIELDS}) for pk, (conn, fields) in batch.items()
                    if current.get(pk) == conn]
            if objs:
                Host.objects.bulk_update(objs, FIELDS, batch_size=1000)


writer = StatusWriter()
