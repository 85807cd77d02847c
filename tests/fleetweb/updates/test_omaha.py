"""The Omaha v3 endpoint: update_engine hosts update through the same rollouts as agent hosts."""
from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET

import pytest
from django.test import Client

from fleetweb.fleet.models import Event, Host
from fleetweb.updates import omaha
from fleetweb.updates.choices import HostUpdateState, RolloutStatus
from fleetweb.updates.models import Rollout, RolloutHost

APPID = "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}"
URL = "/v1/update/"  # replaced by the web group's Omaha URL (the anonymous one writes nothing)


@pytest.fixture(autouse=True)
def omaha_url(web_group, monkeypatch):
    from fleetweb.updates.models import OmahaUrl

    _, secret = OmahaUrl.objects.rotate(web_group, actor="alice")
    monkeypatch.setitem(globals(), "URL", f"/v1/update/{secret}/")
    return secret


@pytest.fixture
def make_host(make_host):
    """Hosts of these tests run update_engine alone: Omaha-managed (no agent credential)."""
    from fleetweb.fleet.models import HostCredential

    def make(group, hostname=None, **kw):
        host = make_host(group, hostname, **kw)
        HostCredential.objects.filter(host=host).delete()
        return host

    return make


def request_xml(machine_id, version="100.0.0", *, ping=True, updatecheck=True, events=(), track="stable",
                bootid="{7d52a1cc-7066-40f0-91c7-7cb6a871bfde}", protocol="3.0", appid=APPID) -> bytes:
    """An update_engine request; ``events`` are ``(type, result, errorcode[, previousversion])``."""
    evs = "".join(f'<event eventtype="{t}" eventresult="{r}"' + (f' errorcode="{c}"' if c is not None else "")
                  + f' previousversion="{previous[0] if previous else ""}"></event>' for t, r, c, *previous in events)
    app = f'appid="{appid}" ' if appid is not None else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<request protocol="{protocol}" version="CoreOSUpdateEngine-0.1.0.0" ismachine="1">'
            f'<os version="Chateau" platform="CoreOS" sp="{version}_x86_64"></os>'
            f'<app {app}version="{version}" track="{track}" bootid="{bootid}" oem="qemu" '
            f'machineid="{machine_id}" lang="en-US" board="amd64-usr" delta_okay="false">'
            + ('<ping active="1" a="-1" r="-1"></ping>' if ping else "")
            + ('<updatecheck></updatecheck>' if updatecheck else "")
            + evs + '</app></request>').encode()


def post(body: bytes, client=None):
    return (client or Client()).post(URL, data=body, content_type="text/xml")


def app_of(response) -> ET.Element:
    assert response.status_code == 200 and response["Content-Type"] == "text/xml"
    root = ET.fromstring(response.content)
    assert root.tag == "response" and root.get("protocol") == "3.0" and root.get("server") == "fleetweb"
    assert root.find("daystart").get("elapsed_seconds") == "0"
    [app] = root.findall("app")
    assert app.get("appid") == APPID and app.get("status") == "ok"
    return app


def stable(acme):
    return acme.channels.get(name="stable")


def entry_of(host) -> RolloutHost:
    return RolloutHost.objects.get(host=host)


def snapshot():
    """Everything an Omaha request could write."""
    return (list(Host.objects.order_by("pk").values_list("pk", "group_id", "version", "boot_id", "channel",
                                                       "last_seen", "online", "update_status")),
            Event.objects.count(), list(RolloutHost.objects.order_by("pk").values_list("pk", "state")))


@pytest.fixture
def notified(monkeypatch):
    """Hosts whose change was pushed to the dashboard (``fleetweb.fleet.models._host_changed``)."""
    from fleetweb.fleet import models

    pushed = []
    monkeypatch.setattr(models, "_host_changed", lambda organization_id, host_id: pushed.append(host_id))
    return pushed


@pytest.fixture
def release(make_release):
    return make_release("101.0.0", bytes(range(256)) * 64)


