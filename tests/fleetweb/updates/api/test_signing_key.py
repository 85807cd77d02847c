"""GET /api/v1/signing-key/ and POST /api/v1/signing-key/rotate."""
from __future__ import annotations

from rest_framework.test import APIClient

from fleetweb.fleet.models import Event
from fleetweb.updates.models import SigningKey

URL = "/api/v1/signing-key/"
ROTATE = "/api/v1/signing-key/rotate"


def test_it_shows_the_public_key(bob, acme):
    key = SigningKey.objects.active(acme)
    r = bob.get(URL)
    assert r.status_code == 200
    assert r.json() == {"key_id": key.key_id, "algorithm": "ed25519", "public_key": key.public_key,
                        "created": r.json()["created"]}


def test_it_lets_an_admin_rotate_the_key(alice, acme, make_release):
    old = SigningKey.objects.active(acme)
    r = alice.post(ROTATE)
    assert r.status_code == 200
    new = SigningKey.objects.active(acme)
    assert r.json()["key_id"] == new.key_id != old.key_id
    assert alice.get(URL).json()["public_key"] == new.public_key
    old.refresh_from_db()
    assert old.retired_at is not None
    assert make_release("101.0.0").signing_key == new
    event = Event.objects.get(kind="key_rotated")
    assert event.actor == "api-key:alice-key" and event.data == {"old": old.key_id, "new": new.key_id}


def test_it_never_shows_the_private_key(alice, acme):
    key = SigningKey.objects.active(acme)
    for r in (alice.get(URL), alice.post(ROTATE)):
        assert "private" not in r.content.decode()
    assert key.private_encrypted not in alice.get(URL).content.decode()


def test_it_does_not_let_an_operator_or_a_viewer_rotate(operator, bob, acme):
    key = SigningKey.objects.active(acme)
    assert operator.post(ROTATE).status_code == 403
    assert bob.post(ROTATE).status_code == 403
    assert SigningKey.objects.active(acme) == key and SigningKey.objects.filter(organization=acme).count() == 1


def test_it_shows_each_organization_its_own_key(charlie, acme, other_org):
    assert charlie.get(URL).json()["key_id"] == SigningKey.objects.active(other_org).key_id
    charlie.post(ROTATE)
    assert SigningKey.objects.filter(organization=acme).count() == 1


def test_it_answers_404_when_there_is_no_key_yet(bob, acme):
    SigningKey.objects.filter(organization=acme).update(retired_at="2020-01-01T00:00Z")
    assert bob.get(URL).status_code == 404


def test_it_needs_authentication(acme):
    assert APIClient().get(URL).status_code == 401
    assert APIClient().post(ROTATE).status_code == 401
