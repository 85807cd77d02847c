"""Locks pages: every group's reboot semaphore, unlock / set-max for admins, the FleetLock URL.
The rules live on GroupLock / FleetLockSecret (models.py); the API shares them."""
from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from agent.locksmith import LockError
from fleetweb.core.htmx import is_htmx, template_for
from fleetweb.core.views import member_required
from fleetweb.fleet.models import Group
from fleetweb.tenancy.choices import Role

from . import etcd
from .models import FleetLockSecret, GroupLock

# 422/409 are swapped in place by htmx (base.html), like the other dashboard forms.
INVALID = 422


def is_admin(request) -> bool:
    return Role.at_least(request.role, Role.ADMIN)


def require_admin(request) -> None:
    if not is_admin(request):
        raise PermissionDenied("This needs the admin role.")


def org_groups(request):
    return Group.objects.filter(organization=request.organization).select_related("organization")


def _fleetlock(request, secret: str | None = None) -> dict:
    current = FleetLockSecret.objects.filter(organization=request.organization).first()
    return {"fleetlock": current, "fleetlock_secret": secret,
            "fleetlock_url": FleetLockSecret.base_url(secret) if secret else
            (FleetLockSecret.base_url(current.masked) if current else None)}


def _panel_context(request, group, **extra) -> dict:
    return {"group": group, "lock": GroupLock(group).state(), "is_admin": is_admin(request),
            "etcd_configured": etcd.configured(), **extra}


@never_cache
@member_required
def lock_list(request):
    groups = list(org_groups(request))
    panels = [_panel_context(request, g) for g in groups]
    context = {"panels": panels, "nav": "locks", "is_admin": is_admin(request),
               "etcd_configured": etcd.configured(), **_fleetlock(request)}
    return render(request, "reboots/lock_list.html", context)


@never_cache
@member_required
def group_locks(request, pk):
    group = get_object_or_404(org_groups(request), pk=pk)
    context = {"nav": "locks", "panel_fleetlock": True, **_panel_context(request, group), **_fleetlock(request)}
    return render(request, template_for(request, "reboots/group_locks.html", "htmx/reboots/lock_panel.html"),
                  context)


def _after_action(request, group, error: str | None = None):
    if not is_htmx(request) and error is None:
        return redirect("group-locks", pk=group.pk)
    context = _panel_context(request, group, action_error=error)
    template = "htmx/reboots/lock_panel.html" if is_htmx(request) else "reboots/group_locks.html"
    return render(request, template, {**context, **_fleetlock(request), "panel_fleetlock": True},
                  status=409 if error else 200)


def _write(request, group, fn, *args):
    if not etcd.configured():
        return _after_action(request, group, str(etcd.EtcdNotConfigured()))
    try:
        fn(*args, actor=request.user.get_username())
    except LockError as exc:
        return _after_action(request, group, str(exc))
    return _after_action(request, Group.objects.select_related("organization").get(pk=group.pk))


@require_POST
@member_required
def group_unlock(request, pk):
    group = get_object_or_404(org_groups(request), pk=pk)
    require_admin(request)
    holder = request.POST.get("holder", "").strip()
    if not holder:
        return _after_action(request, group, "Say which holder to release.")
    return _write(request, group, GroupLock(group).unlock, holder)


@require_POST
@member_required
def group_set_max(request, pk):
    group = get_object_or_404(org_groups(request), pk=pk)
    require_admin(request)
    try:
        n = int(request.POST.get("max", ""))
        if not 0 <= n <= 10000:
            raise ValueError
    except ValueError:
        return _after_action(request, group, "Max must be a whole number from 0 to 10000.")
    return _write(request, group, GroupLock(group).set_max, n)


@never_cache
@require_POST
@member_required
def fleetlock_rotate(request):
    """Issue or rotate the FleetLock URL, or revoke it (``action=revoke``); admin only."""
    require_admin(request)
    secret = None
    if request.POST.get("action") == "revoke":
        FleetLockSecret.objects.revoke(request.organization, actor=request.user.get_username())
    else:
        _, secret = FleetLockSecret.objects.rotate(request.organization, actor=request.user.get_username())
    # The secret is in this response only: no redirect, nothing stored in clear.
    groups = list(org_groups(request))
    context = {"panels": [_panel_context(request, g) for g in groups], "nav": "locks", "is_admin": True,
               "etcd_configured": etcd.configured(), **_fleetlock(request, secret)}
    return render(request, "reboots/lock_list.html", context)
