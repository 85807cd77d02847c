"""POST /api/v1/agents/register as served under ASGI: the bare endpoint ahead of Django, whose
enrollments that arrive together share one transaction.  Same answers as the DRF view."""
from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async

from fleetweb.asgi import application
from fleetweb.fleet.models import Event, Host, HostCredential
from tests.communicators import HttpCommunicator

from .test_register import BAD_TOKENS, body, spoil

pytestmark = pytest.mark.django_db(transaction=True)
URL = "/api/v1/agents/register"


async def post(data, content_type="application/json", raw: bytes | None = None) -> tuple[int, dict, dict]:
    payload = raw if raw is not None else json.dumps(data).encode()
    comm = HttpCommunicator(application, "POST", URL, body=payload,
                            headers=[(b"content-type", content_type.encode())] if content_type else [])
    response = await comm.get_response()
    headers = {k.decode().lower(): v.decode() for k, v in response["headers"]}
    return response["status"], json.loads(response["body"]), headers


@sync_to_async
def snapshot(token):
    token.refresh_from_db()
    return Host.objects.count(), HostCredential.objects.count(), Event.objects.filter(kind="registered").count(), \
        token.uses


async def test_it_registers_a_host_and_answers_like_the_api(token, settings):
    settings.FLEET_PUBLIC_URL = "https://fleet.example.com"
    status, data, headers = await post(body(token.secret))
    assert status == 201, data
    assert {"host_id", "credential", "ws_url", "group", "org"} <= set(data)  # + the signing key, when there is one
    assert (data["ws_url"], data["group"], data["org"]) == ("wss://fleet.example.com/ws/agent/", "web", "acme")
    assert headers["cache-control"] == "no-store" and headers["content-type"] == "application/json"
    host = await Host.objects.select_related("group").aget(pk=data["host_id"])
    assert (host.hostname, host.group.slug, host.version, host.channel) == ("node-1", "web", "100.0.0", "stable")
    assert await sync_to_async(HostCredential.objects.authenticate)(data["credential"]) == host
    assert await snapshot(token) == (1, 1, 1, 1)


@pytest.mark.parametrize("case, status, code", BAD_TOKENS)
async def test_it_refuses_a_bad_token_with_the_code_the_agent_maps_and_stores_nothing(token, case, status, code):
    secret = await sync_to_async(spoil)(token, case)
    before = await snapshot(token)
    got, data, _ = await post(body(secret))
    assert got == status, data
    assert data == {"detail": data["detail"], "errors": {}, "code": code} and data["detail"]
    assert await snapshot(token) == before


@pytest.mark.parametrize("kind, status, check", [
    ("not json", 400, lambda d: d["code"] == "parse_error" and d["detail"].startswith("JSON parse error")),
    ("not utf-8", 400, lambda d: d["code"] == "parse_error"),
    ("a list", 400, lambda d: "non_field_errors" in d["errors"]),
    ("form encoded", 415, lambda d: d["code"] == "unsupported_media_type" and "application/x-www-form" in d["detail"]),
    ("no content type", 415, lambda d: d["code"] == "unsupported_media_type"),
    ("too large", 413, lambda d: d["code"] == "body_too_large" and "64 KiB" in d["detail"]),
    ("no machine id", 400, lambda d: d["detail"].startswith("machine_id: ")),
    ("hostname too long", 400, lambda d: d["detail"].startswith("hostname: ")),
    ("bad partitions", 400, lambda d: d["detail"].startswith("partitions: ")),
    ("no token", 400, lambda d: d["detail"].startswith("token: ")),
])
async def test_it_refuses_a_bad_body_with_a_clear_error_before_the_token_is_used(token, kind, status, check):
    good = body(token.secret)
    args = {"data": good}
    if kind == "not json":
        args = {"data": None, "raw": b'{"token": '}
    elif kind == "not utf-8":
        args = {"data": None, "raw": b'{"token": "\xff\xfe"}'}
    elif kind == "a list":
        args = {"data": [good]}
    elif kind == "form encoded":
        args = {"data": None, "raw": b"token=x", "content_type": "application/x-www-form-urlencoded"}
    elif kind == "no content type":
        args = {"data": good, "content_type": ""}
    elif kind == "too large":
        args = {"data": {**good, "hostname": "h" * 70000}}
    elif kind == "no machine id":
        args = {"data": {k: v for k, v in good.items() if k != "machine_id"}}
    elif kind == "hostname too long":
        args = {"data": {**good, "hostname": "h" * 256}}
    elif kind == "bad partitions":
        args = {"data": {**good, "partitions": [{"label": "USR-A"}]}}
    elif kind == "no token":
        args = {"data": {k: v for k, v in good.items() if k != "token"}}
    before = await snapshot(token)
    got, data, _ = await post(**args)
    assert got == status, data
    assert check(data), data
    assert await snapshot(token) == before


async def test_a_burst_shares_transactions_and_a_token_enrolls_exactly_its_uses(token, monkeypatch):
    batches = []
    original = Host.objects.register_many

    def spy(requests):
        batches.append(len(requests))
        return original(requests)

    monkeypatch.setattr(Host.objects, "register_many", spy)
    answers = await asyncio.gather(*(post(body(token.secret, machine_id=f"{i:032x}", hostname=f"burst-{i}"))
                                     for i in range(12)))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [201] * 5 + [403] * 7
    assert {d["code"] for s, d, _ in answers if s == 403} == {"token_exhausted"}
    assert await snapshot(token) == (5, 5, 5, 5)
    assert sum(batches) == 12 and max(batches) > 1, batches  # enrollments were batched


async def test_one_machine_enrolling_twice_at_once_keeps_one_host_and_only_the_newest_credential(token):
    answers = await asyncio.gather(*(post(body(token.secret, hostname=f"twice-{i}")) for i in range(3)))
    assert [s for s, _, _ in answers] == [201, 201, 201]
    assert len({d["host_id"] for _, d, _ in answers}) == 1
    valid = [i for i, (_, d, _) in enumerate(answers)
             if await sync_to_async(HostCredential.objects.authenticate)(d["credential"]) is not None]
    assert len(valid) == 1
    host = await Host.objects.aget()
    assert host.hostname == f"twice-{valid[0]}"  # the record is the one the valid credential was issued with
    assert await snapshot(token) == (1, 3, 3, 3)


async def test_a_failed_write_answers_500_and_stores_nothing(token, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(HostCredential.objects, "bulk_create", boom)
    before = await snapshot(token)
    got, data, _ = await post(body(token.secret))
    assert got == 500 and "nothing was" in data["detail"]
    assert await snapshot(token) == before
