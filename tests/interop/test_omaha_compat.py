"""Omaha compatibility (issue 11): our ``/v1/update/<secret>/`` against the upstream servers that
Flatcar's update_engine was written against.

``fixtures/omaha/cases.json`` holds 72 cases: a request (one of the ``*.xml`` there) and what an
upstream server answers to it (coreos/go-omaha, flatcar/nebraska), or how update_engine reads an
answer. ``PROVENANCE.md`` names the snapshots and the answer rules. Every case is replayed here
against the real view (Django's test client; a body the ASGI body limit refuses first is answered
as deployed, by that limit), in the state the case needs, set up through the real enrollment and
rollout code. Then each fact of its ``expect`` is checked.

go-omaha and nebraska disagree in places, so no server can match every case. ``DIFFERENCES`` maps
each case where we differ on purpose to the facts that differ and the reason. The test asserts that
exactly those facts still differ: closing a difference, or opening a new one, fails it. Rules of
PROVENANCE.md that no case covers are checked at the end (``RULE_DIFFERENCES``).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.test import Client

from fleetweb.core.bodylimit import BodyLimit
from fleetweb.fleet.models import Event, Host
from fleetweb.updates import omaha
from fleetweb.updates.choices import HostUpdateState
from fleetweb.updates.models import APPID_RE, OS_APPID, OmahaApplication, OmahaUrl, RolloutHost, normalize_appid
from tests.fleetweb.updates.conftest import make_release, media_root, run_on_commit  # noqa: F401 (fixtures)

FIXTURES = Path(__file__).parent / "fixtures" / "omaha"
CASES = json.loads((FIXTURES / "cases.json").read_text())


def case_id(case: dict) -> str:
    return f"{Path(case['request']).stem} | {case['server']}"


# ---------------------------------------------------------------------------------------------
# Deliberate differences: case -> (facts that differ, why)
# ---------------------------------------------------------------------------------------------

UNKNOWN_APP = (
    "An appid the organization does not serve gets go-omaha's answer to a CheckApp refusal: "
    '<app status="error-unknownApplication"/> with no children. The other apps are still answered, '
    "and nothing is written. nebraska replaces that status with error-failedToRetrieveUpdatePackageInfo, "
    'adds <updatecheck status="error-internal"/> and stops at that app. update_engine fails the check '
    "either way (error 34).")
ALL_UNKNOWN_IS_200 = (
    "An answer where no app is ok (all unknown, or no app at all) is still HTTP 200, as nebraska answers; "
    "go-omaha answers 400. update_engine fails the check either way (34, or 2400).")
PROTOCOL_CHECKED = (
    'Like go-omaha we refuse a request whose protocol is not "3.0" (400, with the reason); '
    "nebraska does not check it. update_engine always sends 3.0.")
MALFORMED_IS_400 = (
    "A body that cannot be read is a 400 that says why (go-omaha's status; our body is "
    "'Bad Omaha Request: <reason>'). nebraska answers 200 with an empty body. update_engine fails the "
    "check either way (2400, or 30).")
BODY_LIMIT = (
    "Request bodies are bounded while they are read, in front of the view. Over 64 KiB the answer is "
    "413 with the API's error shape (README, Request body limits). nebraska answers 400 with no body "
    "(and go-omaha does so above 1 MiB). update_engine fails the check either way.")
BAD_VERSION = (
    "A version that is not a version string writes nothing and is answered ok with noupdate (issue 11): "
    "the host's check succeeds and the host keeps its version. nebraska answers "
    "error-instanceRegistrationFailed with updatecheck error-internal, which update_engine reports as "
    "error 34 on every check.")
GROUP_FROM_URL = (
    "The host's group comes from its Omaha URL, not from the track: an unknown or missing track is "
    "served and recorded as sent (a missing one leaves the stored channel alone). nebraska looks the "
    "group up by track and answers error-failedToRetrieveUpdatePackageInfo with updatecheck error-internal.")
NO_MACHINE_NO_GRANT = (
    "go-omaha's TrivialServer offers its one package to any request. We offer a release only to a "
    "host (a machine id) that its group's rollout granted, and this request has no machineid.")
SERVER_NAME = 'server="fleetweb" names this server, as go-omaha and nebraska name themselves; update_engine ignores it.'
PARSED_IDS = (
    "Machine and boot ids are stored without braces (update_engine sends /etc/machine-id bare). "
    "oem and from_track are not read.")
INSTALLED_STEP = (
    "3/1 (installed, reboot needed) moves the rollout entry to that step, as the agent's "
    "update_installed does, so the rollout page shows it. The update is not complete either: only a "
    "3/2 from the new version completes it, as in nebraska.")
UPSTREAM_PACKAGE = (
    "The name and codebase of the upstream test's package. Ours are the release's signed per-host "
    "payload URL (checked by the download fact of the other manifest cases and by test_omaha.py).")
BAD_EVENTTYPE = (
    "An event whose eventtype or eventresult is not a number is answered ok and dropped; the rest of "
    "the request is served. Both upstream decoders fail the whole request (go-omaha 400, nebraska 200 "
    "with an empty body).")

DIFFERENCES: dict[str, tuple[set[str], str]] = {
    "goomaha_fixtures_request | go-omaha (CheckApp returns AppUnknownID for these ids)":
        ({"http_status"}, ALL_UNKNOWN_IS_200),
    "goomaha_fixtures_request | nebraska":
        ({"app_count", "apps[0].status", "apps[0].updatecheck_status"}, UNKNOWN_APP),
    "goomaha_ue_noupdate_request | nebraska": ({"apps[0].status", "apps[0].updatecheck_status"}, UNKNOWN_APP),
    "goomaha_ue_update_request | go-omaha (UpdaterStub)":
        ({"parsed.bootid", "parsed.machineid", "parsed.oem", "parsed.from_track"}, PARSED_IDS),
    "goomaha_parse_bad_version | nebraska": ({"http_status", "response_status", "app_count"}, PROTOCOL_CHECKED),
    "goomaha_sample_response_as_request | nebraska": ({"http_status", "body"}, MALFORMED_IS_400),
    "goomaha_server_test_request | go-omaha": ({"server_attr"}, SERVER_NAME),
    "goomaha_trivial_server_request | go-omaha TrivialServer (manifest version 999.999.999)":
        ({"updatecheck_status", "has_manifest", "url_count", "package_count", "download", "action.event",
          "action.sha256", "action.DisablePayloadBackoff"}, NO_MACHINE_NO_GRANT),
    "nebraska_big_omaha_request | nebraska": ({"http_status", "body"}, BODY_LIMIT),
    "nebraska_invalid_app_uuid | nebraska": ({"apps[0].status", "apps[0].updatecheck_status"}, UNKNOWN_APP),
    "nebraska_empty_version | nebraska": ({"apps[0].status", "apps[0].updatecheck_status"}, BAD_VERSION),
    "nebraska_invalid_group | nebraska": ({"apps[0].status", "apps[0].updatecheck_status"}, GROUP_FROM_URL),
    "nebraska_update_check_old | nebraska": ({"package_name", "url_codebase"}, UPSTREAM_PACKAGE),
    "ue_event_install_complete | nebraska": ({"instance_status"}, INSTALLED_STEP),
    "ue_unknown_appid_updatecheck | go-omaha (CheckApp returns AppUnknownID)": ({"http_status"}, ALL_UNKNOWN_IS_200),
    "ue_unknown_appid_updatecheck | nebraska": ({"apps[0].status", "apps[0].updatecheck_status"}, UNKNOWN_APP),
    "ue_unknown_appid_event | go-omaha (CheckApp returns AppUnknownID)": ({"http_status"}, ALL_UNKNOWN_IS_200),
    "ue_unknown_appid_event | nebraska": ({"apps[0].status", "apps[0].updatecheck_status"}, UNKNOWN_APP),
    "multi_app_flatcar_then_unknown | nebraska": ({"apps[1].status", "apps[1].updatecheck_status"}, UNKNOWN_APP),
    "multi_app_unknown_then_flatcar | nebraska":
        ({"app_count", "apps[0].status", "apps[0].updatecheck_status", "host_changed"}, UNKNOWN_APP),
    "appid_unbalanced_brace | nebraska": ({"apps[0].status", "apps[0].updatecheck_status"}, UNKNOWN_APP),
    "missing_appid | nebraska": ({"apps[0].status", "apps[0].updatecheck_status"}, UNKNOWN_APP),
    "missing_version | nebraska": ({"apps[0].status", "apps[0].updatecheck_status"}, BAD_VERSION),
    "missing_track | nebraska": ({"apps[0].status", "apps[0].ping_status", "apps[0].updatecheck_status",
                                  "apps[0].event_statuses", "host_changed"}, GROUP_FROM_URL),
    "missing_protocol | nebraska": ({"http_status", "response_status", "apps"}, PROTOCOL_CHECKED),
    "empty_apps | go-omaha": ({"http_status"}, ALL_UNKNOWN_IS_200),
    "malformed_truncated | nebraska": ({"http_status", "body"}, MALFORMED_IS_400),
    "event_bad_eventtype | go-omaha": ({"http_status", "response_status"}, BAD_EVENTTYPE),
    "event_bad_eventtype | nebraska": ({"response_status", "body"}, BAD_EVENTTYPE),
}

# Where no upstream states an answer, ours (asserted the same way).
OUR_ANSWERS = {
    "missing_machineid | none (not stated upstream)": {
        "http_status": 200, "response_status": "ok", "host_changed": False,
        "apps": [{"appid": "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}", "status": "ok", "ping_status": "ok",
                  "updatecheck_status": "noupdate", "event_statuses": ["ok"]}]},
}

# ---------------------------------------------------------------------------------------------
# The state each case is replayed in
# ---------------------------------------------------------------------------------------------
# By default the request's machine (if it names one) is already an Omaha-managed host of the group,
# with no rollout entry ("known"). Otherwise:
#   "fresh": no host yet; the request may enroll its machine itself.
#   ("waiting", v, r): the host runs v; release r was published and its rollout left it waiting
#       (an Omaha host is granted only during its own check).
#   ("granted", v, r): the same, and an earlier check of it was granted r (the wave ran then).
UE = ("3975.2.0", "4081.2.0")       # update_engine's rendered requests run 3975.2.0
NEBRASKA = ("610.0.0", "99640.0.0")  # nebraska's omaha_test.go: an instance at 610.0.0, a package 99640.0.0
SETUPS: dict[str, object] = {
    "nebraska_api_success | nebraska": ("waiting", "0.0.0", "101.0.0"),
    "nebraska_appid_bare_alpha | nebraska": "fresh",
    "nebraska_appid_braces_alpha | nebraska": "fresh",
    "nebraska_register_check | nebraska": ("waiting", "610.0.0", "640.0.0"),
    "nebraska_update_check_old | nebraska": ("waiting", *NEBRASKA),
    "nebraska_download_started | nebraska": ("granted", *NEBRASKA),
    "nebraska_download_finished | nebraska": ("granted", *NEBRASKA),
    "nebraska_update_complete | nebraska": ("granted", *NEBRASKA),
    "nebraska_rebooted | nebraska": ("granted", *NEBRASKA),
    "ue_updatecheck | update_engine (client reading the answer)": ("granted", *UE),
    "ue_updatecheck_after_reboot | nebraska": ("granted", *UE),
    "ue_updatecheck_rollback | nebraska": ("granted", *UE),
    "ue_ping | nebraska": "fresh",
    "ue_event_download_started | nebraska": ("granted", *UE),
    "ue_event_download_finished | nebraska": ("granted", *UE),
    "ue_event_install_complete | nebraska": ("granted", *UE),
    "ue_event_error | nebraska": ("granted", *UE),
    "ue_event_error_http | nebraska": ("granted", *UE),
    "ue_event_deferred | nebraska": ("granted", *UE),
    "ue_unknown_appid_updatecheck | go-omaha (CheckApp returns AppUnknownID)": ("granted", *UE),
    "ue_unknown_appid_updatecheck | nebraska": ("granted", *UE),
    "ue_unknown_appid_updatecheck | update_engine (client)": ("granted", *UE),
    "ue_unknown_appid_event | go-omaha (CheckApp returns AppUnknownID)": ("granted", *UE),
    "ue_unknown_appid_event | nebraska": ("granted", *UE),
    "track_legacy_group_uuid | nebraska": "fresh",
    "event_missing_eventresult | nebraska": ("granted", *UE),
}


def served_appids(case: dict, body: bytes) -> list[str]:
    """The appids the organization is configured to serve for this case.  go-omaha knows no appid
    itself (its ``Updater.CheckApp`` decides): a go-omaha server that accepts the request's apps is an
    organization that configured them.  nebraska, and go-omaha servers whose ``CheckApp`` refuses
    them, know only the OS's own."""
    server = case["server"]
    if not server.startswith("go-omaha") or "CheckApp" in server:
        return []
    ids = {normalize_appid(a) for a in re.findall(rb'<app\b[^>]*?\bappid="([^"]*)"', body) for a in [a.decode()]}
    return sorted(i for i in ids if APPID_RE.fullmatch(i) and i != OS_APPID)


