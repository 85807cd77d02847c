"""channels' test communicators with waits fit for a loaded machine.

channels waits 1 s by default for every frame, accept and disconnect; a consumer that reads the
database or subscribes to Redis first can take longer than that on a busy CI host.  Worse,
``disconnect()`` and ``wait()`` do not fail when the second runs out: they cancel the consumer
mid-cleanup and return, and the test then asserts on state the consumer never wrote.  Waiting
longer costs nothing when things work: every wait here ends as soon as its message arrives."""
from __future__ import annotations

from channels.testing import HttpCommunicator as _HttpCommunicator
from channels.testing import WebsocketCommunicator as _WebsocketCommunicator

TIMEOUT = 30


class WebsocketCommunicator(_WebsocketCommunicator):
    async def connect(self, timeout=TIMEOUT):
        return await super().connect(timeout)

    async def receive_from(self, timeout=TIMEOUT):
        return await super().receive_from(timeout)

    async def receive_json_from(self, timeout=TIMEOUT):
        return await super().receive_json_from(timeout)

    async def receive_output(self, timeout=TIMEOUT):
        return await super().receive_output(timeout)

    async def disconnect(self, code=1000, timeout=TIMEOUT):
        return await super().disconnect(code, timeout)

    async def wait(self, timeout=TIMEOUT):
        return await super().wait(timeout)


class HttpCommunicator(_HttpCommunicator):
    async def get_response(self, timeout=TIMEOUT):
        return await super().get_response(timeout)
