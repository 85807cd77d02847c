"""A websocket endpoint as a plain ASGI application: one object per socket, its messages handled
in the order they arrive, with the method names of channels' consumers (``connect``, ``receive``,
``disconnect``; ``accept``, ``send``, ``close``).

For the sockets that carry the most frames, the agents' (``fleetweb/fleet/consumers.py``).  Channels'
``AsyncConsumer`` reads each message through ``await_many_dispatch``: a new task and an
``asyncio.wait`` per frame, and a task per socket waiting all the time (a fifth of the event
loop's time when 5,000 agents report, measured with py-spy).  A socket that needs channel-layer
groups (the dashboard's) stays a channels consumer.
"""
from __future__ import annotations


class PlainWebsocket:
    """Subclasses implement ``connect`` (call ``accept`` or ``close``), ``receive`` and
    ``disconnect``.  An exception from a handler ends the socket (the server closes it with 1011).
    An instance is the ASGI application of one socket: ``await Consumer()(scope, receive, send)``."""

    scope: dict

    async def __call__(self, scope, receive, send) -> None:
        self.scope = scope
        self._send = send
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                await self.receive(message.get("text"), message.get("bytes"))
            elif kind == "websocket.connect":
                await self.connect()
            elif kind == "websocket.disconnect":
                await self.disconnect(message.get("code", 1005))
                return

    async def connect(self) -> None:
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        pass

    async def disconnect(self, code: int) -> None:
        pass

    async def accept(self) -> None:
        await self._send({"type": "websocket.accept"})

    async def send(self, text_data: str) -> None:
        await self._send({"type": "websocket.send", "text": text_data})

    async def close(self, code: int | None = None) -> None:
        message = {"type": "websocket.close"}
        if code is not None:
            message["code"] = code
        await self._send(message)
