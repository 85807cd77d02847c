"""Dashboard pages that span apps: the overview and the activity log, plus the access helpers
every dashboard view uses (login, organization membership, role)."""
from __future__ import annotations

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.shortcuts import render

from fleetweb.core.htmx import template_for
from fleetweb.fleet.choices import EventKind
from fleetweb.fleet.filtersets import EventFilterSet
from fleetweb.fleet.models import Event, Group, Host
from fleetweb.tenancy.choices import Role

PAGE_SIZE = 50


def member_required(view):
    """Logged in and member of an organization (request.organization set by the middleware)."""

    @login_required
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if request.organization is None:
            raise PermissionDenied("You are not a member of any organization.")
        return view(request, *args, **kwargs)

    return wrapped


def can_operate(request) -> bool:
    return Role.at_least(request.role, Role.OPERATOR)


def require_operator(request) -> None:
    if not can_operate(request):
        raise PermissionDenied("This needs the operator role.")


def org_events(request):
    return Event.objects.filter(organization=request.organization).select_related("host", "group")


@member_required
def overview(request):
    org = request.organization
    hosts = Host.objects.filter(organization=org)
    totals = hosts.aggregate(total=Count("pk"), online=Count("pk", filter=Q(online=True)))
    totals["offline"] = totals["total"] - totals["online"]
    by_version = list(hosts.values("version").annotate(n=Count("pk")).order_by("-n", "version"))
    by_channel = list(hosts.values("group__channel__name").annotate(n=Count("pk")).order_by("group__channel__position"))
    groups = (Group.objects.filter(organization=org).select_related("channel")
              .annotate(n=Count("hosts"), online=Count("hosts", filter=Q(hosts__online=True))))
    context = {
        "totals": totals,
        "by_version": by_version,
        "by_channel": [{"name": r["group__channel__name"], "n": r["n"]} for r in by_channel],
        "groups": groups,
        "events": org_events(request)[:12],
        "nav": "overview",
    }
    return render(request, template_for(request, "core/overview.html", "htmx/core/overview.html"), context)


@member_required
def activity(request):
    filterset = EventFilterSet(request.GET or None, queryset=org_events(request), request=request)
    events = filterset.qs if filterset.is_bound and filterset.is_valid() else org_events(request)
    kind = request.GET.get("kind", "") if filterset.is_bound and filterset.is_valid() else ""
    page = Paginator(events, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {"page": page, "kind": kind, "kinds": EventKind.choices, "nav": "activity"}
    return render(request, template_for(request, "core/activity.html", "htmx/core/activity.html"), context)