# ---------------------------------------------------------------------------------------------
# Replaying a case
# ---------------------------------------------------------------------------------------------

@dataclass
class Replay:
    request: bytes
    apps: list            # omaha.parse of the request ([] if it does not parse)
    status: int
    body: bytes
    root: ET.Element | None  # the <response> document, if the answer is one
    changed: bool         # any host, event or rollout entry written
    activity: bool        # an event recorded, a rollout entry moved or a host's update status changed
    entry_before: str | None
    entry: RolloutHost | None
    release: object | None
    organization: object
    url: str


def snapshot():
    return (list(Host.objects.order_by("pk").values_list("pk", "group_id", "version", "boot_id", "channel",
                                                       "last_seen", "online", "update_status")),
            Event.objects.count(), list(RolloutHost.objects.order_by("pk").values_list("pk", "state")))


def activity_snapshot():
    return (Event.objects.count(), list(RolloutHost.objects.order_by("pk").values_list("pk", "state")),
            list(Host.objects.order_by("pk").values_list("pk", "update_status")))


def refused_by_body_limit(path: str, body: bytes) -> tuple[int, bytes] | None:
    """The deployed answer when the ASGI body limit (in front of every view) refuses the body."""
    sent = []

    async def view(scope, receive, send):
        sent.append("view")

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path,
             "headers": [(b"content-type", b"text/xml"), (b"content-length", str(len(body)).encode())]}
    asyncio.run(BodyLimit(view)(scope, receive, send))
    if sent == ["view"]:
        return None
    start, content = sent
    return start["status"], content["body"]


