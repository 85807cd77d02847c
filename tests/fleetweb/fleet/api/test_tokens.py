"""GET/POST /api/v1/tokens/, GET /api/v1/tokens/{id}/, POST /api/v1/tokens/{id}/revoke."""
from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework.test import APIClient

from agent import signing
from fleetweb.fleet.models import EnrollmentToken, Event
from fleetweb.updates.models import SigningKey

URL = "/api/v1/tokens/"


def test_it_creates_a_token_and_shows_the_secret_once(operator, web_group, settings):
    settings.FLEET_PUBLIC_URL = "https://fleet.example.com"
    r = operator.post(URL, {"group": web_group.pk, "expires_in": 3600, "max_uses": 3, "name": "rack 7"},
                      format="json")
    assert r.status_code == 201, r.content
    data = r.json()
    secret = data["token"]
    assert secret.startswith("fwe_")
    key = SigningKey.objects.active(web_group.organization)
    assert data["command"] == (f"agent register --server https://fleet.example.com --token {secret} "
                               f"--key-hash {signing.fingerprint(key.public_key)}")
    assert data["max_uses"] == 3 and data["uses"] == 0 and data["state"] == "active" and data["name"] == "rack 7"
    assert "expires_in" not in data
    token = EnrollmentToken.objects.get(pk=data["id"])
    assert token.group == web_group and token.created_by.username == "olga"
    assert timedelta(minutes=59) < token.expires_at - timezone.now() <= timedelta(hours=1)
    assert EnrollmentToken.objects.redeem(secret) == token
    assert Event.objects.filter(kind="token_created", group=web_group).exists()
    # never again
    listed = operator.get(URL).json()["results"]
    assert secret not in str(listed) and "token" not in listed[0] and "command" not in listed[0]
    detail = operator.get(f"{URL}{token.pk}/").json()
    assert secret not in str(detail) and "token" not in detail


def test_it_creates_a_token_without_limits(alice, web_group):
    r = alice.post(URL, {"group": web_group.pk}, format="json")
    assert r.status_code == 201, r.content
    assert r.json()["expires_at"] is None and r.json()["max_uses"] is None


def test_it_refuses_bad_limits(alice, web_group):
    for body in ({"group": web_group.pk, "max_uses": 0}, {"group": web_group.pk, "expires_in": -5},
                 {"group": web_group.pk, "expires_in": "soon"}, {}):
        r = alice.post(URL, body, format="json")
        assert r.status_code == 400, body
        assert r.json()["errors"]
    assert not EnrollmentToken.objects.exists()


def test_it_refuses_more_uses_than_a_token_can_count(alice, web_group):
    """Found by the schema fuzzer: a max_uses past the column's range was a 500 (integer out of range)."""
    r = alice.post(URL, {"group": web_group.pk, "max_uses": 45688885835}, format="json")
    assert r.status_code == 400 and "max_uses" in r.json()["errors"], r.content
    assert not EnrollmentToken.objects.exists()
    r = alice.post(URL, {"group": web_group.pk, "max_uses": 2**31 - 1}, format="json")
    assert r.status_code == 201 and r.json()["max_uses"] == 2**31 - 1, r.content


def test_it_refuses_a_group_of_another_organization(alice, other_group):
    r = alice.post(URL, {"group": other_group.pk}, format="json")
    assert r.status_code == 400 and "group" in r.json()["errors"]
    assert not EnrollmentToken.objects.exists()


def test_it_revokes_a_token(operator, web_group):
    token, secret = EnrollmentToken.objects.issue(web_group)
    r = operator.post(f"{URL}{token.pk}/revoke")
    assert r.status_code == 200, r.content
    assert r.json()["state"] == "revoked" and r.json()["revoked_at"]
    assert Event.objects.filter(kind="token_revoked").exists()
    again = operator.post(f"{URL}{token.pk}/revoke")
    assert again.status_code == 409 and again.json()["detail"]
    assert Event.objects.filter(kind="token_revoked").count() == 1


def test_it_lists_tokens_with_their_state(bob, web_group):
    EnrollmentToken.objects.issue(web_group, name="a")
    used, _ = EnrollmentToken.objects.issue(web_group, name="b", max_uses=1)
    EnrollmentToken.objects.filter(pk=used.pk).update(uses=1)
    r = bob.get(URL)
    assert r.status_code == 200
    assert {t["name"]: t["state"] for t in r.json()["results"]} == {"a": "active", "b": "used up"}
    assert all("digest" not in t and "lookup" not in t for t in r.json()["results"])


def test_it_does_not_let_a_viewer_write(bob, web_group):
    token, _ = EnrollmentToken.objects.issue(web_group)
    assert bob.post(URL, {"group": web_group.pk}, format="json").status_code == 403
    assert bob.post(f"{URL}{token.pk}/revoke").status_code == 403
    token.refresh_from_db()
    assert token.revoked_at is None and EnrollmentToken.objects.count() == 1


def test_it_hides_tokens_of_other_organizations(charlie, web_group, other_group):
    token, _ = EnrollmentToken.objects.issue(web_group)
    EnrollmentToken.objects.issue(other_group)
    assert [t["group"] for t in charlie.get(URL).json()["results"]] == [other_group.pk]
    assert charlie.get(f"{URL}{token.pk}/").status_code == 404
    assert charlie.post(f"{URL}{token.pk}/revoke").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


def test_it_needs_authentication(web_group):
    token, _ = EnrollmentToken.objects.issue(web_group)
    assert APIClient().get(URL).status_code == 401
    assert APIClient().post(URL, {"group": web_group.pk}, format="json").status_code == 401
    assert APIClient().post(f"{URL}{token.pk}/revoke").status_code == 401


def test_it_lists_tokens_in_a_constant_number_of_queries(alice, web_group, django_assert_num_queries):
    alice.get(URL)
    EnrollmentToken.objects.issue(web_group)
    with django_assert_num_queries(3):
        alice.get(URL)
    for _ in range(10):
        EnrollmentToken.objects.issue(web_group)
    with django_assert_num_queries(3):
        assert alice.get(URL).json()["count"] == 11
