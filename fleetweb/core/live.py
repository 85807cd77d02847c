"""Live updates for open dashboard pages, through the channel layer (one group per organization).

Notices are small (`{"kind": "host", "host": id}`, ...); pages refresh the affected fragments.
Inside the web process they are batched: ``to_ui`` only buffers, and a task on the server's event
loop sends one ``ui.batch`` per organization every 100 ms.  A channel switch of 1,000 hosts used
to cost 2,000 blocking Redis round trips on the one database thread; now it is a handful of sends
that nobody waits for.  Outside the web process (Celery, management commands) there is no loop
to hand them to, and notices are sent at once.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections import defaultdict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

BATCH_SECONDS = 0.1

_loop: asyncio.AbstractEventLoop | None = None
_pending: dict[int, list[dict]] = defaultdict(list)
_lock = threading.Lock()
_scheduled = False


def ui_group(organization_id: int) -> str:
    return f"fleet.org-{organization_id}"


def bind_loop() -> None:
    """Called by the websocket consumers: notices from this process go through this loop."""
    global _loop
    _loop = asyncio.get_running_loop()


def needs_loop() -> bool:
    loop = _loop
    return loop is None or loop.is_closed()


def to_ui(organization_id: int, payload: dict) -> None:
    """Tell every dashboard page of the organization that something changed (any thread)."""
    to_ui_many(organization_id, [payload])


def to_ui_many(organization_id: int, payloads: list[dict]) -> None:
    """Several notices for one organization (a batch of 10,000 acks takes the lock once)."""
    global _scheduled
    loop = _loop
    if loop is None or loop.is_closed():
        _send_now(organization_id, payloads)
        return
    with _lock:
        _pending[organization_id].extend(payloads)
        if _scheduled:
            return
        _scheduled = True
    try:
        # A fresh context: the caller's (a request lane's) must not leak into the task.
        loop.call_soon_threadsafe(lambda: loop.create_task(_flush_later()), context=contextvars.Context())
    except RuntimeError:  # the loop closed meanwhile
        with _lock:
            _scheduled = False


async def _flush_later() -> None:
    global _scheduled
    await asyncio.sleep(BATCH_SECONDS)
    with _lock:
        batch = dict(_pending)
        _pending.clear()
        _scheduled = False
    layer = get_channel_layer()
    if layer is None:
        return
    for org_id, payloads in batch.items():
        try:
            await layer.group_send(ui_group(org_id), {"type": "ui.batch", "payloads": payloads[-500:],
                                                      "count": len(payloads)})
        except Exception as exc:  # the dashboard missing one update must not fail anything
            log.warning("live update not sent: %s", exc)


def _send_now(organization_id: int, payloads: list[dict]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(ui_group(organization_id),
                                        {"type": "ui.batch", "payloads": payloads[-500:], "count": len(payloads)})
    except Exception as exc:
        log.warning("live update not sent: %s", exc)
