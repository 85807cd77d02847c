"""Dashboard pages for cloud-config: an editor per organization, group and host (validated as you
type), revisions with diff and restore, the effective document of a host, the hosts behind on a
group, and the secret fetch URL served to hosts without the agent.  The rules are on the models."""
from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from agent import cloudconfig as cc
from fleetweb.core.htmx import is_htmx
from fleetweb.core.views import can_operate, member_required, require_operator
from fleetweb.fleet.models import Group, Host
from fleetweb.tenancy.choices import Role

from .choices import ApplyState, EntryKind, Level
from .models import (
    CloudConfig,
    FetchUrl,
    HostCloudConfigState,
    InvalidDocument,
    apply_state,
    host_addresses,
    hosts_with_state,
    saving_report,
)

INVALID = 422
URL_NAMES = {Level.ORGANIZATION: "cloudconfig-org", Level.GROUP: "cloudconfig-group", Level.HOST: "cloudconfig-host"}


def _target(request, level, pk=None):
    org = request.organization
    if level == Level.GROUP:
        return get_object_or_404(Group.objects.filter(organization=org).select_related("channel"), pk=pk)
    if level == Level.HOST:
        return get_object_or_404(Host.objects.filter(organization=org).select_related("group"), pk=pk)
    return org


def _document(level, target, create=False) -> CloudConfig:
    if create:
        return {Level.ORGANIZATION: CloudConfig.objects.for_organization, Level.GROUP: CloudConfig.objects.for_group,
                Level.HOST: CloudConfig.objects.for_host}[level](target)
    if level == Level.ORGANIZATION:
        found = CloudConfig.objects.filter(organization=target, group__isnull=True, host__isnull=True)
        return found.select_related("current_revision").first() or CloudConfig(organization=target)
    field = {"group": target} if level == Level.GROUP else {"host": target}
    return CloudConfig.objects.filter(**field).select_related("current_revision").first() or \
        CloudConfig(organization_id=target.organization_id, **field)


def _url(level, target, suffix="") -> str:
    args = [] if level == Level.ORGANIZATION else [target.pk]
    return reverse(URL_NAMES[level] + suffix, args=args)


def _entries(report: cc.Report) -> list[dict]:
    return [{**e.as_dict(), "colour": EntryKind.colour(e.kind), "text": str(e)} for e in report.sorted()]


def _context(request, level, target, doc, **extra) -> dict:
    revisions = list(doc.revisions.select_related("restored_from")[:25]) if doc.pk else []
    content = extra.pop("content", doc.content or "#cloud-config\n")
    report = extra.pop("report", None) or cc.validate(content)
    context = {"level": level, "level_label": Level(level).label, "level_colour": Level.colour(level),
               "target": target, "doc": doc, "content": content, "entries": _entries(report),
               "valid": report.valid, "revisions": revisions, "can_operate": can_operate(request),
               "nav": "cloudconfig", "action": _url(level, target), "base_url": _url(level, target),
               "validate_url": reverse("cloudconfig-validate"),
               "is_admin": Role.at_least(request.role, Role.ADMIN),
               "active_fetch_url": FetchUrl.objects.active_for(target)}
    if level == Level.GROUP:
        context["hosts"] = hosts_with_state(target)
        context["behind"] = sum(1 for h in context["hosts"] if h.cc_state == ApplyState.BEHIND)
    if level == Level.HOST:
        try:
            effective, revision = CloudConfig.objects.effective_for_host(target)
        except cc.TooLarge as exc:
            effective, revision = f"# not served: {exc}\n", 0
        state = HostCloudConfigState.objects.filter(host=target).first()
        applied, errors = (state.applied_revision, state.errors) if state else (None, [])
        st = apply_state(revision, applied, errors)
        context["effective"] = {"content": cc.substitute(effective, host_addresses(target)), "revision": revision,
                                "applied": applied, "errors": errors, "state": st,
                                "state_label": ApplyState(st).label, "colour": ApplyState.colour(st)}
    context.update(extra)
    return context


@never_cache
@member_required
def editor(request, level, pk=None):
    target = _target(request, level, pk)
    if request.method == "GET":
        doc = _document(level, target)
        return render(request, "cloudconfig/editor.html", _context(request, level, target, doc))
    if request.method != "POST":
        return HttpResponseNotAllowed(["GET", "POST"])
    require_operator(request)
    content = request.POST.get("content", "")
    report = saving_report(content)
    if report.valid:
        doc = _document(level, target, create=True)
        try:
            revision = doc.save_content(content, author=request.user)
        except InvalidDocument as exc:
            report = exc.report
        else:
            response = redirect(_url(level, target) + (f"?saved={revision.number}" if revision else "?saved=0"))
            if is_htmx(request):
                response = HttpResponse(status=204, headers={"HX-Location": response["Location"]})
            return response
    # Nothing saved: the editor again with the text as typed and its report next to it.
    doc = _document(level, target)
    return render(request, "cloudconfig/editor.html",
                  _context(request, level, target, doc, content=content, report=report, not_saved=True),
                  status=INVALID)