@pytest.fixture
def granted_host(acme, web_group, online_hosts, release):
    """One host of the web group, granted 101.0.0 by the first wave of a stable rollout."""
    [host] = online_hosts(1)
    [rollout] = stable(acme).publish(release, "alice")
    assert entry_of(host).state == HostUpdateState.GRANTED
    return host


def test_it_answers_noupdate_with_the_exact_xml(web_group, make_host):
    """Children in go-omaha's and nebraska's order (ping, updatecheck, event), whatever order the
    request had or they were processed in; daystart 0 as both send it."""
    host = make_host(web_group)
    r = post(request_xml(host.machine_id, events=[(3, 2, None, "")]))
    assert r.status_code == 200 and r["Content-Type"] == "text/xml"
    assert r.content.decode() == (
        "<?xml version='1.0' encoding='UTF-8'?>\n"
        '<response protocol="3.0" server="fleetweb">'
        '<daystart elapsed_seconds="0" />'
        f'<app appid="{APPID}" status="ok"><ping status="ok" /><updatecheck status="noupdate" />'
        '<event status="ok" /></app>'
        "</response>")


def test_it_records_what_the_request_tells_about_the_host(web_group, make_host):
    host = make_host(web_group)
    post(request_xml(host.machine_id, "100.1.0", bootid="{abc-123}", track="beta"))
    host.refresh_from_db()
    assert (host.version, host.boot_id, host.channel, host.online) == ("100.1.0", "abc-123", "beta", True)
    assert host.last_seen is not None


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_it_offers_the_granted_release_with_a_working_download_url(granted_host, release):
    app = app_of(post(request_xml(granted_host.machine_id)))
    assert app.find("ping").get("status") == "ok"
    check = app.find("updatecheck")
    assert check.get("status") == "ok"
    assert [child.tag for child in check] == ["urls", "manifest"]
    assert [child.tag for child in check.find("manifest")] == ["packages", "actions"]
    codebase = check.find("urls/url").get("codebase")
    assert codebase.startswith("http") and codebase.endswith("/")
    manifest = check.find("manifest")
    assert manifest.get("version") == "101.0.0"
    [package] = manifest.findall("packages/package")
    payload = release.path.read_bytes()
    assert package.get("size") == str(len(payload)) == str(release.size)
    assert package.get("hash") == base64.b64encode(hashlib.sha1(payload).digest()).decode()
    assert package.get("hash_sha256") == hashlib.sha256(payload).hexdigest() == release.sha256
    assert package.get("required") == "true"
    assert set(package.keys()) == {"name", "size", "hash", "hash_sha256", "required"}
    [action] = manifest.findall("actions/action")
    assert action.get("event") == "postinstall"
    assert action.get("sha256") == base64.b64encode(hashlib.sha256(payload).digest()).decode()
    assert action.get("DisablePayloadBackoff") == "true"
    # update_engine downloads codebase + name: that is the host's signed payload URL.
    url = codebase + package.get("name")
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    r = Client().get(path)
    assert r.status_code == 200
    assert b"".join(r) == payload
    # The SHA-1 is computed once and cached next to the payload.
    assert release.path.with_name(f"{release.sha256}.sha1").read_text().strip() == hashlib.sha1(payload).hexdigest()


def test_it_grants_an_omaha_host_waiting_in_a_running_rollout_when_it_checks(
        acme, web_group, make_host, release):
    host = make_host(web_group)  # never online: no agent, the first wave skipped it
    [rollout] = stable(acme).publish(release, "alice")
    assert entry_of(host).state == HostUpdateState.PENDING
    check = app_of(post(request_xml(host.machine_id))).find("updatecheck")
    assert check.get("status") == "ok" and check.find("manifest").get("version") == "101.0.0"
    assert entry_of(host).state == HostUpdateState.GRANTED


