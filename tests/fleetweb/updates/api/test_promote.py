"""POST /api/v1/channels/{name}/promote."""
from __future__ import annotations

from rest_framework.test import APIClient

from fleetweb.fleet.models import Event
from fleetweb.updates.choices import RolloutStatus
from fleetweb.updates.models import ChannelRelease, Rollout

URL = "/api/v1/channels/{}/promote"


def halted_on_beta(acme, beta_group, make_host, make_release):
    make_host(beta_group, "canary-1")
    release = make_release("101.0.0")
    [rollout] = acme.channels.get(name="beta").publish(release, "alice")
    assert rollout.halt("1 of 1 hosts failed")
    return release, rollout


def test_it_promotes_the_release_of_the_channel_before(operator, acme, web_group, make_release):
    release = make_release("101.0.0")
    acme.channels.get(name="beta").publish(release, "alice")
    r = operator.post(URL.format("stable"), {}, format="json")
    assert r.status_code == 200, r.json()
    body = r.json()
    assert body["channel"]["current_release"]["id"] == release.pk
    assert body["channel"]["history"][0]["action"] == "promote"
    assert body["rollouts"] == list(Rollout.objects.filter(group=web_group).values_list("pk", flat=True))


def test_it_refuses_a_release_that_halted_on_the_source_channel(operator, acme, beta_group, web_group, make_host,
                                                                make_release):
    halted_on_beta(acme, beta_group, make_host, make_release)
    r = operator.post(URL.format("stable"), {"override": False}, format="json")
    assert r.status_code == 409
    assert "halted on beta" in r.json()["detail"] and "override" in r.json()["errors"]
    assert acme.channels.get(name="stable").current_release is None
    assert not Rollout.objects.filter(group=web_group).exists()


def test_it_lets_only_an_admin_override_and_logs_the_override(alice, operator, acme, beta_group, web_group,
                                                              make_host, make_release):
    release, _ = halted_on_beta(acme, beta_group, make_host, make_release)
    r = operator.post(URL.format("stable"), {"override": True}, format="json")
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    assert acme.channels.get(name="stable").current_release is None

    r = alice.post(URL.format("stable"), {"override": True}, format="json")
    assert r.status_code == 200, r.json()
    assert r.json()["channel"]["history"][0]["override"] is True
    assert acme.channels.get(name="stable").current_release == release
    event = Event.objects.get(kind="release_promote")
    assert event.data["override"] is True and event.actor == "api-key:alice-key"
    assert Rollout.objects.get(group=web_group).status != RolloutStatus.HALTED


def test_it_records_no_override_when_nothing_needed_overriding(alice, acme, web_group, make_release):
    acme.channels.get(name="beta").publish(make_release("101.0.0"), "alice")
    assert alice.post(URL.format("stable"), {"override": True}, format="json").status_code == 200
    assert Event.objects.get(kind="release_promote").data["override"] is False


def test_it_refuses_to_promote_into_the_first_channel(operator, acme):
    r = operator.post(URL.format("alpha"), {}, format="json")
    assert r.status_code == 400 and "first channel" in r.json()["detail"]


def test_it_refuses_when_the_source_channel_has_no_release(operator, acme):
    r = operator.post(URL.format("beta"), {}, format="json")
    assert r.status_code == 409 and "alpha has no release" in r.json()["detail"]
    assert not ChannelRelease.objects.exists()


def test_it_refuses_a_malformed_override(alice, acme):
    r = alice.post(URL.format("beta"), {"override": "perhaps"}, format="json")
    assert r.status_code == 400 and "override" in r.json()["errors"]


def test_it_does_not_let_a_viewer_promote(bob, acme, web_group, make_release):
    acme.channels.get(name="beta").publish(make_release("101.0.0"), "alice")
    assert bob.post(URL.format("stable"), {}, format="json").status_code == 403
    assert acme.channels.get(name="stable").current_release is None


def test_it_answers_404_to_an_outsider_for_nothing_of_acme(charlie, acme, other_org, make_release):
    acme.channels.get(name="beta").publish(make_release("101.0.0"), "alice")
    r = charlie.post(URL.format("stable"), {}, format="json")
    assert r.status_code == 409 and "beta has no release" in r.json()["detail"]  # their own beta, empty
    assert acme.channels.get(name="stable").current_release is None


def test_it_needs_authentication(acme):
    assert APIClient().post(URL.format("beta"), {}, format="json").status_code == 401
