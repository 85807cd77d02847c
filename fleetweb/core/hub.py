"""Per-process fan-out of server → agent frames.

Agent websockets do not join channel-layer groups (about 140 KiB and a Redis round trip per
connection, see DESIGN §5).  Instead each web process keeps a local map ``key → sockets`` and
subscribes once to one Redis pub/sub channel; a publisher anywhere (a view, a Celery task, another
web process) publishes ``{key, frame}`` and every process delivers it to its own sockets.  Keys are
``host:<uuid>`` and ``group:<id>``.  Without REDIS_URL (one process) delivery is local only.

Pub/sub delivers at most once: a message published while Redis or a subscription is down is lost,
and nothing here resends it.  Publishing never fails the caller (the change it announces is saved);
agents catch up by reconciliation instead: every heartbeat says what the agent applied and the
consumer resends what it missed (``fleetweb.fleet.consumers``), and a lost close is made good by
the credential recheck (``fleetweb.fleet.sweeper``).
"""
from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable

import redis
import redis.asyncio as aioredis
from django.conf import settings

log = logging.getLogger(__name__)

Sender = Callable[[str], Awaitable[None]]

# A lost subscription is retried after 0.25 s, doubling up to 2 s: a web process is back on the
# hub within two seconds of Redis (it used to wait up to 10 s, and granted hosts missed their frames).
RESUBSCRIBE_FIRST = 0.25
RESUBSCRIBE_CAP = 2.0


class Hub:
    def __init__(self) -> None:
        self._local: dict[str, set[Sender]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: asyncio.Task | None = None
        self._ready: asyncio.Event | None = None
        self._sync_redis = None
        self._async_redis = None
        self._outbox: list[str] = []        # messages published from the event loop, not yet sent
        self._sender: asyncio.Task | None = None
        self.lost = 0  # publishes Redis refused (reconciliation makes them good)

    # -- subscribers (consumers, in the event loop) ------------------------------------------
    async def join(self, key: str, send: Sender) -> None:
        await self._ensure_started()
        self._local[key].add(send)

    def leave(self, key: str, send: Sender) -> None:
        senders = self._local.get(key)
        if senders is not None:
            senders.discard(send)
            if not senders:
                del self._local[key]

    async def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use in this process (or a new loop in tests)
            self._loop = loop
            self._listener = None
            self._async_redis, self._outbox, self._sender = None, [], None
            self._ready = asyncio.Event()
            if settings.REDIS_URL:
                self._listener = loop.create_task(self._listen(), name="fleet-hub-listener")
            else:
                self._ready.set()
        await self._ready.wait()

    async def _listen(self) -> None:
        backoff = RESUBSCRIBE_FIRST
        while True:
            client = aioredis.from_url(settings.REDIS_URL)
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(settings.FLEET_HUB_CHANNEL)
                self._ready.set()
                backoff = RESUBSCRIBE_FIRST
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    try:
                        data = json.loads(message["data"])
                        self._deliver(data["key"], data["frame"])
                    except (ValueError, KeyError, TypeError):
                        log.warning("hub: dropped a malformed message")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: keep trying, sockets stay up
                log.warning("hub: redis subscription lost (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RESUBSCRIBE_CAP)
            finally:
                await client.aclose()

    def _deliver(self, key: str, frame: dict | str) -> None:
        senders = self._local.get(key)
        if not senders:
            return
        text = frame if isinstance(frame, str) else json.dumps(frame, separators=(",", ":"))
        asyncio.ensure_future(self._send_all(list(senders), text))

    @staticmethod
    async def _send_all(senders: list[Sender], text: str) -> None:
        """One task for all the sockets of a key, not a task each (a switch of a 10,000-host group):
        a send only writes to the socket's transport, it does not wait for the peer."""
        for send in senders:
            try:
                await send(text)
            except Exception as exc:  # a socket closing under us is not the publisher's problem
                log.debug("hub: send failed: %s", exc)

    # -- publishers (any thread, any process) ------------------------------------------------
    def publish(self, key: str, frame: dict) -> None:
        """Deliver ``frame`` to every socket joined under ``key``, in every web process.

        From a thread (views, tasks) the message is sent to Redis before this returns.  From the
        event loop (a consumer closing the host's older socket) it is queued and the messages queued
        together go out in one pipeline: a reconnect storm of 10,000 sockets must not make 10,000
        blocking Redis round trips on the loop that serves them."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if settings.REDIS_URL:
            message = json.dumps({"key": key, "frame": frame})
            if running is not None and running is self._loop:
                self._outbox.append(message)
                if self._sender is None or self._sender.done():
                    self._sender = running.create_task(self._send_outbox(), name="fleet-hub-publisher")
                return
            if self._sync_redis is None:
                self._sync_redis = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
            try:
                self._sync_redis.publish(settings.FLEET_HUB_CHANNEL, message)
            except (redis.RedisError, OSError) as exc:
                self._lost(1, key, exc)
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # no sockets in this process
        if running is loop:
            self._deliver(key, frame)
        else:
            # A fresh context: the caller's (a sync view's thread) must not leak into the loop, or
            # the consumers' database calls would think they run inside that thread.
            loop.call_soon_threadsafe(self._deliver, key, frame, context=contextvars.Context())

    async def _send_outbox(self) -> None:
        while self._outbox:
            batch, self._outbox = self._outbox, []
            if self._async_redis is None:
                self._async_redis = aioredis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
            try:
                async with self._async_redis.pipeline(transaction=False) as pipe:
                    for message in batch:
                        pipe.publish(settings.FLEET_HUB_CHANNEL, message)
                    await pipe.execute()
            except (redis.RedisError, OSError) as exc:
                self._lost(len(batch), "several keys" if len(batch) > 1 else json.loads(batch[0])["key"], exc)

    def _lost(self, count: int, key: str, exc: Exception) -> None:
        self.lost += count
        log.warning("hub: could not publish to %s (%s); agents catch up on their next heartbeat", key, exc)

    def close(self, key: str, code: int, reason: str, keep: str | None = None) -> None:
        """Close every socket joined under ``key`` (in every web process) with ``code``, except one
        whose own ``keep`` tag (e.g. its credential lookup or connection id) equals ``keep``.
        Sockets see a control frame (``CLOSE_FRAME``) that is never sent on the wire."""
        self.publish(key, {"type": CLOSE_FRAME, "code": code, "reason": reason, "keep": keep})


# The type of the control frame that tells a socket to close itself; agents never see it.
CLOSE_FRAME = "_close"

hub = Hub()
publish = hub.publish
close = hub.close
