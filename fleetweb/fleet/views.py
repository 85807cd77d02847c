"""Dashboard pages for hosts, groups and enrollment tokens.  Views stay thin: the rules are on
the models (Group.apply_changes, EnrollmentToken.objects.issue, EnrollmentToken.revoke)."""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, F, Q
from django.http import HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from fleetweb.core.htmx import is_htmx, template_for
from fleetweb.core.views import PAGE_SIZE, can_operate, member_required, org_events, require_operator
from fleetweb.updates.choices import ChannelName

from .choices import UpdateStatus
from .filtersets import HostFilterSet
from .forms import GroupCreateForm, GroupSettingsForm, TokenForm
from .models import EnrollmentToken, Group, Host

# 422: htmx is configured (base.html) to swap it, so form errors show in place.
INVALID = 422


def org_hosts(request):
    return Host.objects.filter(organization=request.organization).select_related("group", "group__channel")


def org_groups(request):
    return Group.objects.filter(organization=request.organization).select_related("channel")


# ---------------------------------------------------------------------------------------------
# Hosts
# ---------------------------------------------------------------------------------------------

@member_required
def host_list(request):
    # The same FilterSet as the REST API (fleetweb/fleet/filtersets.py), on the organization's hosts.
    filterset = HostFilterSet(request.GET or None, queryset=org_hosts(request), request=request)
    hosts = filterset.qs if filterset.is_bound and filterset.is_valid() else org_hosts(request)
    page = Paginator(hosts, PAGE_SIZE).get_page(request.GET.get("page"))
    versions = (Host.objects.filter(organization=request.organization).exclude(version="")
                .values_list("version", flat=True).distinct().order_by("version"))
    context = {"filterset": filterset, "page": page, "versions": versions, "nav": "hosts",
               "groups": Group.objects.filter(organization=request.organization).only("id", "name"),
               "channels": ChannelName.choices, "statuses": UpdateStatus.choices,
               "current": {k: request.GET.get(k, "") for k in ("q", "group", "channel", "version", "status",
                                                                "online")}}
    return render(request, template_for(request, "fleet/host_list.html", "htmx/fleet/host_table.html"), context)


@member_required
def host_detail(request, pk):
    host = get_object_or_404(org_hosts(request), pk=pk)
    context = {"host": host, "events": org_events(request).filter(host=host)[:25], "nav": "hosts"}
    return render(request, template_for(request, "fleet/host_detail.html", "htmx/fleet/host_detail.html"), context)


# ---------------------------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------------------------

def _groups_with_counts(request):
    return org_groups(request).annotate(
        n=Count("hosts", distinct=True),
        online=Count("hosts", filter=Q(hosts__online=True), distinct=True),
        applied=Count("hosts", filter=Q(hosts__policy_revision__gte=F("policy_revision")), distinct=True),
    )


@member_required
def group_list(request):
    form = None
    status = 200
    if request.method == "POST":
        require_operator(request)
        form = GroupCreateForm(request.POST, organization=request.organization)
        if form.is_valid():
            group = form.save()
            return redirect("group-detail", pk=group.pk)
        status = INVALID
    elif request.method != "GET":
        return HttpResponseNotAllowed(["GET", "POST"])
    context = {"groups": _groups_with_counts(request), "nav": "groups", "can_operate": can_operate(request),
               "form": form or GroupCreateForm(organization=request.organization)}
    return render(request, "fleet/group_list.html", context, status=status)


def _group_context(request, group, **extra):
    hosts = list(group.hosts.select_related("group").order_by("hostname", "id"))
    applied = sum(1 for h in hosts if h.policy_revision >= group.policy_revision)
    context = {"group": group, "hosts": hosts, "applied": applied, "channels": request.organization.channels.all(),
               "can_operate": can_operate(request), "nav": "groups",
               "settings_form": GroupSettingsForm(instance=group)}
    context.update(extra)
    return context


@member_required
def group_detail(request, pk):
    group = get_object_or_404(org_groups(request), pk=pk)
    return render(request, template_for(request, "fleet/group_detail.html", "htmx/fleet/group_hosts.html"),
                  _group_context(request, group))


def _policy_response(request, group, status=200, **extra):
    """After a save: the policy panel (+ hosts table out of band) for htmx, a redirect otherwise."""
    if status == 200 and not is_htmx(request):
        return redirect("group-detail", pk=group.pk)
    template = "htmx/fleet/group_policy.html" if is_htmx(request) else "fleet/group_detail.html"
    return render(request, template, _group_context(request, group, oob=True, **extra), status=status)


@require_POST
@member_required
def group_channel(request, pk):
    group = get_object_or_404(org_groups(request), pk=pk)
    require_operator(request)
    name = request.POST.get("channel", "")
    channel = request.organization.channels.filter(name=name).first()
    if channel is None:
        return _policy_response(request, group, status=INVALID,
                                channel_error=f"Unknown channel {name[:32]!r}: choose alpha, beta or stable.")
    group.apply_changes({"channel": channel}, actor=request.user.get_username())
    return _policy_response(request, Group.objects.select_related("channel").get(pk=group.pk))


@require_POST
@member_required
def group_settings(request, pk):
    group = get_object_or_404(org_groups(request), pk=pk)
    require_operator(request)
    # Validate on a copy so the page still shows the saved values next to the errors.
    form = GroupSettingsForm(request.POST, instance=org_groups(request).get(pk=pk))
    if form.is_valid():
        try:
            group.apply_changes(form.cleaned_data, actor=request.user.get_username())
        except ValidationError as exc:  # a concurrent change made it invalid: show it, nothing saved
            for field, messages in exc.message_dict.items():
                form.add_error(field if field in form.fields else None, messages)
        else:
            return _policy_response(request, Group.objects.select_related("channel").get(pk=group.pk),
                                    saved=True)
    group = org_groups(request).get(pk=pk)
    return _policy_response(request, group, status=INVALID, settings_form=form)


# ---------------------------------------------------------------------------------------------
# Enrollment tokens
# ---------------------------------------------------------------------------------------------

@never_cache
@member_required
def token_list(request):
    form, created, status = None, None, 200
    if request.method == "POST":
        require_operator(request)
        form = TokenForm(request.POST, organization=request.organization)
        if form.is_valid():
            token, secret = EnrollmentToken.objects.issue(
                form.cleaned_data["group"], name=form.cleaned_data["name"], expires_in=form.expires_in(),
                max_uses=form.cleaned_data["max_uses"], created_by=request.user)
            # The secret is shown in this response only: no redirect, nothing stored.
            created = {"token": token, "secret": secret, "command": token.enrollment_command(secret)}
            form = None
        else:
            status = INVALID
    elif request.method != "GET":
        return HttpResponseNotAllowed(["GET", "POST"])
    tokens = EnrollmentToken.objects.filter(organization=request.organization).select_related("group", "created_by")
    context = {"tokens": tokens, "created": created, "nav": "tokens", "can_operate": can_operate(request),
               "form": form or TokenForm(organization=request.organization),
               "public_url": settings.FLEET_PUBLIC_URL}
    return render(request, "fleet/token_list.html", context, status=status)


@require_POST
@member_required
def token_revoke(request, pk):
    token = get_object_or_404(EnrollmentToken.objects.filter(organization=request.organization), pk=pk)
    require_operator(request)
    token.revoke(actor=request.user.get_username())
    return redirect("token-list")