def test_an_omaha_host_is_online_between_checks_but_only_its_own_check_grants_it(
        acme, web_group, make_host, release):
    host = make_host(web_group)
    app_of(post(request_xml(host.machine_id, updatecheck=False)))      # a ping: seen, nothing to offer
    host.refresh_from_db()
    assert host.online and host.connection_id is None
    # The release goes out between two checks: the wave leaves the host waiting, since nothing
    # could tell it (a grant would hold the rollout's only slot until the next check).
    [rollout] = stable(acme).publish(release, "alice")
    assert entry_of(host).state == HostUpdateState.PENDING
    assert rollout.advance() == [] and entry_of(host).state == HostUpdateState.PENDING
    check = app_of(post(request_xml(host.machine_id))).find("updatecheck")
    assert check.get("status") == "ok" and entry_of(host).state == HostUpdateState.GRANTED


def test_it_moves_a_host_through_the_omaha_events_to_succeeded_and_advances_the_rollout(
        acme, web_group, online_hosts, release):
    first, second = online_hosts(2)  # max_in_flight 1: the second waits for the first
    [rollout] = stable(acme).publish(release, "alice")
    assert entry_of(first).state == HostUpdateState.GRANTED
    assert entry_of(second).state == HostUpdateState.PENDING

    def send(events, version="100.0.0"):
        app = app_of(post(request_xml(first.machine_id, version, updatecheck=False, events=events)))
        assert [e.get("status") for e in app.findall("event")] == ["ok"] * len(events)

    send([(13, 1, None)])
    assert entry_of(first).state == HostUpdateState.DOWNLOADING
    send([(14, 1, None)])
    assert entry_of(first).state == HostUpdateState.VERIFYING
    send([(3, 1, None)])
    assert entry_of(first).state == HostUpdateState.NEED_REBOOT
    Host.objects.filter(pk=first.pk).update(update_status="IDLE")
    first.refresh_from_db()
    # After the reboot update_engine reports 3/2 from the new version.
    app = app_of(post(request_xml(first.machine_id, "101.0.0", events=[(3, 2, None)])))
    assert app.find("updatecheck").get("status") == "noupdate"
    assert entry_of(first).state == HostUpdateState.SUCCEEDED
    first.refresh_from_db()
    assert first.version == "101.0.0"
    assert entry_of(second).state == HostUpdateState.GRANTED  # the rollout advanced
    kinds = list(Event.objects.filter(host=first).order_by("created", "id").values_list("kind", flat=True))
    assert kinds[-4:] == ["update_progress", "update_progress", "update_installed", "booted_new_version"]


@pytest.mark.parametrize("errorcode", [44, 44 | 0x80000000], ids=["plain", "dev-mode-flag"])
def test_it_records_a_rollback_for_errorcode_44(acme, web_group, granted_host, errorcode):
    app = app_of(post(request_xml(granted_host.machine_id, updatecheck=False, events=[(3, 0, errorcode)])))
    assert app.find("event").get("status") == "ok"
    entry = entry_of(granted_host)
    assert entry.state == HostUpdateState.ROLLED_BACK and "44" in entry.error
    event = Event.objects.get(host=granted_host, kind="rollback")
    assert event.data["code"] == "omaha_44" and event.data["omaha"] == {"eventtype": 3, "eventresult": 0,
                                                                        "errorcode": errorcode}
    # The default failure threshold is one host: the rollout halts as for an agent's rollback.
    assert Rollout.objects.get(pk=entry.rollout_id).status == RolloutStatus.HALTED


def test_it_records_other_errors_as_update_errors_with_the_omaha_code(granted_host):
    post(request_xml(granted_host.machine_id, updatecheck=False, events=[(3, 0, 7)]))
    assert entry_of(granted_host).state == HostUpdateState.FAILED
    assert Event.objects.get(host=granted_host, kind="update_error").data["code"] == "omaha_7"


