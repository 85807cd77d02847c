"""GET/POST /api/v1/releases/ and GET /api/v1/releases/{id}/."""
from __future__ import annotations

import hashlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from agent import signing
from fleetweb.fleet.models import Event
from fleetweb.updates.models import Release, SigningKey

URL = "/api/v1/releases/"
PAYLOAD = b"usr filesystem image " * 4096

ITEM_FIELDS = {"id", "version", "size", "sha256", "signature", "signing_key_id", "notes", "channels",
               "created_by", "created"}


def upload(client, version="101.0.0", payload=PAYLOAD, **fields):
    body = {"version": version, **fields}
    if payload is not None:
        body["payload"] = SimpleUploadedFile("usr.img", payload)
    return client.post(URL, body, format="multipart")


# -- upload -----------------------------------------------------------------------------------

def test_it_uploads_a_release_and_signs_it_with_the_organizations_key(operator, acme, stored_files):
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    r = upload(operator, size=len(PAYLOAD), sha256=digest.upper(), notes="kernel 6.6")
    assert r.status_code == 201, r.json()
    body = r.json()
    assert set(body) == ITEM_FIELDS
    key = SigningKey.objects.active(acme)
    assert body["version"] == "101.0.0" and body["size"] == len(PAYLOAD) and body["sha256"] == digest
    assert body["signing_key_id"] == key.key_id and body["notes"] == "kernel 6.6"
    assert body["channels"] == [] and body["created_by"] == "api-key:olga-key"
    signing.verify(key.public_key, body["signature"], "101.0.0", len(PAYLOAD), digest)
    release = Release.objects.get(pk=body["id"])
    assert release.path.read_bytes() == PAYLOAD
    assert stored_files() == [release.payload]
    event = Event.objects.get(kind="release_created")
    assert event.actor == "api-key:olga-key" and event.data["release"] == "101.0.0"


