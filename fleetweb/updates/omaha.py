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
protocol version is a 400 (``Bad Omaha Request: <why>``, go-omaha's text and the reason).

The answers follow the upstream servers update_engine was written against (coreos/go-omaha,
flatcar/nebraska; tests/interop/test_omaha_compat.py replays their cases and lists where we
differ on purpose):

- an appid the organization does not serve (``OmahaApplication.objects.serves``) is answered
  ``<app appid status="error-unknownApplication"/>`` with nothing else, and nothing is written;
- events move a host only while it has a rollout entry in flight (update_engine sends a 3/2 with
  every update check); otherwise they are answered ``ok`` and dropped;
- a request whose version is not a version string writes nothing and gets ``noupdate``;
- a release is offered only if it is newer than the host's version (or the rollout downgrades);
- old CoreOS group UUIDs sent as the track are stored as their channel's name;
- ``<app>`` children come in the order ping, updatecheck, event.
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
from .models import VERSION_RE, OmahaApplication, OmahaUrl

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
MAX_APPS = 16
MAX_EVENTS = 8
PROTOCOL = "3.0"
SERVER = "fleetweb"
CONTENT_TYPE = "text/xml"
# The start of every 400 body: go-omaha's text for a request it cannot use, then why.
BAD_REQUEST = "Bad Omaha Request"

# Container Linux's group UUIDs (amd64 and arm64), still found as GROUP= on old hosts: they are
# channels (the mapping nebraska applies, flatcar/nebraska backend/pkg/omaha/omaha.go).
COREOS_GROUP_TRACKS = {
    "5b810680-e36a-4879-b98a-4f989e80b899": "alpha",
    "3fe10490-dd73-4b49-b72a-28ac19acfcdc": "beta",
    "9a2deb70-37be-4026-853f-bfdd6b347bbe": "stable",
    "72834a2b-ad86-4d6d-b498-e08a19ebe54e": "edge",
    "e641708d-fb48-4260-8bdf-ba2074a1147a": "alpha",
    "d112ec01-ba34-4a9e-9d4b-9814a685f266": "beta",
    "11a585f6-9418-4df0-8863-78b2fd3240f8": "stable",
    "b4b2fa22-c1ea-498c-a8ac-c1dc0b1d7c17": "edge",
}

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

    IGNORED = -1  # type and result of an event whose eventtype or eventresult is not a number


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

    @property
    def has_valid_version(self) -> bool:
        """A version string like a release's (``VERSION_RE``): only then is anything written."""
        return bool(VERSION_RE.match(self.version))


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


def _event_int(value: str | None) -> int | None:
    """An event's eventtype/eventresult: missing is 0, as both upstream servers read it (Go's zero
    value), so a 3 without a result is a 3/0 error; not a number is None (the event is dropped)."""
    return 0 if value is None else _int(value)


def _track(value: str | None) -> str:
    track = (value or "").strip()
    return COREOS_GROUP_TRACKS.get(track, track)[:16]


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
        raise OmahaError(f'unsupported omaha protocol: "{(root.get("protocol") or "")[:20]}" (expected {PROTOCOL})')
    nodes = root.findall("app")
    if len(nodes) > MAX_APPS:
        raise OmahaError(f"too many <app> elements: at most {MAX_APPS}")
    apps = []
    for node in nodes:
        if len(node.findall("event")) > MAX_EVENTS:
            raise OmahaError(f"too many <event> elements in an <app>: at most {MAX_EVENTS}")
        app = OmahaApp(appid=(node.get("appid") or "")[:64], version=(node.get("version") or "").strip()[:64],
                       track=_track(node.get("track")),
                       machine_id=_clean_id(node.get("machineid") or root.get("machineid"))[:64],
                       boot_id=_clean_id(node.get("bootid"))[:64],
                       ping=node.find("ping") is not None, updatecheck=node.find("updatecheck") is not None)
        for ev in node.findall("event"):
            etype, result = _event_int(ev.get("eventtype")), _event_int(ev.get("eventresult"))
            if etype is None or result is None:
                app.events.append(OmahaEvent(OmahaEvent.IGNORED, OmahaEvent.IGNORED))  # answered "ok", no more
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
    update_status, or None for an event we do not track.

    Only while the host has an entry in flight: update_engine sends a 3/2 (previous version "",
    "0.0.0.0" or the old one) with every update check, and nebraska stores no event without an
    update in progress.  Without an entry nothing is recorded and the host's status stays."""
    from .models import RolloutHost

    entry = _current_entry(host.pk)
    if entry is None:
        return None
    omaha = {"eventtype": event.type, "eventresult": event.result}
    if event.errorcode is not None:
        omaha["errorcode"] = event.errorcode
    if event.previous_version:
        omaha["previousversion"] = event.previous_version
    base = {"rollout": entry.rollout_id, "version": entry.rollout.release.version}

    progress = PROGRESS.get((event.type, event.result))
    if progress is not None:
        status, label = progress
        RolloutHost.objects.report_status(host.pk, entry.rollout_id, status, None)
        _record(host, EventKind.UPDATE_PROGRESS, f"{label} (Omaha) {base['version']}",
                data={"kind": status.lower(), **base, "omaha": omaha})
        return status

    if event.type != EVENT_UPDATE_COMPLETE:
        return None
    if event.result == RESULT_SUCCESS:
        kind, data, status = "update_installed", {**base}, "UPDATED_NEED_REBOOT"
    elif event.result == RESULT_SUCCESS_REBOOT:
        if app.version != entry.rollout.release.version:
            # Not the version we granted: nothing moves; the timeout decides.
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
    _record(host, kind, f"{EventKind(kind).label.lower()} {base['version']}", data.get("reason", ""),
            data={"kind": kind, **data, "omaha": omaha})
    return status


def grant_for(host, app: OmahaApp):
    """The in-flight grant to offer on an update check, or None.

    Nothing reaches an Omaha host between its checks, so the rollout's wave does not pick it up
    then: when it is waiting in a running rollout, the wave runs now (under the group's policy, like
    any other wave) and may grant it.  A release that is not newer than the version the host
    reports is never offered (unless the rollout downgrades): a waiting or just granted entry is
    then skipped, as the rollout would have left the host out had it known that version.
    """
    from .models import Rollout, RolloutHost

    entry = RolloutHost.objects.in_flight_for(host.pk)
    if entry is None:
        waiting = (RolloutHost.objects.select_related("rollout__release")
                   .filter(host_id=host.pk, state=HostUpdateState.PENDING, rollout__status=RolloutStatus.RUNNING)
                   .first())
        if waiting is None:
            return None
        if not waiting.rollout.release.is_update_for(app.version, waiting.rollout.allow_downgrade):
            RolloutHost.objects.report_event(host.pk, "already_current", {"rollout": waiting.rollout_id})
            return None
        Rollout(pk=waiting.rollout_id).advance(checking_host=host.pk)
        entry = RolloutHost.objects.in_flight_for(host.pk)
        if entry is None:
            return None
    if not entry.rollout.release.is_update_for(app.version, entry.rollout.allow_downgrade):
        if entry.state == HostUpdateState.GRANTED:
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


def _app_node(root, app: OmahaApp, status: str):
    # As both upstream servers: the appid is echoed as sent, and left out when none was sent.
    return ET.SubElement(root, "app", {"appid": app.appid, "status": status} if app.appid else {"status": status})


def answer(apps: list[OmahaApp], group=None) -> bytes:
    """The response.  Without a group (the anonymous ``/v1/update/``) nothing is read or written:
    every update check is ``noupdate``.  ``daystart elapsed_seconds`` is 0, as both upstream
    servers send it (update_engine does not read it)."""
    organization_id = group.organization_id if group is not None else None
    root = ET.Element("response", protocol=PROTOCOL, server=SERVER)
    ET.SubElement(root, "daystart", elapsed_seconds="0")
    for app in apps:
        if not OmahaApplication.objects.serves(organization_id, app.appid):
            _app_node(root, app, "error-unknownApplication")  # no children, nothing written
            continue
        node = _app_node(root, app, "ok")
        host = _app_host(group, app) if group is not None and app.has_valid_version else None
        status = None
        if host is not None:
            with transaction.atomic():
                for event in app.events:
                    status = apply_event(host, app, event) or status
                _touch(host, app, status)
        if app.ping:
            ET.SubElement(node, "ping", status="ok")
        if app.updatecheck:
            entry = grant_for(host, app) if host is not None else None
            if entry is None or not _updatecheck_ok(node, host, entry):
                ET.SubElement(node, "updatecheck", status="noupdate")
        for _ in app.events:
            ET.SubElement(node, "event", status="ok")
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def _bad_request(message: str) -> HttpResponse:
    return HttpResponse(f"{BAD_REQUEST}: {message}\n", status=400, content_type="text/plain")


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
