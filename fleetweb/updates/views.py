"""Dashboard pages for releases, channels, rollouts and a group's rollout policy.

Views stay thin: the rules are on the models (Release.objects.create_from_upload, Channel.publish /
promote / rollback, Rollout.pause / resume / abort, Group.apply_changes).  A refused action
(UpdateError, a state change that does not apply) is shown in place: 422 for input to fix, 409 for
a conflict; base.html lets htmx swap both.
"""
from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Prefetch, Q
from django.http import Http404, HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from fleetweb.core.htmx import is_htmx, template_for
from fleetweb.core.views import can_operate, member_required, org_events, require_operator
from fleetweb.fleet.choices import EventKind
from fleetweb.fleet.models import Event, Group
from fleetweb.tenancy.choices import Role

from .choices import ChannelName, HostUpdateState, RolloutStatus
from .forms import ReleaseChoiceForm, ReleaseUploadForm, RolloutPolicyForm
from .models import Channel, ChannelRelease, OmahaUrl, Release, Rollout, UpdateError

INVALID = 422   # input to fix (form errors)
CONFLICT = 409  # refused in this state (promotion blocked, rollout already paused, ...)
HISTORY_LENGTH = 10


def _status(exc: UpdateError) -> int:
    return CONFLICT if exc.status == CONFLICT else INVALID


def _actor(request) -> str:
    return request.user.get_username()


def can_override(request) -> bool:
    return Role.at_least(request.role, Role.ADMIN)


def org_releases(request):
    return Release.objects.filter(organization=request.organization)


def org_channels(request):
    return Channel.objects.filter(organization=request.organization)


def org_rollouts(request):
    return Rollout.objects.filter(organization=request.organization).select_related("group", "channel", "release")


def with_progress(rollouts):
    """Per-state counts on each rollout in one query (list pages)."""
    return rollouts.annotate(
        n_total=Count("hosts"),
        n_done=Count("hosts", filter=Q(hosts__state__in=HostUpdateState.done())),
        n_failed=Count("hosts", filter=Q(hosts__state__in=HostUpdateState.failed())),
        n_in_flight=Count("hosts", filter=Q(hosts__state__in=HostUpdateState.in_flight())),
    )


# ---------------------------------------------------------------------------------------------
# Releases
# ---------------------------------------------------------------------------------------------

def _release_list_context(request, form=None):
    releases = (org_releases(request).select_related("signing_key")
                .prefetch_related(Prefetch("current_on", queryset=Channel.objects.order_by("position")))
                .annotate(n_rollouts=Count("rollouts", distinct=True)))
    return {"releases": releases, "form": form or ReleaseUploadForm(), "can_operate": can_operate(request),
            "nav": "releases"}


@member_required
def release_list(request):
    if request.method == "POST":
        require_operator(request)
        form = ReleaseUploadForm(request.POST, request.FILES)
        if form.is_valid():
            data = form.cleaned_data
            try:
                release = Release.objects.create_from_upload(
                    request.organization, data["version"], data["payload"], sha256=data["sha256"],
                    notes=data["notes"], actor=_actor(request))
            except UpdateError as exc:
                # Nothing was stored (the model's promise); the form keeps only what was typed.
                form.add_error(exc.field if exc.field in form.fields else None, exc.message)
                return render(request, "updates/release_list.html", _release_list_context(request, form),
                              status=_status(exc))
            return redirect("release-detail", pk=release.pk)
        return render(request, "updates/release_list.html", _release_list_context(request, form), status=INVALID)
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET", "POST"])
    return render(request, "updates/release_list.html", _release_list_context(request))


@member_required
def release_detail(request, pk):
    release = get_object_or_404(org_releases(request).select_related("signing_key"), pk=pk)
    history = ChannelRelease.objects.filter(Q(release=release) | Q(previous=release),
                                            channel__organization=request.organization
                                            ).select_related("channel", "release", "previous")
    rollouts = with_progress(org_rollouts(request).filter(release=release))
    context = {"release": release, "history": history, "rollouts": rollouts, "nav": "releases",
               "current_on": release.current_on.order_by("position")}
    return render(request, "updates/release_detail.html", context)