def post(url: str, body: bytes) -> tuple[int, bytes]:
    refused = refused_by_body_limit(url, body)
    if refused is not None:
        return refused
    r = Client().post(url, data=body, content_type="text/xml")
    return r.status_code, r.content


def prepare(case: dict, body: bytes, apps: list, group, new_release):
    """Set up what the case needs; returns (host's rollout entry, release)."""
    for appid in served_appids(case, body):
        OmahaApplication.objects.add(group.organization, appid, "go-omaha test app")
    setup = SETUPS.get(case_id(case), "known")
    machine = next((a.machine_id for a in apps if a.machine_id), "")
    if setup == "fresh" or not machine:
        return None, None
    version = apps[0].version if apps[0].has_valid_version else UE[0]
    if setup == "known":
        Host.objects.enroll_omaha(group, machine, version=version, channel="stable")
        return None, None
    kind, running, target = setup
    host = Host.objects.enroll_omaha(group, machine, version=running, channel="stable")
    release = new_release(target)
    [rollout] = group.channel.publish(release, "alice")
    entry = RolloutHost.objects.get(host=host, rollout=rollout)
    assert entry.state == HostUpdateState.PENDING  # not reachable between its checks
    if kind == "granted":
        rollout.advance(checking_host=host.pk)
        entry.refresh_from_db()
        assert entry.state == HostUpdateState.GRANTED
    return entry, release


