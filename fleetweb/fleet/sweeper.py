"""The safety net behind instant revocation: every FLEET_CREDENTIAL_RECHECK seconds each web process
checks, in one query, that the credentials of its open agent sockets are still valid, and closes
(4403) those that are not.  A close published through the hub can be lost while a process
re-subscribes to Redis; this bounds how long such a socket stays open."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from channels.db import database_sync_to_async
from django.conf import settings

from agent import protocol

from .models import HostCredential

log = logging.getLogger(__name__)

Closer = Callable[[int], Awaitable[None]]
_open: dict[str, set[Closer]] = {}
_task: asyncio.Task | None = None


def track(lookup: str, close: Closer) -> None:
    """Remember an open socket authenticated with credential ``lookup``; starts the sweep loop."""
    global _task
    _open.setdefault(lookup, set()).add(close)
    if _task is None or _task.done():
        _task = asyncio.get_running_loop().create_task(_loop())


def untrack(lookup: str, close: Closer) -> None:
    closers = _open.get(lookup)
    if closers is not None:
        closers.discard(close)
        if not closers:
            del _open[lookup]


@database_sync_to_async
def _valid(lookups: list[str]) -> set[str]:
    return set(HostCredential.objects.filter(lookup__in=lookups, revoked_at__isnull=True)
               .values_list("lookup", flat=True))


async def sweep() -> int:
    """Close every open socket whose credential was revoked or whose host is gone; returns how many."""
    lookups = list(_open)
    closed = 0
    for start in range(0, len(lookups), 1000):
        chunk = lookups[start:start + 1000]
        valid = await _valid(chunk)
        for lookup in chunk:
            if lookup in valid:
                continue
            for close in list(_open.get(lookup, ())):
                closed += 1
                await close(protocol.CLOSE_REVOKED)
    if closed:
        log.info("credential recheck: closed %d socket(s) with a revoked credential", closed)
    return closed


async def _loop() -> None:
    while _open:
        await asyncio.sleep(settings.FLEET_CREDENTIAL_RECHECK)
        try:
            await sweep()
        except Exception:  # the database may be away for a while: try again next round
            log.exception("credential recheck failed")