# ---------------------------------------------------------------------------------------------
# Channels
# ---------------------------------------------------------------------------------------------

def _channel_board(request, errors=None, confirm=None, **extra) -> dict:
    """The three channels left to right, each with what an operator can do to it now."""
    errors = errors or {}
    channels = list(org_channels(request).select_related("current_release").annotate(n_groups=Count("groups"))
                    .order_by("position"))
    releases = list(org_releases(request).only("id", "version", "created"))
    by_name = {c.name: c for c in channels}
    active = {}
    for r in with_progress(org_rollouts(request).filter(status__in=RolloutStatus.active() + (
            RolloutStatus.HALTED,)).order_by("-created")):
        active.setdefault(r.channel_id, []).append(r)
    columns = []
    for ch in channels:
        history = list(ch.history.select_related("release", "previous")[:HISTORY_LENGTH])
        source = by_name.get(ChannelName.before(ch.name))
        candidate = source.current_release if source else None
        blocker = None
        if candidate is not None:
            blocker = (Rollout.objects.filter(release=candidate, channel=source,
                                              status__in=[RolloutStatus.HALTED, RolloutStatus.ABORTED])
                       .select_related("group").first())
        earlier = {}
        for row in ch.history.select_related("release").order_by("-created", "-id"):
            if row.release_id != ch.current_release_id:
                earlier.setdefault(row.release_id, row.release)
        columns.append({
            "channel": ch, "history": history, "source": source, "candidate": candidate, "blocker": blocker,
            "promotable": candidate is not None and candidate.pk != ch.current_release_id,
            "rollback_choices": list(earlier.values()),
            "publish_choices": [r for r in releases if r.pk != ch.current_release_id],
            "rollouts": active.get(ch.pk, []), "error": errors.get(ch.name),
            "confirm": confirm if confirm and confirm["channel"] == ch.name else None,
        })
    context = {"columns": columns, "can_operate": can_operate(request), "can_override": can_override(request),
               "nav": "channels"}
    context.update(extra)
    return context


def _board_response(request, status=200, **extra):
    """After an action: the board fragment for htmx, a redirect (or the page with the error) otherwise."""
    if status == 200 and not is_htmx(request):
        return redirect("channel-list")
    template = "htmx/updates/channels.html" if is_htmx(request) else "updates/channel_list.html"
    return render(request, template, _channel_board(request, **extra), status=status)


@member_required
def channel_list(request):
    return render(request, template_for(request, "updates/channel_list.html", "htmx/updates/channels.html"),
                  _channel_board(request))


def _channel_action(request, name):
    channel = get_object_or_404(org_channels(request), name=name)
    require_operator(request)
    return channel


def _started(channel, rollouts) -> dict:
    return {"notice": {"channel": channel.name, "rollouts": rollouts}}


@require_POST
@member_required
def channel_publish(request, name):
    channel = _channel_action(request, name)
    form = ReleaseChoiceForm(request.POST, releases=org_releases(request))
    if not form.is_valid():
        return _board_response(request, INVALID, errors={channel.name: "Choose a release to publish."})
    try:
        rollouts = channel.publish(form.cleaned_data["release"], _actor(request))
    except UpdateError as exc:
        return _board_response(request, _status(exc), errors={channel.name: exc.message})
    return _board_response(request, **_started(channel, rollouts))


@require_POST
@member_required
def channel_promote(request, name):
    channel = _channel_action(request, name)
    override = request.POST.get("override") == "on"
    if override and not can_override(request):
        raise PermissionDenied("Overriding a failed rollout needs the admin role.")
    try:
        rollouts = channel.promote(_actor(request), override=override)
    except UpdateError as exc:
        return _board_response(request, _status(exc), errors={channel.name: exc.message})
    return _board_response(request, **_started(channel, rollouts))


