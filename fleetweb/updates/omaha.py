"""The Omaha v3 endpoint (DESIGN §4): hosts running CoreOS's own update_engine, no Fleetweb agent.

``POST /v1/update/`` with ``<request protocol="3.0"><app machineid=… version=… track=… bootid=…>
<ping/><updatecheck/><event eventtype eventresult errorcode/></app></request>``.  The host is the
registered host with that machine id (enrolled by the agent or ``agent register``); its update is
the grant its group's rollout gave it, so Omaha hosts follow the same waves, limits and failure
thresholds as agent hosts.  Events move the rollout entry exactly as the agent's websocket events
do (``RolloutHost.objects.report_event``) and land in the activity log.

An unknown machine id, or one known to more than one organization, gets a plain ``noupdate``: the
answer never tells whether some organization knows the machine.  Nothing is written before the
whole body is parsed; a body over 64 KiB, malformed XML, a DOCTYPE (entity expansion) or another
protocol version is a 400.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from django.db import transaction
from django.http import HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from fleetweb.fleet.choices import EventKind
from fleetweb.fleet.models import Host

from .choices import HostUpdateState, RolloutStatus
from .models import OmahaUrl

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
MAX_APPS = 16
MAX_EVENTS = 8
# The operating system's application ids (Container Linux / Flatcar; update_engine sends the braces).
KNOWN_APPIDS = {"e96281a6-d1af-4bde-9a0a-97b76e56dc57"}
PROTOCOL = "3.0"
SERVER = "fleetweb"
CONTENT_TYPE = "text/xml"

# Omaha event types and results (update_engine's subset).
EVENT_UPDATE_COMPLETE = 3
EVENT_DOWNLOAD_STARTED = 13
EVENT_DOWNLOAD_FINISHED = 14
RESULT_ERROR = 0
RESULT_SUCCESS = 1
RESULT_SUCCESS_REBOOT = 2
ERROR_ROLLED_BACK = 44
# update_engine ORs flags into the high bits of errorcode (dev mode, resumed, test image, test URL).
ERROR_FLAGS = 0xF0000000

# (eventtype, eventresult) → what the host reports, as the agent would (update_status, progress kind).
PROGRESS = {
    (EVENT_DOWNLOAD_STARTED, RESULT_SUCCESS): ("DOWNLOADING", "download started"),
    (EVENT_DOWNLOAD_FINISHED, RESULT_SUCCESS): ("VERIFYING", "download finished"),
}


class OmahaError(Exception):
    """A request we refuse with 400; the message is the short text answer."""


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------

@dataclass
class OmahaEvent:
    type: int
    result: int
    errorcode: int | None = None
    previous_version: str = ""


@dataclass
class OmahaApp:
    appid: str
    version: str
    track: str
    machine_id: str
    boot_id: str
    ping: bool = False
    updatecheck: bool = False
    events: list[OmahaEvent] = field(default_factory=list)


class _NoDoctype(ET.TreeBuilder):
    """expat calls doctype() when a DOCTYPE starts, before any entity is declared: refuse it there
    (whatever the encoding, so a UTF-16 body cannot slip a declaration past a byte check)."""

    def doctype(self, name, pubid, system):
        raise OmahaError("DOCTYPE and entity declarations are not allowed")


def _int(value: str | None) -> int | None:
    try:
        return int((value or "").strip())
    except ValueError:
        return None


def _clean_id(value: str | None) -> str:
    return (value or "").strip().strip("{}").strip()


def parse(body: bytes) -> list[OmahaApp]:
    """The apps of an Omaha v3 request, or OmahaError."""
    if len(body) > MAX_BODY:
        raise OmahaError(f"the body is larger than {MAX_BODY} bytes")
    upper = body.upper()
    if b"<!DOCTYPE" in upper or b"<!ENTITY" in upper:
        raise OmahaError("DOCTYPE and entity declarations are not allowed")
    parser = ET.XMLParser(target=_NoDoctype())
    try:
        parser.feed(body)
        root = parser.close()
    except ET.ParseError as exc:
        raise OmahaError(f"malformed XML: {exc}") from None
    if root.tag != "request":
        raise OmahaError(f"expected a <request> element, not <{root.tag[:50]}>")
    if root.get("protocol") != PROTOCOL:
        raise OmahaError(f"unsupported Omaha protocol {str(root.get('protocol'))[:20]!r}: expected {PROTOCOL}")
    nodes = root.findall("app")
    if len(nodes) > MAX_APPS:
        raise OmahaError(f"too many <app> elements: at most {MAX_APPS}")
    apps = []
    for node in nodes:
        if len(node.findall("event")) > MAX_EVENTS:
            raise OmahaError(f"too many <event> elements in an <app>: at most {MAX_EVENTS}")
        app = OmahaApp(appid=(node.get("appid") or "")[:64], version=(node.get("version") or "").strip()[:64],
                       track=(node.get("track") or "").strip()[:16],
                       machine_id=_clean_id(node.get("machineid") or root.get("machineid"))[:64],
                       boot_id=_clean_id(node.get("bootid"))[:64],
                       ping=node.find("ping") is not None, updatecheck=node.find("updatecheck") is not None)
        for ev in node.findall("event"):
            etype, result = _int(ev.get("eventtype")), _int(ev.get("eventresult"))
            if etype is None or result is None:
                app.events.append(OmahaEvent(-1, -1))  # answered "ok", otherwise ignored
                continue
            app.events.append(OmahaEvent(etype, result, _int(ev.get("errorcode")),
                                         (ev.get("previousversion") or "")[:64]))
        apps.append(app)
    return apps


# ---------------------------------------------------------------------------------------------
# Payload hashes
# ---------------------------------------------------------------------------------------------

def payload_sha1(release) -> str:
    """Hex SHA-1 of a release's payload (Omaha's ``hash``), computed once and cached next to the
    payload as ``<sha256>.sha1``."""
    path = Path(release.path)
    cache = path.with_name(f"{release.sha256}.sha1")
    try:
        cached = cache.read_text().strip()
        if len(cached) == 40:
            return cached
    except FileNotFoundError:
        pass
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".sha1-")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(value + "\n")
        os.replace(tmp, cache)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return value


def _b64(hexdigest: str) -> str:
    return base64.b64encode(bytes.fromhex(hexdigest)).decode()


# ---------------------------------------------------------------------------------------------
# Hosts and rollout entries
# ---------------------------------------------------------------------------------------------

def _current_entry(host_id):
    """The host's latest rollout entry still in flight (any step: an update installed before its
    rollout was paused still reports its reboot)."""
    from .models import RolloutHost

    return (RolloutHost.objects.select_related("rollout__release")
            .filter(host_id=host_id, state__in=HostUpdateState.in_flight())
            .order_by("-granted_at", "-id").first())


def _touch(host, app: OmahaApp, update_status: str | None = None) -> None:
    """What the request tells about the host, in one small UPDATE."""
    fields = {"last_seen": timezone.now(), "online": True}
    if app.version:
        fields["version"] = app.version
    if app.boot_id:
        fields["boot_id"] = app.boot_id
    if app.track:
        fields["channel"] = app.track
    if update_status:
        fields["update_status"] = update_status
    Host.objects.filter(pk=host.pk).update(**fields)


def _record(host, kind: str, label: str, detail: str = "", data: dict | None = None) -> None:
    from fleetweb.fleet.models import Event, _host_changed

    Event.objects.record(host.organization_id, kind,
                         f"Host {host.hostname}: {label}" + (f": {detail[:300]}" if detail else ""),
                         host_id=host.pk, group_id=host.group_id, data=data or {})
    transaction.on_commit(lambda: _host_changed(host.organization_id, host.pk))


def apply_event(host, app: OmahaApp, event: OmahaEvent) -> str | None:
    """Move the host's rollout entry as the agent's event would; returns the host's new
    update_status, or None for an event we do not track."""
    from .models import RolloutHost

    entry = _current_entry(host.pk)
    omaha = {"eventtype": event.type, "eventresult": event.result}
    if event.errorcode is not None:
        omaha["errorcode"] = event.errorcode
    if event.previous_version:
        omaha["previousversion"] = event.previous_version
    base = {"rollout": entry.rollout_id} if entry else {}
    if entry:
        base["version"] = entry.rollout.release.version

    progress = PROGRESS.get((event.type, event.result))
    if progress is not None:
        status, label = progress
        if entry:
            RolloutHost.objects.report_status(host.pk, entry.rollout_id, status, None)
        _record(host, EventKind.UPDATE_PROGRESS, f"{label} (Omaha)" + (f" {base['version']}" if entry else ""),
                data={"kind": status.lower(), **base, "omaha": omaha})
        return status

    if event.type != EVENT_UPDATE_COMPLETE:
        return None
    if event.result == RESULT_SUCCESS:
        kind, data, status = "update_installed", {**base}, "UPDATED_NEED_REBOOT"
    elif event.result == RESULT_SUCCESS_REBOOT:
        if not entry or app.version != entry.rollout.release.version:
            # Not the version we granted (or no grant): nothing moves; the timeout decides.
            _record(host, EventKind.AGENT_EVENT, f"booted version {app.version or '?'} (Omaha)",
                    data={"kind": "booted", **base, "omaha": omaha})
            return "IDLE"
        kind, data, status = "booted_new_version", {**base}, "IDLE"
    elif event.result == RESULT_ERROR:
        code = (event.errorcode or 0) & ~ERROR_FLAGS
        if code == ERROR_ROLLED_BACK:
            kind, status = "rollback", "IDLE"
            data = {**base, "code": f"omaha_{code}",
                    "reason": f"rolled back to the previous version (update_engine error {code})"}
        else:
            kind, status = "update_error", "REPORTING_ERROR_EVENT"
            data = {**base, "code": f"omaha_{code}", "reason": f"update_engine error {code}"}
    else:
        return None
    RolloutHost.objects.report_event(host.pk, kind, data)
    detail = data.get("reason", "")
    version = f" {data['version']}" if "version" in data else ""
    _record(host, kind, f"{EventKind(kind).label.lower()}{version}", detail, data={"kind": kind, **data,
                                                                                 "omaha": omaha})
    return status


def grant_for(host, app: OmahaApp):
    """The in-flight grant to offer on an update check, or None.

    Nothing reaches an Omaha host between its checks, so the rollout's wave does not pick it up
    then: when it is waiting in a running rollout, the wave runs now (under the group's policy, like
    any other wave) and may grant it.
    """
    from .models import Rollout, RolloutHost

    entry = RolloutHost.objects.in_flight_for(host.pk)
    if entry is None:
        waiting = (RolloutHost.objects.filter(host_id=host.pk, state=HostUpdateState.PENDING,
                                              rollout__status=RolloutStatus.RUNNING)
                   .values_list("rollout_id", flat=True).first())
        if waiting is None:
            return None
        Rollout(pk=waiting).advance(checking_host=host.pk)
        entry = RolloutHost.objects.in_flight_for(host.pk)
        if entry is None:
            return None
    release = entry.rollout.release
    if app.version and app.version == release.version and entry.state == HostUpdateState.GRANTED:
        RolloutHost.objects.report_event(host.pk, "already_current", {"rollout": entry.rollout_id})
        return None
    return entry


# ---------------------------------------------------------------------------------------------
# The response
# ---------------------------------------------------------------------------------------------

def _updatecheck_ok(parent, host, entry) -> bool:
    release = entry.rollout.release
    try:
        sha1 = payload_sha1(release)
    except OSError:
        log.exception("payload of release %s is unreadable", release.pk)
        return False
    url = release.download_url(host.pk)
    codebase, name = url.rsplit("/", 1)
    check = ET.SubElement(parent, "updatecheck", status="ok")
    urls = ET.SubElement(check, "urls")
    ET.SubElement(urls, "url", codebase=codebase + "/")
    manifest = ET.SubElement(check, "manifest", version=release.version)
    packages = ET.SubElement(manifest, "packages")
    ET.SubElement(packages, "package", name=name, size=str(release.size), hash=_b64(sha1),
                  hash_sha256=release.sha256, required="true")
    actions = ET.SubElement(manifest, "actions")
    ET.SubElement(actions, "action", {"event": "postinstall", "ChromeOSVersion": release.version,
                                      "sha256": _b64(release.sha256), "needsadmin": "false",
                                      "IsDeltaPayload": "false", "DisablePayloadBackoff": "true"})
    return True


def _app_host(group, app: OmahaApp):
    """The Omaha-managed host of the group's organization this app speaks for (enrolled in the
    group on its first request), or None: no machine id, or an agent-managed host."""
    if not app.machine_id:
        return None
    host, omaha_managed = Host.objects.omaha_managed(group.organization_id, app.machine_id)
    if host is None:
        host = Host.objects.enroll_omaha(group, app.machine_id, version=app.version, boot_id=app.boot_id,
                                         channel=app.track)
        omaha_managed = not host.credentials.exists()
    return host if omaha_managed else None


def answer(apps: list[OmahaApp], group=None) -> bytes:
    """The response.  Without a group (the anonymous ``/v1/update/``) nothing is read or written:
    every update check is ``noupdate``."""
    now = timezone.now()
    root = ET.Element("response", protocol=PROTOCOL, server=SERVER)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    ET.SubElement(root, "daystart", elapsed_seconds=str(int((now - midnight).total_seconds())))
    for app in apps:
        if _clean_id(app.appid).lower() not in KNOWN_APPIDS:
            ET.SubElement(root, "app", appid=app.appid, status="error-unknownApplication")
            continue
        node = ET.SubElement(root, "app", appid=app.appid, status="ok")
        host = _app_host(group, app) if group is not None else None
        status = None
        if host is not None:
            with transaction.atomic():
                for event in app.events:
                    status = apply_event(host, app, event) or status
                _touch(host, app, status)
        if app.ping:
            ET.SubElement(node, "ping", status="ok")
        for _ in app.events:
            ET.SubElement(node, "event", status="ok")
        if app.updatecheck:
            entry = grant_for(host, app) if host is not None else None
            if entry is None or not _updatecheck_ok(node, host, entry):
                ET.SubElement(node, "updatecheck", status="noupdate")
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def _bad_request(message: str) -> HttpResponse:
    return HttpResponse(message + "\n", status=400, content_type="text/plain")


@csrf_exempt
@require_POST
def update(request, secret: str | None = None):
    """``/v1/update/<secret>/``: the group's Omaha URL.  ``/v1/update/`` (no secret): answers
    without reading or writing any host, so an old ``SERVER=`` fails safe."""
    group = None
    if secret is not None:
        group = OmahaUrl.objects.authenticate(secret)
        if group is None:
            refused = HttpResponse("unknown or revoked Omaha URL\n", status=404, content_type="text/plain")
            refused._has_been_logged = True  # django.request would log the path, secret included
            return refused
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_BODY:
        return _bad_request(f"the body is larger than {MAX_BODY} bytes")
    body = request.read(MAX_BODY + 1)
    try:
        apps = parse(body)
    except OmahaError as exc:
        return _bad_request(str(exc)[:200])
    return HttpResponse(answer(apps, group), content_type=CONTENT_TYPE)