def replay(case: dict, group, url: str, new_release) -> Replay:
    body = (FIXTURES / case["request"]).read_bytes()
    try:
        apps = omaha.parse(body)
    except omaha.OmahaError:
        apps = []
    entry, release = prepare(case, body, apps, group, new_release)
    before, activity_before = snapshot(), activity_snapshot()
    status, answer = post(url, body)
    try:
        root = ET.fromstring(answer)
        root = root if root.tag == "response" else None
    except ET.ParseError:
        root = None
    entry_before = entry.state if entry else None
    if entry is not None:
        entry.refresh_from_db()
    return Replay(request=body, apps=apps, status=status, body=answer, root=root, changed=snapshot() != before,
                  activity=activity_snapshot() != activity_before, entry_before=entry_before, entry=entry,
                  release=release, organization=group.organization, url=url)


# ---------------------------------------------------------------------------------------------
# The facts
# ---------------------------------------------------------------------------------------------

def flatten(expect: dict) -> dict:
    """One key per fact: ``apps[i].field``, ``parsed.field``, ``action.field``; the others as named."""
    facts = {}
    for key, value in expect.items():
        if key == "apps":
            for i, app in enumerate(value):
                facts.update({f"apps[{i}].{field}": v for field, v in app.items()})
            if "app_count" not in expect:
                facts["apps.count"] = len(value)
        elif key in ("parsed", "action"):
            facts.update({f"{key}.{field}": v for field, v in value.items()})
        else:
            facts[key] = value
    return facts


