"""POST /api/v1/channels/{name}/publish."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from fleetweb.fleet.models import Event
from fleetweb.updates.models import ChannelRelease, Rollout

URL = "/api/v1/channels/{}/publish"


def test_it_publishes_a_release_and_starts_a_rollout_per_group(operator, acme, web_group, online_hosts,
                                                               make_release):
    online_hosts(3)
    release = make_release("101.0.0")
    r = operator.post(URL.format("stable"), {"release": release.pk}, format="json")
    assert r.status_code == 200, r.json()
    body = r.json()
    rollout = Rollout.objects.get()
    assert body["rollouts"] == [rollout.pk]
    assert rollout.group == web_group and rollout.release == release and rollout.counts()["total"] == 3
    channel = body["channel"]
    assert channel["name"] == "stable" and channel["current_release"]["version"] == "101.0.0"
    assert [(h["release"]["version"], h["action"], h["actor"]) for h in channel["history"]] == [
        ("101.0.0", "publish", "api-key:olga-key")]
    assert operator.get("/api/v1/channels/stable/").json() == channel
    assert Event.objects.filter(kind="release_publish", data__release="101.0.0").exists()


def test_it_answers_404_for_a_release_of_another_organization(operator, acme, web_group, other_org, make_release):
    theirs = make_release("101.0.0", org=other_org)
    r = operator.post(URL.format("stable"), {"release": theirs.pk}, format="json")
    assert r.status_code == 404
    assert r.json()["errors"] == {"release": ["Unknown release."]}
    assert acme.channels.get(name="stable").current_release is None
    assert not Rollout.objects.exists() and not ChannelRelease.objects.exists()


def test_it_answers_404_to_an_outsider_publishing_a_release_of_acme(charlie, acme, other_group, make_release):
    ours = make_release("101.0.0")
    assert charlie.post(URL.format("stable"), {"release": ours.pk}, format="json").status_code == 404
    assert not Rollout.objects.exists() and not ChannelRelease.objects.exists()


def test_it_refuses_an_older_release_and_names_the_explicit_rollback(operator, acme, web_group, make_release):
    old, new = make_release("101.0.0"), make_release("102.0.0")
    stable = acme.channels.get(name="stable")
    stable.publish(new, "alice")
    r = operator.post(URL.format("stable"), {"release": old.pk}, format="json")
    assert r.status_code == 409
    assert "explicit rollback" in r.json()["detail"] and "explicit rollback" in r.json()["errors"]["release"][0]
    stable.refresh_from_db()
    assert stable.current_release == new and stable.history.count() == 1 and Rollout.objects.count() == 1


def test_it_refuses_the_current_release_again(operator, acme, web_group, make_release):
    release = make_release("101.0.0")
    acme.channels.get(name="stable").publish(release, "alice")
    r = operator.post(URL.format("stable"), {"release": release.pk}, format="json")
    assert r.status_code == 409 and "already the current release" in r.json()["detail"]
    assert Rollout.objects.count() == 1


@pytest.mark.parametrize("body", [{}, {"release": "x"}, {"release": None}])
def test_it_refuses_a_malformed_body(operator, acme, body):
    r = operator.post(URL.format("stable"), body, format="json")
    assert r.status_code == 400 and "release" in r.json()["errors"]
    assert not ChannelRelease.objects.exists()


def test_it_answers_404_for_an_unknown_channel(operator, acme, make_release):
    release = make_release("101.0.0")
    assert operator.post(URL.format("nightly"), {"release": release.pk}, format="json").status_code == 404


def test_it_does_not_let_a_viewer_publish(bob, acme, web_group, make_release):
    release = make_release("101.0.0")
    r = bob.post(URL.format("stable"), {"release": release.pk}, format="json")
    assert r.status_code == 403 and set(r.json()) >= {"detail", "errors"}
    assert acme.channels.get(name="stable").current_release is None and not Rollout.objects.exists()


def test_it_needs_authentication(acme, make_release):
    release = make_release("101.0.0")
    assert APIClient().post(URL.format("stable"), {"release": release.pk}, format="json").status_code == 401
