"""POST /api/v1/agents/register: an enrollment token buys a host credential, once."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from agent import signing
from fleetweb.fleet.models import EnrollmentToken, Event, Group, Host, HostCredential
from fleetweb.updates.models import SigningKey
from tests.conftest import partitions

URL = "/api/v1/agents/register"


def body(secret, **kw):
    return {"token": secret, "machine_id": "a" * 32, "hostname": "node-1", "boot_id": "b" * 32,
            "agent_version": "0.1.0", "version": "100.0.0", "partitions": partitions(),
            "channel": "stable", "reboot_strategy": "best-effort", **kw}


def snapshot(token):
    token.refresh_from_db()
    return Host.objects.count(), HostCredential.objects.count(), token.uses


def test_it_registers_a_host_and_returns_its_credential(token, settings):
    settings.FLEET_PUBLIC_URL = "https://fleet.example.com"
    r = APIClient().post(URL, body(token.secret), format="json", REMOTE_ADDR="10.1.2.3")
    assert r.status_code == 201, r.content
    assert r["Cache-Control"] == "no-store"  # the answer holds a secret
    data = r.json()
    assert {"host_id", "credential", "ws_url", "group", "org"} <= set(data)
    assert data["ws_url"] == "wss://fleet.example.com/ws/agent/"
    assert data["group"] == "web" and data["org"] == "acme"
    host = Host.objects.get(pk=data["host_id"])
    assert host.hostname == "node-1" and host.group == token.group
    assert host.address == "10.1.2.3"
    assert host.channel == "stable" and host.partitions == partitions()
    assert HostCredential.objects.authenticate(data["credential"]) == host
    token.refresh_from_db()
    assert token.uses == 1


def test_it_turns_http_into_ws(token, settings):
    settings.FLEET_PUBLIC_URL = "http://127.0.0.1:8000"
    r = APIClient().post(URL, body(token.secret), format="json")
    assert r.json()["ws_url"] == "ws://127.0.0.1:8000/ws/agent/"


def test_it_needs_only_the_required_fields(token):
    r = APIClient().post(URL, {"token": token.secret, "machine_id": "c" * 32, "hostname": "bare"}, format="json")
    assert r.status_code == 201, r.content
    host = Host.objects.get(pk=r.json()["host_id"])
    assert host.partitions == [] and host.version == ""


def test_it_ignores_an_api_key(token, alice):
    alice.post(URL, body(token.secret), format="json")  # a client with a key still works
    assert Host.objects.count() == 1


def test_a_host_re_registers_itself_with_its_own_credential_and_the_old_one_is_void(token):
    client = APIClient()
    first = client.post(URL, body(token.secret), format="json").json()
    r = client.post(URL, body(token.secret, hostname="node-1b"), format="json",
                    HTTP_AUTHORIZATION=f"Bearer {first['credential']}")
    assert r.status_code == 201, r.content
    second = r.json()
    assert first["host_id"] == second["host_id"]
    assert Host.objects.count() == 1
    assert HostCredential.objects.authenticate(first["credential"]) is None
    assert HostCredential.objects.authenticate(second["credential"]).hostname == "node-1b"
    assert Event.objects.filter(kind="registered").count() == 2


def hijack_state(host):
    host.refresh_from_db()
    return (host.group_id, host.hostname, sorted(HostCredential.objects.filter(host=host, revoked_at__isnull=True)
                                                 .values_list("lookup", flat=True)))


def make_group(org, name):
    return Group.objects.create(organization=org, name=name, slug=name, channel=org.channels.get(name="stable"))


def test_another_token_cannot_take_over_an_enrolled_machine_id(token, acme):
    """The attack (fails before issue 9): any token of the organization re-registered a known
    machine id, moved it to the token's group, revoked its credential and got its configuration."""
    first = APIClient().post(URL, body(token.secret), format="json").json()
    host = Host.objects.get(pk=first["host_id"])
    other_group = make_group(acme, "attacker")
    attacker, secret = EnrollmentToken.objects.issue(other_group, name="leaked")
    before = hijack_state(host)
    r = APIClient().post(URL, body(secret, hostname="evil"), format="json")
    assert r.status_code == 409, r.content
    assert r.json()["code"] == "host_exists" and "allow re-enrollment" in r.json()["detail"]
    assert "credential" not in r.json()
    assert hijack_state(host) == before  # same group, name and live credential
    assert HostCredential.objects.authenticate(first["credential"]) == host
    attacker.refresh_from_db()
    assert attacker.uses == 0  # a refusal uses nothing up
    event = Event.objects.get(kind="reenrollment_refused")
    assert event.host == host and event.data["token"] == attacker.lookup and "leaked" in event.message


