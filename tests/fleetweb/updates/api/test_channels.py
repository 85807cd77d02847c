"""GET /api/v1/channels/ and /api/v1/channels/{name}/."""
from __future__ import annotations

from rest_framework.test import APIClient

URL = "/api/v1/channels/"


def test_it_lists_the_three_channels_in_promotion_order(bob, web_group):
    r = bob.get(URL)
    assert r.status_code == 200
    results = r.json()["results"]
    assert [c["name"] for c in results] == ["alpha", "beta", "stable"]
    assert [c["groups_count"] for c in results] == [0, 0, 1]
    assert results[2] == {"name": "stable", "position": 2, "groups_count": 1, "current_release": None,
                          "history": []}


def test_it_shows_one_channel_by_name(bob, web_group):
    r = bob.get(f"{URL}stable/")
    assert r.status_code == 200
    assert r.json()["groups_count"] == 1
    assert bob.get(f"{URL}nightly/").status_code == 404


def test_it_counts_only_the_callers_groups(charlie, web_group, other_org):
    assert charlie.get(f"{URL}stable/").json()["groups_count"] == 0
    assert [c["groups_count"] for c in charlie.get(URL).json()["results"]] == [0, 0, 0]


def test_it_answers_404_for_another_organizations_channel_id(charlie, acme):
    channel = acme.channels.get(name="beta")
    assert charlie.get(f"{URL}{channel.pk}/").status_code == 404


def test_it_is_read_only(alice, acme):
    assert alice.post(URL, {"name": "nightly"}, format="json").status_code == 405
    assert alice.patch(f"{URL}beta/", {"position": 9}, format="json").status_code == 405


def test_it_does_not_let_a_viewer_write(bob, acme):
    assert bob.post(URL, {"name": "nightly"}, format="json").status_code == 403


def test_it_needs_authentication(acme):
    assert APIClient().get(URL).status_code == 401
    assert APIClient().get(f"{URL}beta/").status_code == 401


def test_it_shows_the_current_release_and_the_history(bob, acme, tmp_path, settings, django_assert_num_queries):
    import io

    from fleetweb.updates.models import Release

    settings.FLEET_MEDIA_ROOT = tmp_path
    beta = acme.channels.get(name="beta")
    first = Release.objects.create_from_upload(acme, "100.0.0", io.BytesIO(b"usr image 1"))
    second = Release.objects.create_from_upload(acme, "101.0.0", io.BytesIO(b"usr image 2"))
    beta.publish(first, actor="alice")
    beta.publish(second, actor="alice")
    bob.get(URL)
    # the API key, the count, the channels (with their release), their history
    with django_assert_num_queries(4):
        channels = {c["name"]: c for c in bob.get(URL).json()["results"]}
    assert channels["alpha"]["current_release"] is None and channels["alpha"]["history"] == []
    current = channels["beta"]["current_release"]
    assert current["version"] == "101.0.0" and current["sha256"] == second.sha256
    history = channels["beta"]["history"]
    assert [(h["release"]["version"], h["previous"], h["action"]) for h in history] == [
        ("101.0.0", "100.0.0", "publish"), ("100.0.0", None, "publish")]
    assert bob.get(f"{URL}beta/").json() == channels["beta"]
