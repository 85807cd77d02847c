"""Issue 11: the Omaha application ids an organization serves.  The OS's own id
(``{e96281a6-d1af-4bde-9a0a-97b76e56dc57}``) always; others configured through
``/api/v1/omaha-apps/`` (aliases that get the same OS updates).  An appid the organization does not
serve is answered ``error-unknownApplication`` with nothing else and changes nothing."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from django.test import Client

from fleetweb.fleet.models import Event, Host, HostCredential
from fleetweb.updates.models import OS_APPID, OmahaApplication, OmahaUrl, normalize_appid

from .test_omaha import request_xml, snapshot, stable

ALIAS = "ac07c722-45d6-4d0e-b1d4-2e1e297569a1"
API = "/api/v1/omaha-apps/"


def post(secret, body):
    return Client().post(f"/v1/update/{secret}/" if secret else "/v1/update/", data=body, content_type="text/xml")


def app_of(response) -> ET.Element:
    assert response.status_code == 200, response.content
    [app] = ET.fromstring(response.content).findall("app")
    return app


@pytest.fixture
def web_secret(web_group):
    return OmahaUrl.objects.rotate(web_group, actor="alice")[1]


@pytest.fixture
def other_secret(other_group):
    return OmahaUrl.objects.rotate(other_group, actor="charlie")[1]


@pytest.fixture
def granted(acme, web_group, online_hosts, make_release):
    """An Omaha-managed host of the web group granted 101.0.0."""
    [host] = online_hosts(1)
    HostCredential.objects.filter(host=host).delete()
    stable(acme).publish(make_release("101.0.0"), "alice")
    return host


# --- the rule ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sent, normal", [
    ("{e96281a6-d1af-4bde-9a0a-97b76e56dc57}", OS_APPID), ("E96281A6-D1AF-4BDE-9A0A-97B76E56DC57", OS_APPID),
    (" { E96281A6-D1AF-4BDE-9A0A-97B76E56DC57 } ", OS_APPID),
    ("{e96281a6-d1af-4bde-9a0a-97b76e56dc57", "{e96281a6-d1af-4bde-9a0a-97b76e56dc57"),
    ("{{x}}", "{x}"), ("{}", "{}"), ("", ""), (None, ""),
])
def test_appids_are_compared_case_insensitively_without_one_balanced_pair_of_braces(sent, normal):
    assert normalize_appid(sent) == normal


def test_every_organization_serves_the_os_appid_and_only_the_aliases_it_configured(acme, other_org):
    OmahaApplication.objects.add(acme, "{" + ALIAS.upper() + "}", "beta image", actor="alice")
    assert OmahaApplication.objects.get(organization=acme).appid == ALIAS
    for org_id in (acme.pk, other_org.pk, None):
        assert OmahaApplication.objects.serves(org_id, "{E96281A6-D1AF-4BDE-9A0A-97B76E56DC57}")
    assert OmahaApplication.objects.serves(acme.pk, ALIAS)
    assert OmahaApplication.objects.serves(acme.pk, "{" + ALIAS + "}")
    assert not OmahaApplication.objects.serves(acme.pk, "{" + ALIAS)
    assert not OmahaApplication.objects.serves(other_org.pk, ALIAS)
    assert not OmahaApplication.objects.serves(None, ALIAS)  # the anonymous /v1/update/


# --- Omaha requests ---------------------------------------------------------------------------

def test_an_alias_gets_the_same_os_update_on_the_organizations_url(acme, granted, web_secret):
    OmahaApplication.objects.add(acme, ALIAS)
    appid = "{" + ALIAS.upper() + "}"
    app = app_of(post(web_secret, request_xml(granted.machine_id).replace(b"{" + OS_APPID.encode() + b"}",
                                                                           appid.encode())))
    assert (app.get("appid"), app.get("status")) == (appid, "ok")
    check = app.find("updatecheck")
    assert check.get("status") == "ok" and check.find("manifest").get("version") == "101.0.0"


def test_an_alias_of_another_organization_or_a_removed_one_is_unknown_and_writes_nothing(
        acme, other_org, granted, web_secret, alice):
    OmahaApplication.objects.add(other_org, ALIAS)
    body = request_xml(granted.machine_id, "9.9.9", events=[(3, 0, 7)]).replace(
        b"{" + OS_APPID.encode() + b"}", ALIAS.encode())
    before = snapshot()
    app = app_of(post(web_secret, body))
    assert (app.get("appid"), app.get("status"), list(app)) == (ALIAS, "error-unknownApplication", [])
    assert snapshot() == before
    mine = OmahaApplication.objects.add(acme, ALIAS)
    assert app_of(post(web_secret, request_xml("a" * 32).replace(
        b"{" + OS_APPID.encode() + b"}", ALIAS.encode()))).get("status") == "ok"
    assert alice.delete(f"{API}{mine.pk}/").status_code == 204
    before = snapshot()
    app = app_of(post(web_secret, body))
    assert (app.get("status"), list(app)) == ("error-unknownApplication", [])
    assert snapshot() == before


def test_the_anonymous_endpoint_serves_only_the_os_appid(acme):
    OmahaApplication.objects.add(acme, ALIAS)
    body = request_xml("b" * 32).replace(b"{" + OS_APPID.encode() + b"}", ALIAS.encode())
    before = snapshot()
    assert app_of(post(None, body)).get("status") == "error-unknownApplication"
    assert app_of(post(None, request_xml("b" * 32))).get("status") == "ok"
    assert snapshot() == before
    assert not Host.objects.filter(machine_id="b" * 32).exists()


# --- API --------------------------------------------------------------------------------------

def test_an_operator_adds_lists_and_removes_an_appid(operator, bob, acme):
    r = operator.post(API, {"appid": "{" + ALIAS.upper() + "}", "label": "beta image"}, format="json")
    assert r.status_code == 201, r.json()
    body = r.json()
    assert (body["appid"], body["label"], body["created_by"]) == (ALIAS, "beta image", "api-key:olga-key")
    listed = bob.get(API).json()
    assert [a["appid"] for a in listed["results"]] == [ALIAS]
    assert bob.get(f"{API}{body['id']}/").json()["appid"] == ALIAS
    assert operator.delete(f"{API}{body['id']}/").status_code == 204
    assert not OmahaApplication.objects.filter(organization=acme).exists()
    # Both are in the activity log, with who did it (which ids a fleet answers is a security setting).
    log = list(Event.objects.filter(organization=acme, kind__startswith="omaha_app").order_by("created", "id")
               .values_list("kind", "actor", "message"))
    assert log == [("omaha_app_added", "api-key:olga-key", f"Omaha application id {{{ALIAS}}} added (beta image)"),
                   ("omaha_app_removed", "api-key:olga-key",
                    f"Omaha application id {{{ALIAS}}} removed: its requests are refused")]


def test_a_viewer_cannot_add_or_remove_and_an_outsider_sees_nothing(alice, bob, charlie, acme):
    mine = OmahaApplication.objects.add(acme, ALIAS)
    assert bob.post(API, {"appid": "0" * 8 + "-0000-0000-0000-" + "0" * 12}, format="json").status_code == 403
    assert bob.delete(f"{API}{mine.pk}/").status_code == 403
    assert charlie.get(f"{API}{mine.pk}/").status_code == 404
    assert charlie.delete(f"{API}{mine.pk}/").status_code == 404
    assert charlie.get(API).json()["results"] == []
    assert list(OmahaApplication.objects.values_list("appid", flat=True)) == [ALIAS]
    # The same id is the outsider's own business: unique per organization only.
    assert charlie.post(API, {"appid": ALIAS}, format="json").status_code == 201


@pytest.mark.parametrize("appid", ["", "not-a-guid", "{" + ALIAS, ALIAS + "}", "{{" + ALIAS + "}}",
                                   ALIAS.replace("-", ""), ALIAS + "0", "g" + ALIAS[1:], "x" * 5000],
                         ids=["empty", "word", "lone-opening-brace", "lone-closing-brace", "two-pairs", "no-dashes",
                              "too-long", "not-hex", "huge"])
def test_a_bad_appid_is_refused_with_a_clear_message_and_nothing_stored(operator, appid):
    r = operator.post(API, {"appid": appid}, format="json")
    assert r.status_code == 400
    body = r.json()
    assert "appid" in body["errors"]
    if appid:
        assert "is not an application id: expected a GUID" in body["detail"]
        assert "with or without a pair of braces" in body["detail"] and len(body["detail"]) < 200
    assert not OmahaApplication.objects.exists()


def test_the_os_appid_and_an_appid_already_served_are_conflicts(operator, acme):
    r = operator.post(API, {"appid": "{" + OS_APPID.upper() + "}"}, format="json")
    assert r.status_code == 409 and "every organization serves it" in r.json()["detail"]
    assert operator.post(API, {"appid": ALIAS}, format="json").status_code == 201
    r = operator.post(API, {"appid": "{" + ALIAS + "}"}, format="json")
    assert r.status_code == 409 and "already served" in r.json()["detail"]
    assert OmahaApplication.objects.filter(organization=acme).count() == 1