def test_a_machine_id_another_organization_also_knows_touches_only_this_organizations_host(
        granted_host, other_group, make_host):
    theirs = make_host(other_group, machine_id=granted_host.machine_id)
    events_before = Event.objects.filter(organization=other_group.organization).count()
    app = app_of(post(request_xml(granted_host.machine_id, updatecheck=False, events=[(3, 0, 7)])))
    assert app.find("event").get("status") == "ok"
    assert entry_of(granted_host).state == HostUpdateState.FAILED
    theirs.refresh_from_db()
    assert theirs.last_seen is None and theirs.group_id == other_group.pk
    assert Event.objects.filter(organization=other_group.organization).count() == events_before


def test_it_refuses_an_oversized_body_and_stores_nothing(granted_host):
    body = request_xml(granted_host.machine_id, events=[(3, 0, 44)])
    body = body.replace(b"</app>", b"<!--" + b"x" * omaha.MAX_BODY + b"--></app>")
    events_before = Event.objects.count()
    r = post(body)
    assert r.status_code == 400 and b"larger than" in r.content
    assert Event.objects.count() == events_before
    assert entry_of(granted_host).state == HostUpdateState.GRANTED
    granted_host.refresh_from_db()
    assert granted_host.last_seen is None


def test_it_refuses_malformed_xml_and_other_protocols(web_group, make_host):
    host = make_host(web_group)
    r = post(b"<request protocol='3.0'><app")
    assert r.status_code == 400 and r.content.startswith(b"Bad Omaha Request: malformed XML") and len(r.content) < 300
    r = post(request_xml(host.machine_id, protocol="2.0"))
    assert r.status_code == 400 and r.content == b'Bad Omaha Request: unsupported omaha protocol: "2.0" (expected 3.0)\n'
    r = post(b"<hello/>")
    assert r.status_code == 400
    assert Client().get(URL).status_code == 405
    assert Client().get("/v1/update/").status_code == 405


@pytest.mark.parametrize("body", [
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;">]><request protocol="3.0">&lol3;</request>',
    b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "file:///etc/passwd"><request protocol="3.0"/>',
    ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r [<!ENTITY a "b">]>'
     '<request protocol="3.0">&a;</request>').encode("utf-16"),
], ids=["billion-laughs", "external", "utf16"])
def test_it_refuses_a_doctype_or_entities(body, web_group, make_host):
    make_host(web_group)
    events_before = Event.objects.count()
    r = post(body)
    assert r.status_code == 400 and b"DOCTYPE" in r.content
    assert Event.objects.count() == events_before


# --- what update_engine sends on every check, and what is dropped (issue 11) ------------------
# Each of these fails on main before issue 11 unless said otherwise.

@pytest.mark.parametrize("previous", ["", "0.0.0.0", "99.0.0"], ids=["later-checks", "first-check", "after-update"])
def test_the_3_2_event_of_every_update_check_changes_nothing_without_a_rollout_entry(
        web_group, make_host, notified, previous):
    """update_engine reports "update complete, rebooted" with every check (previousversion "",
    "0.0.0.0" on the first one, the old version after an update): without an entry in flight it is
    not an activity, not a push to the dashboard and not a status."""
    host = make_host(web_group)
    Host.objects.filter(pk=host.pk).update(update_status="UPDATED_NEED_REBOOT")
    events_before = Event.objects.filter(host=host).count()
    app = app_of(post(request_xml(host.machine_id, events=[(3, 2, None, previous)])))
    assert [e.get("status") for e in app.findall("event")] == ["ok"]
    assert app.find("updatecheck").get("status") == "noupdate"
    assert Event.objects.filter(host=host).count() == events_before
    host.refresh_from_db()
    assert host.update_status == "UPDATED_NEED_REBOOT" and host.last_seen is not None  # seen, nothing more
    assert notified == []


@pytest.mark.parametrize("event", [(13, 1, None), (14, 1, None), (3, 1, None), (3, 0, 7), (3, 0, 44)],
                         ids=["download-started", "download-finished", "installed", "error", "rolled-back"])