def apps_of(r: Replay) -> list[ET.Element]:
    return r.root.findall("app") if r.root is not None else []


def child_status(app: ET.Element | None, tag: str):
    node = app.find(tag) if app is not None else None
    return node.get("status") if node is not None else None


def first_check(r: Replay) -> ET.Element | None:
    """The first ``/response/app/updatecheck`` in document order: the one update_engine reads."""
    return r.root.find("app/updatecheck") if r.root is not None else None


def update_engine_reads(status: int, body: bytes) -> int:
    """The action code update_engine's update check ends with for an answer (PROVENANCE.md, "What
    update_engine reads"): 0 for a usable one (noupdate, or ok with everything an update needs)."""
    if status != 200:
        return 2000 + status
    if not body.strip():
        return 30
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return 31
    check = root.find("app/updatecheck")
    if check is None or check.get("status") not in ("ok", "noupdate"):
        return 34
    if check.get("status") == "noupdate":
        return 0
    url, package = check.find("urls/url"), check.find("manifest/packages/package")
    action = next((a for a in check.findall("manifest/actions/action") if a.get("event") == "postinstall"), None)
    complete = (check.find("manifest") is not None and url is not None and url.get("codebase")
                and package is not None and package.get("name") and int(package.get("size") or 0) > 0
                and action is not None and len(base64.b64decode(action.get("sha256") or "")) == 32)
    return 0 if complete else -1


def event_request(body: bytes) -> bool:
    return b"<updatecheck" not in body


def payload_of(r: Replay) -> bytes:
    return r.release.path.read_bytes()


