"""Rate limits shared by every web process: the maintained ``limits`` library, stored in Redis when
``REDIS_URL`` is set (several processes count together), else in this process's memory."""
from __future__ import annotations

from functools import cache

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


def allowed(rate_text: str, *keys: str) -> bool:
    """True while ``keys`` are under the rate; does not count a hit."""
    return limiter().test(rate(rate_text), settings.FLEET_REDIS_PREFIX, *keys)


def hit(rate_text: str, *keys: str) -> bool:
    """Count one hit; False when that goes over the rate."""
    return limiter().hit(rate(rate_text), settings.FLEET_REDIS_PREFIX, *keys)


def reset() -> None:
    """Forget every count (tests)."""
    limiter().storage.reset()