def test_progress_installed_and_error_events_without_a_rollout_entry_are_answered_ok_and_dropped(
        web_group, make_host, notified, event):
    host = make_host(web_group)
    events_before = Event.objects.filter(host=host).count()
    app = app_of(post(request_xml(host.machine_id, updatecheck=False, events=[event])))
    assert [e.get("status") for e in app.findall("event")] == ["ok"]
    assert Event.objects.filter(host=host).count() == events_before
    host.refresh_from_db()
    assert host.update_status == "IDLE" and not RolloutHost.objects.filter(host=host).exists()
    assert notified == []


@pytest.mark.parametrize("version", ["", "ForcedUpdate", "1", "101.0.0; x", "１０１.0.0"],
                         ids=["missing", "word", "one-number", "trailing", "non-ascii-digits"])
def test_a_version_that_is_not_a_version_string_writes_nothing_and_gets_noupdate(granted_host, version):
    before = snapshot()
    app = app_of(post(request_xml(granted_host.machine_id, version, events=[(3, 0, 7)])))
    assert app.find("ping").get("status") == "ok" and app.find("updatecheck").get("status") == "noupdate"
    assert [e.get("status") for e in app.findall("event")] == ["ok"]
    assert app_of(post(request_xml("e" * 32, version))).find("updatecheck").get("status") == "noupdate"
    assert snapshot() == before  # not the version, not the event, not a new host
    assert entry_of(granted_host).state == HostUpdateState.GRANTED


def test_a_flatcar_nightly_version_is_a_version(granted_host):
    """3815.0.0+nightly-20231222-2100 is semver (nebraska takes it); it was refused as no version."""
    app = app_of(post(request_xml(granted_host.machine_id, "3815.0.0+nightly-20231222-2100")))
    assert app.get("status") == "ok" and app.find("ping").get("status") == "ok"
    granted_host.refresh_from_db()
    assert granted_host.version == "3815.0.0+nightly-20231222-2100"


def test_it_never_offers_a_release_not_newer_than_the_version_the_host_reports(granted_host):
    """The host was granted 101.0.0 but reports 102.0.0 (updated another way): nothing to offer, and
    its grant is skipped, as the rollout would have left it out."""
    app = app_of(post(request_xml(granted_host.machine_id, "102.0.0")))
    assert app.find("updatecheck").get("status") == "noupdate"
    assert entry_of(granted_host).state == HostUpdateState.SKIPPED


def test_a_waiting_host_that_reports_a_newer_version_is_skipped_without_a_grant(acme, web_group, make_host, release):
    host = make_host(web_group)  # 100.0.0, never online: left waiting by the first wave
    stable(acme).publish(release, "alice")
    assert entry_of(host).state == HostUpdateState.PENDING
    app = app_of(post(request_xml(host.machine_id, "101.0.1")))
    assert app.find("updatecheck").get("status") == "noupdate"
    entry = entry_of(host)
    assert entry.state == HostUpdateState.SKIPPED and entry.granted_at is None


def test_a_rollback_rollout_offers_the_older_release(acme, web_group, make_host, make_release):
    """Kept: a rollout that downgrades (an explicit channel rollback) offers an older release."""
    host = make_host(web_group)
    old, new = make_release("101.0.0"), make_release("102.0.0")
    stable(acme).publish(old, "alice")
    stable(acme).publish(new, "alice")
    app_of(post(request_xml(host.machine_id, "102.0.0", updatecheck=False)))
    [rollout] = stable(acme).rollback(old, "alice")
    assert rollout.allow_downgrade
    check = app_of(post(request_xml(host.machine_id, "102.0.0"))).find("updatecheck")
    assert check.get("status") == "ok" and check.find("manifest").get("version") == "101.0.0"


@pytest.mark.parametrize("uuid, channel", [("9a2deb70-37be-4026-853f-bfdd6b347bbe", "stable"),
                                           ("e641708d-fb48-4260-8bdf-ba2074a1147a", "alpha"),
                                           ("72834a2b-ad86-4d6d-b498-e08a19ebe54e", "edge")],
                         ids=["amd64-stable", "arm64-alpha", "amd64-edge"])
