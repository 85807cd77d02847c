"""POST /api/v1/agents/register: an enrollment token buys a host credential, once."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from fleetweb.fleet.models import EnrollmentToken, Event, Host, HostCredential
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
    assert set(data) == {"host_id", "credential", "ws_url", "group", "org"}
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


def test_it_re_registers_the_same_machine_and_revokes_the_old_credential(token):
    client = APIClient()
    first = client.post(URL, body(token.secret), format="json").json()
    second = client.post(URL, body(token.secret, hostname="node-1b"), format="json").json()
    assert first["host_id"] == second["host_id"]
    assert Host.objects.count() == 1
    assert HostCredential.objects.authenticate(first["credential"]) is None
    assert HostCredential.objects.authenticate(second["credential"]).hostname == "node-1b"
    assert Event.objects.filter(kind="registered").count() == 2


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
    with django_assert_max_num_queries(8):
        r = client.post(URL, body(token.secret), format="json")
    assert r.status_code == 201
