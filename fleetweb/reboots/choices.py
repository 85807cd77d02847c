"""Constants of the reboots domain, each with its colour (templates never pick one)."""
from django.db import models

from fleetweb.fleet.choices import EventKind

# The activity-log kinds this app writes live in the one table of kinds (with their colours).
LockEventKind = EventKind


class FleetLockError(models.TextChoices):
    """The fixed set of FleetLock error kinds (``{"kind", "value"}`` bodies) and their HTTP status."""

    METHOD_NOT_ALLOWED = "method_not_allowed", "FleetLock requests are POST"
    MISSING_HEADER = "missing_header", "the fleet-lock-protocol: true header is required"
    BAD_REQUEST = "bad_request", "the body is not {\"client_params\": {\"id\", \"group\"}}"
    BAD_GROUP = "bad_group", "the group must match ^[a-zA-Z0-9.-]+$"
    NOT_FOUND = "not_found", "unknown FleetLock URL"
    LOCK_UNAVAILABLE = "lock_unavailable", "no free reboot slot in the group"
    ETCD_UNAVAILABLE = "etcd_unavailable", "etcd did not answer"
    ETCD_NOT_CONFIGURED = "etcd_not_configured", "the server has no etcd configured"

    @classmethod
    def status(cls, kind: str) -> int:
        return {cls.METHOD_NOT_ALLOWED: 405, cls.MISSING_HEADER: 400, cls.BAD_REQUEST: 400, cls.BAD_GROUP: 400, cls.NOT_FOUND: 404,
                cls.LOCK_UNAVAILABLE: 409, cls.ETCD_UNAVAILABLE: 503, cls.ETCD_NOT_CONFIGURED: 503}[kind]


# A holder's state on the locks page.
HOLDER_COLOURS = {"holding": "orange", "stuck": "red"}
