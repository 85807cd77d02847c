"""Rate limits shared by every web process: the maintained ``limits`` library, stored in Redis when
``REDIS_URL`` is set (several processes count together), else in this process's memory.

Without its storage (Redis down) a limit fails open: requests are served uncounted and a warning
is logged (once a minute), rather than every request that checks a limit answering 500."""
from __future__ import annotations

import logging
import time
from functools import cache

import redis
from django.conf import settings
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter


@cache
def limiter() -> MovingWindowRateLimiter:
    uri = settings.REDIS_URL or "memory://"
    return MovingWindowRateLimiter(storage_from_string(uri))


@cache
def rate(text: str):
    """A rate such as ``"20/minute"`` (limits' notation), parsed once."""
    return parse(text)


log = logging.getLogger(__name__)

STORAGE_ERRORS = (redis.RedisError, OSError)
_warned_at = 0.0


def _storage_down(exc: Exception) -> bool:
    global _warned_at
    now = time.monotonic()
    if now - _warned_at >= 60:
        _warned_at = now
        log.warning("rate limits are not counted: their storage is unreachable (%s)", exc)
    return True


def allowed(rate_text: str, *keys: str) -> bool:
    """True while ``keys`` are under the rate; does not count a hit."""
    try:
        return limiter().test(rate(rate_text), settings.FLEET_REDIS_PREFIX, *keys)
    except STORAGE_ERRORS as exc:
        return _storage_down(exc)


def hit(rate_text: str, *keys: str) -> bool:
    """Count one hit; False when that goes over the rate."""
    try:
        return limiter().hit(rate(rate_text), settings.FLEET_REDIS_PREFIX, *keys)
    except STORAGE_ERRORS as exc:
        return _storage_down(exc)


def reset() -> None:
    """Forget every count (tests)."""
    limiter().storage.reset()
