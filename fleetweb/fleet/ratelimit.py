"""Per-connection frame budgets of the agent websocket (issue 9 §12): token buckets.

A bucket holds up to ``burst`` tokens and refills at ``rate`` per second; a frame takes one.  The
clock is injectable so tests drive it by hand (no sleeps).  In-memory and per connection on
purpose: the limit protects the process holding the socket; a host reconnecting to flood again
pays the credential check and the agent's backoff on close 4429.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings


@dataclass
class TokenBucket:
    rate: float                                   # tokens per second
    burst: int                                    # capacity
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)
        self.stamp = self.clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


# Which bucket a frame type draws from (pong keeps the host's liveness: it shares the status budget).
BUCKET_OF = {"hello": "hello", "event": "event", "status": "status", "pong": "status"}


class FrameLimiter:
    """The buckets of one connection, and how many frames it sent over budget since the last one
    that fit: the first is answered with a warning, ``FLEET_AGENT_RATE_TOLERANCE`` close the socket."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        limits = settings.FLEET_AGENT_FRAME_LIMITS
        self.buckets = {name: TokenBucket(rate, burst, clock) for name, (rate, burst) in limits.items()}
        self.tolerance = settings.FLEET_AGENT_RATE_TOLERANCE
        self.over = 0

    def check(self, frame_type: str) -> str:
        """"ok", "warn" (drop the frame, tell the agent) or "close" (drop and close with 4429)."""
        bucket = self.buckets.get(BUCKET_OF.get(frame_type, ""))
        if bucket is None or bucket.take():
            self.over = 0
            return "ok"
        self.over += 1
        return "close" if self.over >= self.tolerance else ("warn" if self.over == 1 else "drop")
