"""Dashboard pages for image builds, and the artifact downloads (dashboard login or API key).

Views stay thin: the rules are on the model (``ImageBuild.objects.request``, ``cancel``,
``publish``).  A refused action is shown in place: 422 for input to fix, 409 for a conflict.
"""
from __future__ import annotations

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from fleetweb.core.htmx import is_htmx, template_for
from fleetweb.core.views import can_operate, member_required, require_operator
from fleetweb.tenancy import throttle
from fleetweb.updates.models import UpdateError
from fleetweb.updates.payloads import ranged_file_response

from .filtersets import ImageBuildFilterSet
from .forms import BuildForm, PublishForm
from .models import BuildArtifact, BuildRefused, ImageBuild

INVALID = 422
CONFLICT = 409


def org_builds(request):
    return ImageBuild.objects.filter(organization=request.organization).select_related("release")


def _status(exc: UpdateError) -> int:
    return CONFLICT if exc.status == CONFLICT else INVALID


def _list_context(request, form=None) -> dict:
    filterset = ImageBuildFilterSet(request.GET, queryset=org_builds(request).defer("log"))
    return {"builds": filterset.qs[:100], "filterset": filterset, "form": form or BuildForm(),
            "can_operate": can_operate(request), "nav": "builds"}


@member_required
def build_list(request):
    if request.method == "POST":
        require_operator(request)
        form = BuildForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                build = ImageBuild.objects.request(request.organization, data["version"], data["channel"],
                                                   data["platforms"], actor=request.user.get_username())
            except BuildRefused as exc:
                form.add_error(exc.field if exc.field in form.fields else None, exc.message)
                return render(request, "builds/build_list.html", _list_context(request, form), status=INVALID)
            return redirect("build-detail", pk=build.pk)
        return render(request, "builds/build_list.html", _list_context(request, form), status=INVALID)
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET", "POST"])
    return render(request, template_for(request, "builds/build_list.html", "htmx/builds/build_table.html"),
                  _list_context(request))


def _detail_context(request, build, **extra) -> dict:
    context = {"build": build, "artifacts": build.artifacts.order_by("id"), "steps": build.step_rows(),
               "can_operate": can_operate(request), "publish_form": PublishForm(), "nav": "builds"}
    context.update(extra)
    return context


@member_required
def build_detail(request, pk):
    build = get_object_or_404(org_builds(request), pk=pk)
    if is_htmx(request):
        return render(request, "htmx/builds/build.html", _detail_context(request, build))
    log_text, log_offset = build.read_log(0)
    if len(log_text) > 256 * 1024:
        log_text = log_text[-256 * 1024:]
    return render(request, "builds/build_detail.html",
                  _detail_context(request, build, log_text=log_text, log_offset=log_offset))


def _after_action(request, build, status=200, **extra):
    if status == 200 and not is_htmx(request):
        return redirect("build-detail", pk=build.pk)
    build.refresh_from_db()
    template = "htmx/builds/build.html" if is_htmx(request) else "builds/build_detail.html"
    context = _detail_context(request, build, **extra)
    if not is_htmx(request):
        context["log_text"], context["log_offset"] = build.read_log(0)
    return render(request, template, context, status=status)


@require_POST
@member_required
def build_cancel(request, pk):
    build = get_object_or_404(org_builds(request), pk=pk)
    require_operator(request)
    if not build.cancel():
        build.refresh_from_db(fields=["status"])
        return _after_action(request, build, CONFLICT, error=f"The build is {build.status}: it cannot be cancelled.")
    return _after_action(request, build)


@require_POST
@member_required
def build_publish(request, pk):
    build = get_object_or_404(org_builds(request), pk=pk)
    require_operator(request)
    form = PublishForm(request.POST)
    if not form.is_valid():
        return _after_action(request, build, INVALID, error="Choose a channel.")
    try:
        release, rollouts = build.publish(form.cleaned_data["channel"], request.user.get_username())
    except UpdateError as exc:  # the build's rules (BuildRefused) or the release / channel rules
        return _after_action(request, build, _status(exc), error=exc.message)
    return _after_action(request, build, notice=f"Published {release.version} on {form.cleaned_data['channel']} "
                                                f"({len(rollouts)} rollouts started).")


@require_GET
@member_required
def build_log(request, pk):
    """The log from ``?offset=`` (bytes) as text; ``X-Log-Offset`` is where to continue."""
    build = get_object_or_404(org_builds(request), pk=pk)
    try:
        offset = max(int(request.GET.get("offset", 0)), 0)
    except ValueError:
        offset = 0
    text, end = build.read_log(offset)
    response = HttpResponse(text, content_type="text/plain; charset=utf-8")
    response["X-Log-Offset"] = str(end)
    return response


def _organization_of(request):
    """The organization of a dashboard session or of an ``Authorization: Bearer`` API key."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        key = throttle.authenticate_api_key(header[len("Bearer "):].strip(), request)
        return key.organization if key is not None else False
    if request.user.is_authenticated:
        return request.organization
    return None


@require_GET
def artifact_download(request, pk, name):
    """Stream one artifact (Range requests, like release payloads); other organizations get 404."""
    try:
        org = _organization_of(request)
    except throttle.ApiKeyThrottled as exc:
        return HttpResponse(f"{exc.detail}\n", status=429, content_type="text/plain")
    if org is False:
        return HttpResponse("invalid or revoked API key\n", status=401, content_type="text/plain",
                            headers={"WWW-Authenticate": "Bearer"})
    if org is None:
        if request.user.is_authenticated:
            raise PermissionDenied("You are not a member of any organization.")
        return redirect_to_login(request.get_full_path())
    artifact = (BuildArtifact.objects.filter(build__organization=org, build_id=pk, name=name)
                .select_related("build").first())
    if artifact is None or not artifact.abspath.is_file():
        raise Http404("no such artifact")
    response = ranged_file_response(request, artifact.abspath, artifact.abspath.stat().st_size,
                                    etag=artifact.sha256)
    response["Content-Disposition"] = f'attachment; filename="{artifact.name}"'
    return response
