"""FleetLock server (Zincati's lock manager protocol, DESIGN §4) on the same semaphores as the agents.

``POST /fleetlock/<org secret>/v1/pre-reboot`` and ``…/v1/steady-state`` with the header
``fleet-lock-protocol: true`` and the body ``{"client_params": {"id": "...", "group": "..."}}``
(Zincati sends it pretty-printed and without a Content-Type).  Success is 200 with an empty JSON
object; an error is non-200 with ``{"kind", "value"}``, kinds from ``choices.FleetLockError``.
"""
from __future__ import annotations

import json
import re

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from agent.locksmith import ETCD_UNAVAILABLE, NO_SLOTS, LockError

from . import etcd
from .choices import FleetLockError

GROUP_RE = re.compile(r"^[a-zA-Z0-9.-]+$")
MAX_BODY = 16 * 1024
MAX_ID = 255


class Rejection(Exception):
    def __init__(self, kind: str, value: str | None = None):
        super().__init__(value or FleetLockError(kind).label)
        self.kind = kind
        self.value = value or FleetLockError(kind).label


def rejection(kind: str, value: str | None = None) -> JsonResponse:
    exc = Rejection(kind, value)
    response = JsonResponse({"kind": exc.kind, "value": exc.value}, status=FleetLockError.status(kind))
    if kind == FleetLockError.METHOD_NOT_ALLOWED:
        response["Allow"] = "POST"
    return response


def parse(request) -> tuple[str, str]:
    """(id, group) of a FleetLock request, or Rejection."""
    if request.method != "POST":
        raise Rejection(FleetLockError.METHOD_NOT_ALLOWED)
    if request.headers.get("fleet-lock-protocol") != "true":  # exactly, as the protocol and airlock say
        raise Rejection(FleetLockError.MISSING_HEADER)
    if len(request.body) > MAX_BODY:
        raise Rejection(FleetLockError.BAD_REQUEST, f"the body is larger than {MAX_BODY} bytes")
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise Rejection(FleetLockError.BAD_REQUEST, "the body is not JSON") from None
    params = body.get("client_params") if isinstance(body, dict) else None
    if not isinstance(params, dict):
        raise Rejection(FleetLockError.BAD_REQUEST, "the body needs a client_params object")
    # Zincati before 0.0.10 called the id node_uuid.
    node_id = params.get("id", params.get("node_uuid"))
    group = params.get("group")
    if not isinstance(node_id, str) or not node_id.strip() or len(node_id) > MAX_ID:
        raise Rejection(FleetLockError.BAD_REQUEST, "client_params.id must be a non-empty string")
    if not isinstance(group, str) or not GROUP_RE.match(group) or len(group) > 100:
        raise Rejection(FleetLockError.BAD_GROUP, f"group {str(group)[:100]!r} does not match ^[a-zA-Z0-9.-]+$")
    return node_id.strip(), group


def _handle(request, secret: str, operation: str):
    from .models import FleetLockSecret

    try:
        node_id, lock_group = parse(request)
    except Rejection as exc:
        return rejection(exc.kind, exc.value)
    organization = FleetLockSecret.objects.authenticate(secret)
    if organization is None:
        refused = rejection(FleetLockError.NOT_FOUND, "unknown FleetLock URL: copy it again from the locks page")
        refused._has_been_logged = True  # django.request would log the path, secret included
        return refused
    if not etcd.configured():
        return rejection(FleetLockError.ETCD_NOT_CONFIGURED, str(etcd.EtcdNotConfigured()))
    from fleetweb.fleet.models import Group

    from .models import GroupLock

    # A FleetLock group named like a fleet group shares that group's semaphore and max.
    group = Group.objects.select_related("organization").filter(organization=organization, slug=lock_group).first()
    default_max = group.max_concurrent_reboots if group else 1
    try:
        smith = GroupLock.locksmith_for(organization, lock_group, default_max)
        sem = smith.lock(node_id) if operation == "lock" else smith.unlock(node_id)
    except LockError as exc:
        if exc.code == NO_SLOTS:
            return rejection(FleetLockError.LOCK_UNAVAILABLE, str(exc))
        if exc.code == ETCD_UNAVAILABLE:
            return rejection(FleetLockError.ETCD_UNAVAILABLE, str(exc))
        return rejection(FleetLockError.BAD_REQUEST, str(exc))
    if group is not None:  # bookkeeping ("since"), events and live notices as for agents
        GroupLock(group).observe(sem.holders, actor=f"fleetlock:{node_id}")
    return JsonResponse({})


# Any method reaches the view: a client gets its answer as a protocol error, {kind, value}.
@csrf_exempt
def pre_reboot(request, secret):
    return _handle(request, secret, "lock")


@csrf_exempt
def steady_state(request, secret):
    return _handle(request, secret, "unlock")
