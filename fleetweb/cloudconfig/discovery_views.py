"""Dashboard pages of the etcd discovery service: the organization's tokens and their members.
Unowned tokens (created anonymously at /discovery/new) are listed for staff only."""
from __future__ import annotations

from django.db.models import Count, Q
from django.http import HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from fleetweb.core.htmx import template_for
from fleetweb.core.views import can_operate, member_required, require_operator

from .discovery import token_url
from .discovery_models import DEFAULT_SIZE, MAX_SIZE, DiscoveryToken

INVALID = 422


def visible_tokens(request):
    """The organization's tokens, plus the unowned ones for staff."""
    scope = Q(organization=request.organization)
    if request.user.is_staff:
        scope |= Q(organization__isnull=True)
    return DiscoveryToken.objects.filter(scope).select_related("organization", "created_by")


@never_cache
@member_required
def token_list(request):
    error, status = None, 200
    if request.method == "POST":
        require_operator(request)
        try:
            size = int(request.POST.get("size", DEFAULT_SIZE))
        except ValueError:
            size = 0
        if 1 <= size <= MAX_SIZE:
            token = DiscoveryToken.objects.issue(size, organization=request.organization, created_by=request.user,
                                                 name=request.POST.get("name", "").strip())
            return redirect("discovery-detail", pk=token.pk)
        error, status = f"The size is a number of members between 1 and {MAX_SIZE}.", INVALID
    elif request.method != "GET":
        return HttpResponseNotAllowed(["GET", "POST"])
    tokens = visible_tokens(request).annotate(n=Count("members"))
    context = {"tokens": tokens, "nav": "discovery", "can_operate": can_operate(request), "error": error,
               "max_size": MAX_SIZE, "default_size": DEFAULT_SIZE}
    return render(request, "cloudconfig/discovery_list.html", context, status=status)


@never_cache
@member_required
def token_detail(request, pk):
    token = get_object_or_404(visible_tokens(request), pk=pk)
    context = {"token": token, "members": token.members.all(), "url": token_url(token.token), "nav": "discovery",
               "can_operate": can_operate(request)}
    return render(request, template_for(request, "cloudconfig/discovery_detail.html",
                                        "htmx/cloudconfig/discovery_members.html"), context)


@require_POST
@member_required
def member_remove(request, pk, member_id):
    token = get_object_or_404(visible_tokens(request), pk=pk)
    require_operator(request)
    token.remove(member_id)
    return redirect("discovery-detail", pk=token.pk)