def download(r: Replay) -> bytes | None:
    check = first_check(r)
    url, package = check.find("urls/url"), check.find("manifest/packages/package")
    if url is None or package is None:
        return None
    full = url.get("codebase") + package.get("name")
    response = Client().get("/" + full.split("://", 1)[1].split("/", 1)[1])
    return b"".join(response) if response.status_code == 200 else None


def follow_up_event_changes_nothing(r: Replay) -> bool:
    """update_engine reports a failed check as an event 3/0 with the code and its flag bits, for the
    same appid: that request changes nothing either."""
    code = update_engine_reads(r.status, r.body) | (1 << 28)
    event = f'<event eventtype="3" eventresult="0" errorcode="{code}"></event>'.encode()
    body = re.sub(rb"(<app\b[^>]*>).*?(</app>)", lambda m: m.group(1) + event + m.group(2), r.request, flags=re.S)
    before = snapshot()
    status, answer = post(r.url, body)
    return status == 200 and snapshot() == before


INSTANCE_STATUS = {
    "downloading": {HostUpdateState.DOWNLOADING},
    "downloaded": {HostUpdateState.VERIFYING},
    "complete": {HostUpdateState.SUCCEEDED},
    "error": set(HostUpdateState.failed()),
    "error (if an update is in progress)": set(HostUpdateState.failed()),
}


def holds(key: str, want, r: Replay) -> bool:
    """Whether one fact of a case holds for our answer (one entry per fact of the vocabulary)."""
    apps = apps_of(r)
    if key.startswith("apps["):
        index, field = re.fullmatch(r"apps\[(\d+)\]\.(\w+)", key).groups()
        app = apps[int(index)] if int(index) < len(apps) else None
        if app is None:
            return False
        return {
            "appid": lambda: app.get("appid") == want,
            "appid_attribute_present": lambda: ("appid" in app.attrib) == want,
            "status": lambda: app.get("status") == want,
            "ping_status": lambda: child_status(app, "ping") == want,
            "updatecheck_status": lambda: child_status(app, "updatecheck") == want,
            "event_statuses": lambda: [e.get("status") for e in app.findall("event")] == want,
        }[field]()
    first = apps[0] if apps else None
    check = first_check(r)
    manifest = check.find("manifest") if check is not None else None
    action = manifest.find("actions/action") if manifest is not None else None
    package = manifest.find("packages/package") if manifest is not None else None
    first_event = r.apps[0].events[0] if r.apps and r.apps[0].events else None
    parsed = r.apps[0] if r.apps else None
    text = r.body.decode(errors="replace").rstrip("\n")
    checks = {
        "http_status": lambda: r.status == want,
        "response_status": lambda: (r.root is not None) == (want == "ok"),
        "body": lambda: text == want if not want else (text == want or text.startswith(want + ": ")),
        "parse_error": lambda: r.status == 400 and want.lower() in text.lower(),
        "app_count": lambda: r.root is not None and len(apps) == want,
        "apps.count": lambda: len(apps) == want,
        "ping_status": lambda: child_status(first, "ping") == want,
        "updatecheck_status": lambda: child_status(first, "updatecheck") == want,
        "event_statuses": lambda: first is not None and [e.get("status") for e in first.findall("event")] == want,
        "host_changed": lambda: r.changed == want,
        "activity_recorded": lambda: r.activity == want,
        "instance_status": lambda: (r.entry is not None and r.entry.state == r.entry_before) if want == "unchanged"
        else (r.entry is not None and r.entry.state in INSTANCE_STATUS[want]),
        "instance_registered": lambda: Host.objects.filter(organization=r.organization,
                                                           machine_id=parsed.machine_id).exists() == want,
        "track_resolved_to": lambda: Host.objects.get(organization=r.organization,
                                                      machine_id=parsed.machine_id).channel == want,
        "has_manifest": lambda: (manifest is not None) == want,
        "url_count": lambda: check is not None and len(check.findall("urls/url")) == want,
        "package_count": lambda: manifest is not None and len(manifest.findall("packages/package")) == want,
        "manifest_version": lambda: manifest is not None and manifest.get("version") == want,
        "package_name": lambda: package is not None and package.get("name") == want,
        "url_codebase": lambda: check is not None and check.find("urls/url") is not None
        and check.find("urls/url").get("codebase") == want,
        # "base64 SHA-256 of the payload" / "as stored for the package": the release's payload.
        "action.sha256": lambda: action is not None and r.release is not None
        and action.get("sha256") == base64.b64encode(hashlib.sha256(payload_of(r)).digest()).decode(),
        "action.event": lambda: action is not None and action.get("event") == want,
        "action.DisablePayloadBackoff": lambda: action is not None and action.get("DisablePayloadBackoff") == want,
        "download": lambda: manifest is not None and r.release is not None and download(r) == payload_of(r),
        "server_attr": lambda: r.root is not None and r.root.get("server") == want,
        "daystart_elapsed_seconds": lambda: r.root is not None
        and r.root.find("daystart").get("elapsed_seconds") == want,
        # go-omaha's parse of the request (its protocol_test.go), against ours.
        "parsed.bootid": lambda: parsed.boot_id == want,
        "parsed.machineid": lambda: parsed.machine_id == want,
        "parsed.version": lambda: parsed.version == want,
        "parsed.track": lambda: parsed.track == want,
        "parsed.event": lambda: first_event is not None and [first_event.type, first_event.result] == want,
        "parsed.oem": lambda: getattr(parsed, "oem", None) == want,
        "parsed.from_track": lambda: getattr(parsed, "from_track", None) == want,
        "event_parsed_as": lambda: first_event is not None and [first_event.type, first_event.result] == want,
        # update_engine, the client: a successful check on our answer.
        "client": lambda: update_engine_reads(r.status, r.body) == 0,
        "client_action_code": lambda: client_action_code(r) == (want if isinstance(want, int) else want[answer_shape(r)]),
        "then_sends": lambda: follow_up_event_changes_nothing(r),
        "request_has": lambda: all(s.encode() in r.request for s in want),
        "request_lacks": lambda: not any(f"<{s}".encode() in r.request for s in want),
    }
    return checks[key]()