def test_an_old_coreos_group_uuid_as_track_is_stored_as_its_channel(web_group, make_host, uuid, channel):
    host = make_host(web_group)
    app_of(post(request_xml(host.machine_id, track=uuid)))
    host.refresh_from_db()
    assert host.channel == channel
    app_of(post(request_xml("f" * 32, track=uuid)))  # enrolled by this request
    assert Host.objects.get(machine_id="f" * 32).channel == channel
    app_of(post(request_xml(host.machine_id, track="dev-channel")))  # other tracks: as sent
    host.refresh_from_db()
    assert host.channel == "dev-channel"


@pytest.mark.parametrize("appid", ["{e96281a6-d1af-4bde-9a0a-97b76e56dc57", "e96281a6-d1af-4bde-9a0a-97b76e56dc57}",
                                   "{{e96281a6-d1af-4bde-9a0a-97b76e56dc57}}"],
                         ids=["lone-opening-brace", "lone-closing-brace", "two-pairs"])
def test_an_appid_with_unbalanced_braces_is_unknown_and_writes_nothing(granted_host, appid):
    before = snapshot()
    r = post(request_xml(granted_host.machine_id, events=[(3, 0, 7)], appid=appid))
    assert r.status_code == 200
    [app] = ET.fromstring(r.content).findall("app")
    assert (app.get("appid"), app.get("status"), list(app)) == (appid, "error-unknownApplication", [])
    assert snapshot() == before


@pytest.mark.parametrize("appid", ["{E96281A6-D1AF-4BDE-9A0A-97B76E56DC57}", "e96281a6-d1af-4bde-9a0a-97b76e56dc57",
                                   " {e96281a6-d1af-4bde-9a0a-97b76e56dc57} "],
                         ids=["upper-case", "no-braces", "spaces"])
def test_the_os_appid_is_known_in_any_case_with_or_without_braces_and_echoed_as_sent(web_group, make_host, appid):
    host = make_host(web_group)
    r = post(request_xml(host.machine_id, appid=appid))
    [app] = ET.fromstring(r.content).findall("app")
    assert (app.get("appid"), app.get("status")) == (appid, "ok")


@pytest.mark.parametrize("appid", [None, ""], ids=["missing", "empty"])
def test_an_app_without_appid_is_answered_without_the_attribute_and_writes_nothing(granted_host, appid):
    before = snapshot()
    r = post(request_xml(granted_host.machine_id, events=[(3, 0, 7)], appid=appid))
    [app] = ET.fromstring(r.content).findall("app")
    assert (app.attrib, list(app)) == ({"status": "error-unknownApplication"}, [])
    assert snapshot() == before


def test_an_event_without_eventresult_is_an_error_as_both_upstream_servers_read_it(granted_host):
    body = request_xml(granted_host.machine_id, updatecheck=False, events=[(3, 0, None)])
    app = app_of(post(body.replace(b' eventresult="0"', b"")))
    assert [e.get("status") for e in app.findall("event")] == ["ok"]
    assert entry_of(granted_host).state == HostUpdateState.FAILED
    assert Event.objects.get(host=granted_host, kind="update_error").data["omaha"] == {"eventtype": 3,
                                                                                       "eventresult": 0}


def test_an_event_whose_type_is_not_a_number_is_answered_ok_and_dropped(granted_host, notified):
    """A deliberate difference (both upstream decoders refuse the whole request); this already
    held before issue 11."""
    events_before = Event.objects.filter(host=granted_host).count()
    body = request_xml(granted_host.machine_id, updatecheck=False, events=[(13, 1, None)])
    app = app_of(post(body.replace(b'eventtype="13"', b'eventtype="x"')))
    assert [e.get("status") for e in app.findall("event")] == ["ok"]
    assert entry_of(granted_host).state == HostUpdateState.GRANTED
    assert Event.objects.filter(host=granted_host).count() == events_before
    assert notified == []
