from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from django.utils import timezone
from rest_framework import authentication, exceptions

from . import throttle
from .models import ApiKey


class ApiKeyUser(AnonymousUser):
    """The principal of a request made with an API key: it is authenticated, not a person."""

    def __init__(self, key: ApiKey):
        self.key = key

    @property
    def is_authenticated(self) -> bool:  # type: ignore[override]
        return True

    def __str__(self) -> str:
        return f"api-key:{self.key.name}"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer fwk_...``; sets request.organization and request.role."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = request.headers.get("Authorization", "")
        if not header.startswith(self.keyword + " "):
            return None
        key = throttle.authenticate_api_key(header[len(self.keyword) + 1:].strip(), request)
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        if key.last_used is None or (timezone.now() - key.last_used).total_seconds() > 60:
            ApiKey.objects.filter(pk=key.pk).update(last_used=timezone.now())
        request._request.organization = key.organization
        request._request.role = key.role
        return ApiKeyUser(key), key

    def authenticate_header(self, request):
        return self.keyword