def client_action_code(r: Replay) -> int:
    """Events are best effort: an event request succeeds whatever the answer."""
    return 0 if event_request(r.request) else update_engine_reads(r.status, r.body)


def answer_shape(r: Replay) -> str:
    """Which of the upstream answers described in the case ours is shaped like."""
    if r.status == 400:
        return "go-omaha answer"
    if child_status(apps_of(r)[0], "updatecheck") == "error-internal":
        return "nebraska answer"
    return "app without updatecheck"


def differing_facts(case: dict, r: Replay) -> set[str]:
    expect = case["expect"] or OUR_ANSWERS[case_id(case)]
    differ = {key for key, want in flatten(expect).items() if not holds(key, want, r)}
    if r.root is None:  # no document: its apps cannot be compared one by one
        differ = {"apps" if key.startswith("apps") else key for key in differ}
    return differ


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def group(web_group):
    return web_group


@pytest.fixture
def url(group):
    return f"/v1/update/{OmahaUrl.objects.rotate(group, actor='alice')[1]}/"


def test_the_fixture_is_the_one_described():
    """72 cases over 53 requests, every request a file of the fixture, every key of ours a case."""
    ids = [case_id(c) for c in CASES]
    assert len(CASES) == 72 and len(set(ids)) == 72
    requests = {c["request"] for c in CASES}
    assert len(requests) == 53 and all((FIXTURES / name).is_file() for name in requests)
    for table in (DIFFERENCES, OUR_ANSWERS, SETUPS):
        assert set(table) <= set(ids), set(table) - set(ids)
    assert all(not c["expect"] for c in CASES if case_id(c) in OUR_ANSWERS)


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_the_upstream_case_holds_or_differs_as_documented(case, group, url, make_release):  # noqa: F811
    r = replay(case, group, url, make_release)
    declared, reason = DIFFERENCES.get(case_id(case), (set(), ""))
    assert differing_facts(case, r) == declared, (reason, r.status, r.body[:2000])
    # PROVENANCE.md, "Element order in <app>": both servers write ping, updatecheck, then the events.
    order = {"ping": 0, "updatecheck": 1, "event": 2}
    for app in apps_of(r):
        tags = [order[child.tag] for child in app]
        assert tags == sorted(tags), ET.tostring(app)