def test_it_needs_no_declared_size_or_hash(operator, acme):
    r = upload(operator)
    assert r.status_code == 201
    assert r.json()["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()


@pytest.mark.parametrize("fields, field, status, message", [
    ({"sha256": "0" * 64}, "sha256", 400, "does not match the payload"),
    ({"sha256": "abc"}, "sha256", 400, "64 hexadecimal characters"),
    ({"size": len(PAYLOAD) + 1}, "size", 400, "does not match the payload"),
    ({"size": -1}, "size", 400, "greater than or equal to 0"),
    ({"version": "latest"}, "version", 400, "is not a version"),
    ({"version": "1." + "1" * 70}, "version", 400, "no more than 64 characters"),
    ({"payload": b""}, "payload", 400, "empty"),
    ({"payload": None}, "payload", 400, "No file was submitted"),
])
def test_it_refuses_a_bad_upload_and_stores_nothing(operator, acme, stored_files, fields, field, status, message):
    r = upload(operator, **fields)
    assert r.status_code == status, r.json()
    body = r.json()
    assert set(body) >= {"detail", "errors"}
    assert message in body["detail"]
    assert list(body["errors"]) == [field] and message in body["errors"][field][0]
    assert not Release.objects.exists()
    assert stored_files() == []
    assert not Event.objects.filter(kind="release_created").exists()


def test_it_refuses_a_version_that_already_exists_with_409(operator, acme, make_release, stored_files):
    first = make_release("101.0.0")
    r = upload(operator, "101.0.0", payload=b"another image")
    assert r.status_code == 409
    assert r.json()["detail"] == "release 101.0.0 already exists"
    assert r.json()["errors"] == {"version": ["release 101.0.0 already exists"]}
    assert list(Release.objects.values_list("pk", flat=True)) == [first.pk]
    assert stored_files() == [first.payload]


def test_it_does_not_let_a_viewer_upload(bob, acme, stored_files):
    r = upload(bob)
    assert r.status_code == 403
    assert set(r.json()) >= {"detail", "errors"}
    assert not Release.objects.exists() and stored_files() == []


def test_it_needs_authentication(acme):
    assert APIClient().get(URL).status_code == 401
    assert upload(APIClient()).status_code == 401
    assert not Release.objects.exists()


def test_it_keeps_the_same_version_apart_per_organization(charlie, make_release, other_org):
    make_release("101.0.0")
    r = upload(charlie, "101.0.0")
    assert r.status_code == 201
    assert SigningKey.objects.get(key_id=r.json()["signing_key_id"]).organization == other_org


# -- list and detail --------------------------------------------------------------------------

def test_it_lists_releases_newest_first_with_their_channels(bob, acme, make_release):
    old, new = make_release("101.0.0"), make_release("102.0.0")
    acme.channels.get(name="alpha").publish(new, "alice")
    acme.channels.get(name="beta").publish(new, "alice")
    acme.channels.get(name="stable").publish(old, "alice")
    results = bob.get(URL).json()["results"]
    assert [(r["version"], r["channels"]) for r in results] == [("102.0.0", ["alpha", "beta"]),
                                                                 ("101.0.0", ["stable"])]
    assert set(results[0]) == ITEM_FIELDS


@pytest.mark.parametrize("query, expected", [
    ("version=101.0.0", ["101.0.0"]),
    ("version=9.9.9", []),
    ("channel=beta", ["102.0.0", "101.0.0"]),
    ("channel=stable", []),
])
def test_it_filters_releases(bob, acme, make_release, query, expected):
    old, new = make_release("101.0.0"), make_release("102.0.0")
    beta = acme.channels.get(name="beta")
    beta.publish(old, "alice")
    beta.publish(new, "alice")
    make_release("103.0.0")
    assert [r["version"] for r in bob.get(f"{URL}?{query}").json()["results"]] == expected


def test_it_rejects_an_unknown_channel_filter(bob, acme):
    r = bob.get(f"{URL}?channel=nightly")
    assert r.status_code == 400 and "channel" in r.json()["errors"]


def test_it_shows_a_release_with_its_channels_and_rollouts(bob, acme, web_group, make_release):
    release = make_release("101.0.0")
    [rollout] = acme.channels.get(name="stable").publish(release, "alice")
    r = bob.get(f"{URL}{release.pk}/")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == ITEM_FIELDS | {"rollouts"}
    assert body["channels"] == ["stable"]
    assert body["rollouts"] == [{"id": rollout.pk, "group": web_group.pk, "group_name": "web", "channel": "stable",
                                 "status": "completed", "halted_reason": "", "created": body["rollouts"][0]["created"],
                                 "finished": body["rollouts"][0]["finished"]}]


def test_it_hides_releases_of_other_organizations(charlie, acme, other_org, make_release):
    release = make_release("101.0.0")
    make_release("200.0.0", org=other_org)
    assert [r["version"] for r in charlie.get(URL).json()["results"]] == ["200.0.0"]
    assert charlie.get(f"{URL}{release.pk}/").status_code == 404
    assert charlie.get(f"{URL}?version=101.0.0").json()["count"] == 0


def test_it_never_shows_the_private_key(alice, acme, make_release):
    release = make_release("101.0.0")
    key = SigningKey.objects.active(acme)
    for text in (alice.get(URL).content, alice.get(f"{URL}{release.pk}/").content):
        assert key.private_encrypted.encode() not in text and b"private" not in text


def test_it_lists_5_or_50_releases_in_the_same_number_of_queries(alice, acme, make_release,
                                                                 django_assert_num_queries):
    alice.get(URL)  # the API key's last_used is written at most once a minute
    stable = acme.channels.get(name="stable")
    for i in range(5):
        stable.publish(make_release(f"101.0.{i}", data=b"x%d" % i), "alice")
    # the API key, the count, the page (with the signing key), the channels where current
    with django_assert_num_queries(4):
        assert alice.get(URL).json()["count"] == 5
    for i in range(5, 50):
        stable.publish(make_release(f"101.0.{i}", data=b"x%d" % i), "alice")
    with django_assert_num_queries(4):
        assert alice.get(URL).json()["count"] == 50