@require_POST
@member_required
def validate(request):
    """htmx: the report of the text being typed (partial)."""
    report = cc.validate(request.POST.get("content", ""))
    return render(request, "htmx/cloudconfig/report.html", {"entries": _entries(report), "valid": report.valid})


@member_required
@require_GET
def diff(request, level, pk=None):
    target = _target(request, level, pk)
    doc = _document(level, target)
    if doc.pk is None:
        raise Http404("No revisions yet.")
    try:
        to_n = int(request.GET.get("to") or doc.revision_number)
        from_q = request.GET.get("from")
        from_n = int(from_q) if from_q else None
    except ValueError:
        raise Http404("Revision numbers are integers.") from None
    new = get_object_or_404(doc.revisions.all(), number=to_n)
    old = get_object_or_404(doc.revisions.all(), number=from_n) if from_n is not None else new.previous()
    lines = []
    for line in doc.diff(old, new).splitlines():
        cls = "meta" if line.startswith(("---", "+++", "@@")) else \
            "add" if line.startswith("+") else "del" if line.startswith("-") else "ctx"
        lines.append({"text": line, "cls": cls})
    return render(request, "cloudconfig/diff.html", {
        "level": level, "level_label": Level(level).label, "target": target, "doc": doc, "old": old, "new": new,
        "lines": lines, "base_url": _url(level, target), "nav": "cloudconfig",
        "revisions": doc.revisions.all()[:50], "can_operate": can_operate(request)})


@require_POST
@member_required
def restore(request, level, number, pk=None):
    target = _target(request, level, pk)
    require_operator(request)
    doc = _document(level, target)
    if doc.pk is None:
        raise Http404("No revisions yet.")
    old = get_object_or_404(doc.revisions.all(), number=number)
    try:
        new = doc.restore(old, author=request.user)
    except InvalidDocument as exc:
        return render(request, "cloudconfig/editor.html",
                      _context(request, level, target, doc, content=old.content, report=exc.report, not_saved=True),
                      status=INVALID)
    return redirect(_url(level, target) + f"?saved={new.number}")


@never_cache
@require_POST
@member_required
def fetch_url(request, level, pk=None):
    """Rotate (issue) the level's secret fetch URL, shown in this response only, or revoke it
    (``action=revoke``).  Admin only."""
    target = _target(request, level, pk)
    if not Role.at_least(request.role, Role.ADMIN):
        raise PermissionDenied("This needs the admin role.")
    extra = {}
    if request.POST.get("action") == "revoke":
        FetchUrl.objects.revoke_for(target, actor=request.user)
        extra["fetch_url_revoked"] = True
    else:
        _, secret = FetchUrl.objects.rotate(target, created_by=request.user)
        extra["fetch_url"] = FetchUrl.url_for(secret)
    doc = _document(level, target)
    return render(request, "cloudconfig/editor.html", _context(request, level, target, doc, **extra))


@member_required
def group_hosts(request, pk):
    """The "hosts behind" panel (also loaded on the group page)."""
    group = _target(request, Level.GROUP, pk)
    hosts = hosts_with_state(group)
    return render(request, "htmx/cloudconfig/group_hosts.html", {
        "group": group, "hosts": hosts, "behind": sum(1 for h in hosts if h.cc_state == ApplyState.BEHIND)})


@member_required
def index(request):
    org = request.organization
    docs = {(d.group_id, d.host_id): d for d in CloudConfig.objects.filter(organization=org)
            .select_related("current_revision", "host")}
    groups = list(Group.objects.filter(organization=org).order_by("name"))
    for g in groups:
        g.cc_doc = docs.get((g.pk, None))
        g.cc_hosts = hosts_with_state(g)
        g.cc_behind = sum(1 for h in g.cc_hosts if h.cc_state == ApplyState.BEHIND)
        g.cc_failed = sum(1 for h in g.cc_hosts if h.cc_state == ApplyState.FAILED)
    host_docs = [d for (gid, hid), d in docs.items() if hid]
    return render(request, "cloudconfig/index.html", {
        "org_doc": docs.get((None, None)), "groups": groups, "host_docs": host_docs, "nav": "cloudconfig"})


def _unlogged(response):
    # django.request would log the path of a refused request, and the path carries the secret.
    response._has_been_logged = True
    return response


@never_cache
def serve(request, secret):
    """``cloud-config-url=``: the document of the secret's host, group or organization (text/plain).
    An unknown, rotated-away or revoked secret answers 404 and writes nothing."""
    if request.method not in ("GET", "HEAD"):
        return _unlogged(HttpResponseNotAllowed(["GET", "HEAD"]))
    url = FetchUrl.objects.resolve(secret)
    if url is None:
        return _unlogged(HttpResponse("unknown or revoked cloud-config URL\n", status=404,
                                      content_type="text/plain; charset=utf-8"))
    try:
        return HttpResponse(url.document(), content_type="text/plain; charset=utf-8")
    except cc.TooLarge as exc:
        return _unlogged(JsonResponse({"detail": str(exc), "errors": {}, "code": "document_too_large"}, status=409))
