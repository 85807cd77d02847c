"""The dashboard socket: each open page joins its organization's group and gets small change
notices; pages then refresh the affected fragments (htmx) so the HTML comes from one place."""
from __future__ import annotations

import asyncio
import json

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from fleetweb.core import live
from fleetweb.core.live import ui_group

COALESCE_SECONDS = 0.25


class UiConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.organization_id = await self._organization_id(user)
        if self.organization_id is None:
            await self.close(code=4403)
            return
        self.group = ui_group(self.organization_id)
        self._pending: list[dict] = []
        self._dropped = 0
        self._flush: asyncio.TimerHandle | None = None
        live.bind_loop()
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    @database_sync_to_async
    def _organization_id(self, user):
        from fleetweb.tenancy.models import Membership

        session = self.scope.get("session")
        org_id = session.get("organization_id") if session else None
        qs = Membership.objects.filter(user=user)
        m = (qs.filter(organization_id=org_id).first() if org_id else None) or qs.order_by("id").first()
        return m.organization_id if m else None

    async def disconnect(self, code):
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        return  # the page only listens

    async def ui_batch(self, message):
        # Coalesce bursts (a thousand hosts acknowledging a switch) into one frame per 250 ms.
        self._pending.extend(message["payloads"])
        self._dropped += max(message.get("count", 0) - len(message["payloads"]), 0)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(
                COALESCE_SECONDS, lambda: asyncio.ensure_future(self._send_pending()))

    async def _send_pending(self):
        batch, self._pending, self._flush = self._pending, [], None
        dropped, self._dropped = self._dropped, 0
        if batch:
            await self.send(text_data=json.dumps({"type": "changes", "changes": batch[-200:],
                                                  "count": len(batch) + dropped}))