# --- rules of PROVENANCE.md that no case covers ------------------------------------------------

RULE_DIFFERENCES = {
    "methods": "go-omaha answers a method other than POST with 400; ours is Django's 405 with Allow: POST.",
    "caps": "go-omaha and nebraska bound only the body (1 MiB, 64 KiB); we also refuse more than 16 <app> or "
            "8 <event> per app (400, nothing written), so one request is bounded work.",
    "in-progress": "nebraska refuses an update check while the instance has an update in progress (an error "
                   "status and updatecheck error-internal); we offer the granted manifest again, so a host "
                   "whose download broke can start over within the update timeout.",
    "url-secret": "nebraska answers a wrong path secret with 501; an unknown or revoked Omaha URL is a 404 here "
                  "(and not written to the request log).",
    "content-type": "go-omaha refuses a Content-Type other than text/xml or application/xml (400); like nebraska "
                    "we do not look at it.",
}


def test_deliberate_difference_methods(url):
    r = Client().get(url)
    assert r.status_code == 405 and r["Allow"] == "POST", RULE_DIFFERENCES["methods"]


def test_deliberate_difference_caps(url, group):
    one = (FIXTURES / "ue_updatecheck.xml").read_text()
    app = one[one.index("<app "):one.index("</app>") + len("</app>")]
    body = one.replace(app, app * (omaha.MAX_APPS + 1)).encode()
    assert len(body) < omaha.MAX_BODY
    Host.objects.enroll_omaha(group, "0f6ad3d1e8c34c5a9a3f2f3e4b5c6d7e", version="3975.2.0")
    before = snapshot()
    status, answer = post(url, body)
    assert status == 400 and b"too many <app>" in answer, RULE_DIFFERENCES["caps"]
    assert snapshot() == before


def test_deliberate_difference_in_progress(url, group, make_release):  # noqa: F811
    body = (FIXTURES / "ue_updatecheck.xml").read_bytes()
    host = Host.objects.enroll_omaha(group, "0f6ad3d1e8c34c5a9a3f2f3e4b5c6d7e", version=UE[0])
    release = make_release(UE[1])
    [rollout] = group.channel.publish(release, "alice")
    for _ in range(2):
        status, answer = post(url, body)
        check = ET.fromstring(answer).find("app/updatecheck")
        assert check.get("status") == "ok", RULE_DIFFERENCES["in-progress"]
        assert check.find("manifest").get("version") == UE[1]
    assert RolloutHost.objects.get(host=host, rollout=rollout).state == HostUpdateState.GRANTED


def test_deliberate_difference_url_secret(group):
    status, _ = post("/v1/update/fwo_000000000000_wrong/", (FIXTURES / "ue_updatecheck.xml").read_bytes())
    assert status == 404, RULE_DIFFERENCES["url-secret"]


def test_deliberate_difference_content_type(url):
    r = Client().post(url, data=(FIXTURES / "ue_ping.xml").read_bytes(), content_type="application/json")
    assert r.status_code == 200 and ET.fromstring(r.content).find("app").get("status") == "ok", \
        RULE_DIFFERENCES["content-type"]


def test_both_paths_are_served_as_go_omaha_serves_them(url):
    """``/v1/update`` and ``/v1/update/`` (go-omaha), and our group URL with or without its slash."""
    body = (FIXTURES / "ue_ping.xml").read_bytes()
    for path in ("/v1/update", "/v1/update/", url, url.rstrip("/")):
        assert post(path, body)[0] == 200, path