def test_a_stale_or_foreign_credential_does_not_count_as_the_hosts_own(token, web_group, make_host):
    first = APIClient().post(URL, body(token.secret), format="json").json()
    host = Host.objects.get(pk=first["host_id"])
    other = make_host(web_group, hostname="other")
    for bearer in (other.credential, first["credential"][:-3] + "AAA", "garbage"):
        r = APIClient().post(URL, body(token.secret), format="json", HTTP_AUTHORIZATION=f"Bearer {bearer}")
        assert r.status_code == 409 and r.json()["code"] == "host_exists"
    assert HostCredential.objects.authenticate(first["credential"]) == host


def test_an_operator_allows_one_re_enrollment_within_the_window(token, operator, settings):
    first = APIClient().post(URL, body(token.secret), format="json").json()
    host_url = f"/api/v1/hosts/{first['host_id']}/allow-reenrollment"
    r = operator.post(host_url)
    assert r.status_code == 200, r.content
    assert r.json()["reenrollment_allowed_until"]
    assert Event.objects.filter(kind="reenrollment_allowed", actor__contains="olga").exists()
    again = APIClient().post(URL, body(token.secret, hostname="reimaged"), format="json")
    assert again.status_code == 201, again.content
    assert HostCredential.objects.authenticate(first["credential"]) is None
    # one-shot: the next one is refused again
    third = APIClient().post(URL, body(token.secret), format="json")
    assert third.status_code == 409 and third.json()["code"] == "host_exists"


def test_an_expired_allowance_does_not_let_a_token_re_enroll(token, operator):
    first = APIClient().post(URL, body(token.secret), format="json").json()
    operator.post(f"/api/v1/hosts/{first['host_id']}/allow-reenrollment")
    Host.objects.filter(pk=first["host_id"]).update(reenrollment_allowed_until=timezone.now() - timedelta(seconds=1))
    r = APIClient().post(URL, body(token.secret), format="json")
    assert r.status_code == 409 and r.json()["code"] == "host_exists"


def test_a_viewer_cannot_allow_re_enrollment_and_another_org_gets_404(token, bob, charlie):
    first = APIClient().post(URL, body(token.secret), format="json").json()
    url = f"/api/v1/hosts/{first['host_id']}/allow-reenrollment"
    assert bob.post(url).status_code == 403
    assert charlie.post(url).status_code == 404
    assert Host.objects.get(pk=first["host_id"]).reenrollment_allowed_until is None


def test_only_an_admin_creates_a_token_that_replaces_existing_hosts(web_group, alice, operator):
    r = operator.post("/api/v1/tokens/", {"group": web_group.pk, "replace_existing": True}, format="json")
    assert r.status_code == 403
    assert not EnrollmentToken.objects.filter(replace_existing=True).exists()
    r = alice.post("/api/v1/tokens/", {"group": web_group.pk, "replace_existing": True}, format="json")
    assert r.status_code == 201 and r.json()["replace_existing"] is True
    first = APIClient().post(URL, body(r.json()["token"]), format="json").json()
    again = APIClient().post(URL, body(r.json()["token"], hostname="replaced"), format="json")
    assert again.status_code == 201
    assert again.json()["host_id"] == first["host_id"]


def test_the_same_machine_id_in_another_organization_is_another_host(token, other_org):
    first = APIClient().post(URL, body(token.secret), format="json").json()
    _, secret = EnrollmentToken.objects.issue(make_group(other_org, "theirs"))
    r = APIClient().post(URL, body(secret), format="json")
    assert r.status_code == 201 and r.json()["host_id"] != first["host_id"]
    assert HostCredential.objects.authenticate(first["credential"]).organization.slug == "acme"


