"""Request bodies bounded while they are read (issue 9, item 6).

Django's ASGI handler reads the whole request body (spooling it to a temporary file past
FILE_UPLOAD_MAX_MEMORY_SIZE) before any middleware or view runs, so a limit checked in a view comes
too late: a 50 GB chunked POST fills the disk first.  This ASGI middleware sits in front of the
whole HTTP application: it refuses a declared ``Content-Length`` over the route's limit before
reading anything, and counts the bytes of a chunked body as they arrive, answering ``413`` with the
API error shape the moment the limit is crossed.  The application then sees a disconnect and
whatever it sends is dropped.
"""
from __future__ import annotations

import json
import re

from django.conf import settings

CODE = "body_too_large"

# (pattern, settings name) — the first match wins; everything else gets FLEET_MAX_REQUEST_BODY.
ROUTES = [
    (re.compile(r"^/(api/v1/)?releases/?$"), "FLEET_MAX_UPLOAD_SIZE"),
    (re.compile(r"^/(api/v1/agents/|v1/update(/|$)|fleetlock/)"), "FLEET_MAX_AGENT_BODY"),
    (re.compile(r"cloud-config"), "FLEET_MAX_CONFIG_BODY"),
]


def limit_for(path: str) -> int:
    for pattern, name in ROUTES:
        if pattern.search(path):
            return getattr(settings, name)
    return settings.FLEET_MAX_REQUEST_BODY


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:g} {unit}"
        n /= 1024
    return str(n)


async def _refuse(send, limit: int) -> None:
    body = json.dumps({"detail": f"Request body too large (limit {_human(limit)}).", "code": CODE}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: per-route request body limits enforced while reading."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = limit_for(scope["path"])
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    return await _refuse(send, limit)
        received = 0
        refused = False

        async def bounded_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    await _refuse(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not refused:
                await send(message)

        return await self.app(scope, bounded_receive, guarded_send)
