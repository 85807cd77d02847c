"""A logging filter that keeps secrets in URLs out of every log line (issue 9, item 9)."""
from __future__ import annotations

import logging
import re

REDACTED = "<redacted>"
_PATTERNS = [
    (re.compile(r"(/cloud-config/)(?!url\b|validate\b|groups/|revisions\b|diff\b)[A-Za-z0-9_\-]{16,}"), r"\1" + REDACTED),
    (re.compile(r"(/fleetlock/)[^/\s?\"]+"), r"\1" + REDACTED),
    (re.compile(r"(/v1/update/)[^/\s?\"]+"), r"\1" + REDACTED),
    (re.compile(r"(/payloads/)[^\s?\"]+"), r"\1" + REDACTED),
    (re.compile(r"([?&]token=)[^&\s\"]+"), r"\1" + REDACTED),
]


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites the message and its string arguments (uvicorn's access log passes the path as one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


# Loggers that may print request paths. A filter on a logger sees only the records logged on it, and
# configuring these in LOGGING would remove the ASGI server's own handlers, so they are added here.
LOGGERS = ["", "django", "django.request", "django.server", "uvicorn.access", "uvicorn.error", "daphne",
           "daphne.access", "django.channels.server"]


def install() -> None:
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
