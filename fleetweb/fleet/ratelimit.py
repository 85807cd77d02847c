"""Per-connection frame budgets of the agent websocket (issue 9 §12), counted by the maintained
``limits`` library (a moving window per connection and budget, in this process's memory).

In memory and per connection on purpose: the limit protects the process holding the socket; a host
reconnecting to flood again pays the credential check and the agent's backoff on close 4429.
"""
from __future__ import annotations

import uuid
from functools import cache

from django.conf import settings
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from fleetweb.core import ratelimit

# Which budget a frame type draws from (pong keeps the host's liveness: it shares the status budget).
BUDGET_OF = {"hello": "hello", "event": "event", "status": "status", "pong": "status"}


@cache
def _limiter() -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(MemoryStorage())


class FrameLimiter:
    """The budgets of one connection, and how many frames it sent over budget since the last one
    that fit: the first is answered with a warning, ``FLEET_AGENT_RATE_TOLERANCE`` close the socket."""

    def __init__(self):
        self.key = uuid.uuid4().hex
        self.rates = settings.FLEET_AGENT_FRAME_LIMITS
        self.tolerance = settings.FLEET_AGENT_RATE_TOLERANCE
        self.over = 0

    def check(self, frame_type: str) -> str:
        """"ok", "warn" (drop the frame, tell the agent), "drop" or "close" (drop and close with 4429)."""
        budget = BUDGET_OF.get(frame_type)
        if budget is None or _limiter().hit(ratelimit.rate(self.rates[budget]), "agent-frames", self.key, budget):
            self.over = 0
            return "ok"
        self.over += 1
        return "close" if self.over >= self.tolerance else ("warn" if self.over == 1 else "drop")

    def forget(self) -> None:
        """Drop this connection's counts (the socket closed)."""
        for budget, text in self.rates.items():
            _limiter().clear(ratelimit.rate(text), "agent-frames", self.key, budget)
