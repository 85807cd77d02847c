"""Live updates for open dashboard pages, through the channel layer (group per organization)."""
from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)


def ui_group(organization_id: int) -> str:
    return f"fleet.org-{organization_id}"


def to_ui(organization_id: int, payload: dict) -> None:
    """Tell every dashboard page of the organization that something changed (sync callers)."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(ui_group(organization_id), {"type": "ui.message", "payload": payload})
    except Exception as exc:  # the dashboard missing one update must not fail a write
        log.warning("live update not sent: %s", exc)


async def ato_ui(organization_id: int, payload: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(ui_group(organization_id), {"type": "ui.message", "payload": payload})
    except Exception as exc:
        log.warning("live update not sent: %s", exc)