@require_POST
@member_required
def channel_rollback(request, name):
    """Two steps: choosing a release shows what will happen; only ``confirm`` rolls back."""
    channel = _channel_action(request, name)
    earlier = org_releases(request).filter(channel_history__channel=channel).distinct()
    form = ReleaseChoiceForm(request.POST, releases=earlier)
    if not form.is_valid():
        return _board_response(request, INVALID, errors={channel.name: "Choose a release this channel had before."})
    release = form.cleaned_data["release"]
    if request.POST.get("confirm") != "yes":
        confirm = {"channel": channel.name, "release": release,
                   "current": channel.current_release,
                   "groups": list(channel.groups.values_list("name", flat=True))}
        return render(request, template_for(request, "updates/channel_list.html", "htmx/updates/channels.html"),
                      _channel_board(request, confirm=confirm))
    try:
        rollouts = channel.rollback(release, _actor(request))
    except UpdateError as exc:
        return _board_response(request, _status(exc), errors={channel.name: exc.message})
    return _board_response(request, **_started(channel, rollouts))


# ---------------------------------------------------------------------------------------------
# Rollouts
# ---------------------------------------------------------------------------------------------

@member_required
def rollout_list(request):
    rollouts = with_progress(org_rollouts(request))
    status = request.GET.get("status", "")
    if status in RolloutStatus.values:
        rollouts = rollouts.filter(status=status)
    context = {"rollouts": rollouts[:200], "statuses": RolloutStatus.choices, "current_status": status,
               "nav": "rollouts"}
    return render(request, template_for(request, "updates/rollout_list.html", "htmx/updates/rollout_table.html"),
                  context)


VERSION_EVENT_KINDS = (EventKind.CONNECTED, EventKind.UPDATE_SUCCEEDED, EventKind.ROLLED_BACK)
MAX_CHART_STEPS = 400


def version_series(rollout, now=None) -> dict:
    """Hosts per version over the rollout, as steps: the group's hosts start at the version they
    had (the rollout's ``from_version``, or today's for hosts it skipped) and move with each
    connected / booted-new-version / rollback event that reports a version."""
    now = now or timezone.now()
    start = rollout.created
    end = rollout.finished or now
    state = dict(rollout.group.hosts.values_list("pk", "version"))
    for host_id, version in rollout.hosts.values_list("host_id", "from_version"):
        state[host_id] = version
    events = list(Event.objects.filter(group_id=rollout.group_id, kind__in=VERSION_EVENT_KINDS,
                                       created__gte=start, created__lte=max(end, now))
                  .order_by("created", "id").values_list("created", "host_id", "data"))

    def counts():
        out = {}
        for v in state.values():
            out[v or "unknown"] = out.get(v or "unknown", 0) + 1
        return out

    steps = [(start, counts())]
    for created, host_id, data in events:
        version = (data or {}).get("version")
        if host_id not in state or not isinstance(version, str) or state[host_id] == version:
            continue
        state[host_id] = version
        steps.append((created, counts()))
    end = max(end, steps[-1][0])
    if len(steps) > MAX_CHART_STEPS:  # keep the last state of each time bucket
        span = (end - start).total_seconds() or 1
        buckets = {}
        for t, c in steps:
            buckets[int((t - start).total_seconds() / span * MAX_CHART_STEPS)] = (t, c)
        steps = [buckets[k] for k in sorted(buckets)]
    return {"start": start, "end": end, "steps": steps, "total": len(state), "target": rollout.release.version}


def _rollout_context(request, rollout, **extra) -> dict:
    hosts = list(rollout.hosts.select_related("host").order_by("host__hostname", "id"))
    counts = rollout.counts()
    total = counts["total"] or 1
    context = {
        "rollout": rollout, "group": rollout.group, "hosts": hosts, "counts": counts,
        "states": [{"value": s.value, "label": s.label, "n": counts[s.value],
                    "colour": HostUpdateState.colour(s.value)} for s in HostUpdateState],
        "pct": {"succeeded": 100 * (counts["succeeded"] + counts["skipped"]) / total,
                "failed": 100 * counts["failed_total"] / total,
                "in_flight": 100 * counts["in_flight"] / total},
        "series": version_series(rollout),
        "events": org_events(request).filter(group=rollout.group, created__gte=rollout.created)
                                     .exclude(kind__in=[EventKind.CONNECTED, EventKind.DISCONNECTED])[:15],
        "can_operate": can_operate(request), "nav": "rollouts",
        "can_pause": rollout.status == RolloutStatus.RUNNING,
        "can_resume": rollout.status in (RolloutStatus.PAUSED, RolloutStatus.HALTED),
        "can_abort": rollout.status in RolloutStatus.active() + (RolloutStatus.HALTED,),
    }
    context.update(extra)
    return context