def spoil(token, case: str) -> str:
    """Make ``token`` unusable as ``case`` says; returns the secret to present."""
    secret = token.secret
    if case == "wrong":
        secret = secret[:-4] + "AAAA"
    elif case == "garbage":
        secret = "not-a-token"
    elif case == "expired":
        EnrollmentToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    elif case == "revoked":
        token.revoke()
    elif case == "used_up":
        EnrollmentToken.objects.filter(pk=token.pk).update(max_uses=2, uses=2)
    return secret


BAD_TOKENS = [
    ("wrong", 401, "token_invalid"),
    ("garbage", 401, "token_invalid"),
    ("expired", 403, "token_expired"),
    ("revoked", 403, "token_revoked"),
    ("used_up", 403, "token_exhausted"),
]


@pytest.mark.parametrize("case, status, code", BAD_TOKENS)
def test_it_refuses_a_bad_token_and_stores_nothing(token, case, status, code):
    secret = spoil(token, case)
    before = snapshot(token)
    r = APIClient().post(URL, body(secret), format="json")
    assert r.status_code == status, r.content
    assert r.json() == {"detail": r.json()["detail"], "errors": {}, "code": code}
    assert r.json()["detail"]
    assert snapshot(token) == before


def test_it_uses_up_a_single_use_token_once(web_group):
    _, secret = EnrollmentToken.objects.issue(web_group, max_uses=1)
    client = APIClient()
    assert client.post(URL, body(secret), format="json").status_code == 201
    r = client.post(URL, body(secret, machine_id="d" * 32), format="json")
    assert r.status_code == 403 and r.json()["code"] == "token_exhausted"
    assert Host.objects.count() == 1


@pytest.mark.parametrize("change, field", [
    ({"machine_id": None}, "machine_id"),
    ({"machine_id": ""}, "machine_id"),
    ({"hostname": "h" * 256}, "hostname"),
    ({"partitions": [{"label": "USR-A"}]}, "partitions"),
    ({"partitions": [{**partitions()[0], "number": "3"}]}, "partitions"),
    ({"partitions": [{**partitions()[0], "successful": 1}]}, "partitions"),
    ({"partitions": "USR-A"}, "partitions"),
    ({"partitions": ["USR-A"]}, "partitions"),
    ({"partitions": partitions() * 9}, "partitions"),
    ({"token": None}, "token"),
])
def test_it_rejects_a_bad_body_before_using_the_token(token, change, field):
    data = body(token.secret, **change)
    if change.get(field, 0) is None:
        del data[field]
    before = snapshot(token)
    r = APIClient().post(URL, data, format="json")
    assert r.status_code == 400, r.content
    assert field in r.json()["errors"]
    assert r.json()["detail"].startswith(f"{field}: ")
    assert snapshot(token) == before


def test_it_stores_nothing_when_the_host_cannot_be_written(token, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(HostCredential.objects, "bulk_create", boom)
    before = snapshot(token)
    with pytest.raises(RuntimeError):
        APIClient().post(URL, body(token.secret), format="json")
    assert snapshot(token) == before


def test_it_costs_a_fixed_number_of_queries(token, django_assert_max_num_queries):
    client = APIClient()
    client.post(URL, body(token.secret, machine_id="e" * 32), format="json")  # warm up
    # 9 (was 8): the answer carries the signing key and its endorsement chain (issue 9 item 11)
    with django_assert_max_num_queries(9):
        r = client.post(URL, body(token.secret), format="json")
    assert r.status_code == 201


def test_it_answers_with_the_trust_material_an_agent_offline_across_rotations_can_follow(token):
    """The register answer carries the current key, its fingerprint and the endorsement chain."""
    org = token.group.organization
    first = SigningKey.objects.ensure(org)
    for _ in range(3):
        SigningKey.objects.rotate(org)
    current = SigningKey.objects.active(org)
    data = APIClient().post(URL, body(token.secret), format="json").json()
    assert data["signing_key"] == current.public_key
    assert data["signing_key_hash"] == signing.fingerprint(current.public_key)
    assert len(data["signing_key_chain"]) == 4
    path = signing.follow_chain(first.public_key, current.public_key, data["signing_key_chain"])
    assert len(path) == 4 and path[-1] == current.public_key
