"""Per-connection frame budgets of the agent websocket (issue 9 §12): a leaky bucket per connection
and budget (the maintained ``aiolimiter``), in this process's memory.

In memory and per connection on purpose: the limit protects the process holding the socket; a host
reconnecting to flood again pays the credential check and the agent's backoff on close 4429.

A bucket is a handful of numbers on the connection, checked in a few microseconds on the event
loop.  ``limits``' in-memory moving window, used here before, kept a timestamp list per connection
and budget and rescanned every key from a timer thread every 10 ms: from 1,000 agents up that
thread used about 30 % of a core and each frame's check cost 170-260 µs (issue 10).
"""
from __future__ import annotations

from aiolimiter import AsyncLimiter
from django.conf import settings

from fleetweb.core import ratelimit

# Which budget a frame type draws from (pong keeps the host's liveness: it shares the status budget).
BUDGET_OF = {"hello": "hello", "event": "event", "status": "status", "pong": "status"}


class FrameLimiter:
    """The budgets of one connection, and how many frames it sent over budget since the last one
    that fit: the first is answered with a warning, ``FLEET_AGENT_RATE_TOLERANCE`` close the socket.

    A budget of N per period lets a burst of N frames through, then one every period / N."""

    __slots__ = ("buckets", "over", "tolerance")

    def __init__(self):
        self.tolerance = settings.FLEET_AGENT_RATE_TOLERANCE
        self.over = 0
        self.buckets: dict[str, AsyncLimiter] = {}

    @staticmethod
    def _bucket(budget: str) -> AsyncLimiter:
        limit = ratelimit.rate(settings.FLEET_AGENT_FRAME_LIMITS[budget])
        return AsyncLimiter(limit.amount, limit.get_expiry())

    async def check(self, frame_type: str) -> str:
        """"ok", "warn" (drop the frame, tell the agent), "drop" or "close" (drop and close with 4429)."""
        budget = BUDGET_OF.get(frame_type)
        if budget is None:
            return "ok"
        bucket = self.buckets.get(budget)
        if bucket is None:
            bucket = self.buckets[budget] = self._bucket(budget)
        if bucket.has_capacity():
            await bucket.acquire()  # there is room: takes it without waiting
            self.over = 0
            return "ok"
        self.over += 1
        return "close" if self.over >= self.tolerance else ("warn" if self.over == 1 else "drop")

    def forget(self) -> None:
        """Drop this connection's counts (the socket closed)."""
        self.buckets.clear()
