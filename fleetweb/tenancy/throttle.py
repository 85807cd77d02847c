"""Bad API keys are throttled per client address before any key is looked up: a flood of guesses
is refused with 429 cheaply, in every web process (the counts live in Redis when configured)."""
from __future__ import annotations

from django.conf import settings
from rest_framework import exceptions

from fleetweb.core import ratelimit

from .models import ApiKey


class ApiKeyThrottled(exceptions.Throttled):
    default_detail = "Too many requests with an invalid API key from this address; wait and check the key."
    default_code = "throttled"


def client_address(request) -> str:
    return request.META.get("REMOTE_ADDR") or "unknown"


def authenticate_api_key(secret: str, request) -> ApiKey | None:
    """The API key for ``secret``, or None; raises ApiKeyThrottled when this address has sent too
    many invalid keys (FLEET_API_KEY_FAILURE_RATE) -- checked before the lookup."""
    address = client_address(request)
    if not ratelimit.allowed(settings.FLEET_API_KEY_FAILURE_RATE, "api-key-failures", address):
        raise ApiKeyThrottled()
    key = ApiKey.objects.authenticate(secret)
    if key is None:
        ratelimit.hit(settings.FLEET_API_KEY_FAILURE_RATE, "api-key-failures", address)
    return key