@member_required
def rollout_detail(request, pk):
    rollout = get_object_or_404(org_rollouts(request), pk=pk)
    return render(request, template_for(request, "updates/rollout_detail.html", "htmx/updates/rollout.html"),
                  _rollout_context(request, rollout))


ROLLOUT_ACTIONS = {"pause": "paused", "resume": "resumed", "abort": "aborted"}


@require_POST
@member_required
def rollout_action(request, pk, action):
    if action not in ROLLOUT_ACTIONS:
        raise Http404("Unknown action.")
    rollout = get_object_or_404(org_rollouts(request), pk=pk)
    require_operator(request)
    done = getattr(rollout, action)(actor=_actor(request))
    rollout = org_rollouts(request).get(pk=pk)
    extra, status = {}, 200
    if not done:
        status = CONFLICT
        extra["action_error"] = (f"Cannot {action} a rollout that is {rollout.get_status_display().lower()}.")
    if status == 200 and not is_htmx(request):
        return redirect("rollout-detail", pk=pk)
    return render(request, template_for(request, "updates/rollout_detail.html", "htmx/updates/rollout.html"),
                  _rollout_context(request, rollout, **extra), status=status)


# ---------------------------------------------------------------------------------------------
# A group's rollout policy (a panel of the group page)
# ---------------------------------------------------------------------------------------------

def group_rollout_panel(group) -> dict:
    """What the panel shows besides the form: the group's latest rollout."""
    latest = with_progress(Rollout.objects.filter(group=group).select_related("release")).first()
    return {"latest_rollout": latest}


@require_POST
@member_required
def group_rollout_policy(request, pk):
    group = get_object_or_404(Group.objects.filter(organization=request.organization).select_related("channel"),
                              pk=pk)
    require_operator(request)
    # Validate on a copy, so the page keeps showing the saved values next to the errors.
    form = RolloutPolicyForm(request.POST, instance=Group.objects.get(pk=pk))
    saved = False
    if form.is_valid():
        try:
            group.apply_changes(form.changes(), actor=_actor(request))
            saved = True
        except ValidationError as exc:  # a concurrent change made it invalid: nothing saved
            for field, messages in exc.message_dict.items():
                form.add_error(field if field in form.fields else None, messages)
    group = Group.objects.select_related("channel").get(pk=pk)
    if saved and not is_htmx(request):
        return redirect(reverse("group-detail", args=[pk]) + "#group-rollout-policy")
    status = 200 if saved else INVALID
    panel = {"rollout_form": None if saved else form, "rollout_saved": saved}
    if is_htmx(request):
        return render(request, "htmx/updates/group_rollout_policy.html",
                      {"group": group, "can_operate": can_operate(request), **panel}, status=status)
    from fleetweb.fleet.views import _group_context  # the rest of the group page is the fleet app's

    return render(request, "fleet/group_detail.html", _group_context(request, group, **panel), status=status)


@never_cache
@require_http_methods(["GET", "POST"])
@member_required
def group_omaha_url(request, pk):
    """The group's Omaha URL panel; an admin issues/rotates (the update.conf lines are in this
    response only: no redirect, nothing stored in clear) or revokes it."""
    group = get_object_or_404(Group.objects.filter(organization=request.organization).select_related("channel"),
                              pk=pk)
    secret = None
    if request.method == "POST":
        if not Role.at_least(request.role, Role.ADMIN):
            raise PermissionDenied("This needs the admin role.")
        if request.POST.get("action") == "revoke":
            OmahaUrl.objects.revoke(group, actor=_actor(request))
        else:
            secret = OmahaUrl.objects.rotate(group, actor=_actor(request))[1]
    context = {"group": group, "omaha_url": OmahaUrl.objects.filter(group=group).first(), "omaha_secret": secret,
               "omaha_update_conf": OmahaUrl.update_conf(secret, group) if secret else "",
               "is_admin": Role.at_least(request.role, Role.ADMIN), "nav": "groups"}
    return render(request, template_for(request, "updates/group_omaha_url.html", "htmx/updates/group_omaha_url.html"),
                  context)
