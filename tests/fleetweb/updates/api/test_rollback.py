"""POST /api/v1/channels/{name}/rollback."""
from __future__ import annotations

from fleetweb.fleet.models import Event
from fleetweb.updates.models import Rollout

URL = "/api/v1/channels/{}/rollback"


def two_releases_on_stable(acme, make_release):
    old, new = make_release("101.0.0"), make_release("102.0.0")
    stable = acme.channels.get(name="stable")
    stable.publish(old, "alice")
    stable.publish(new, "alice")
    return old, new


def test_it_rolls_a_channel_back_and_lets_hosts_downgrade(operator, acme, web_group, online_hosts, make_release):
    old, new = two_releases_on_stable(acme, make_release)
    online_hosts(2, version="102.0.0")
    r = operator.post(URL.format("stable"), {"release": old.pk}, format="json")
    assert r.status_code == 200, r.json()
    body = r.json()
    assert body["channel"]["current_release"]["version"] == "101.0.0"
    assert (body["channel"]["history"][0]["action"], body["channel"]["history"][0]["previous"]) == (
        "rollback", "102.0.0")
    rollout = Rollout.objects.get(pk=body["rollouts"][0])
    assert rollout.allow_downgrade and rollout.counts()["total"] == 2
    assert Event.objects.filter(kind="release_rollback").exists()


def test_it_refuses_a_release_the_channel_never_had(operator, acme, web_group, make_release):
    two_releases_on_stable(acme, make_release)
    other = make_release("100.0.0")
    r = operator.post(URL.format("stable"), {"release": other.pk}, format="json")
    assert r.status_code == 400 and r.json()["errors"] == {"release": ["100.0.0 was never on stable"]}
    assert acme.channels.get(name="stable").current_release.version == "102.0.0"


def test_it_answers_404_for_a_release_of_another_organization(operator, acme, other_org, make_release):
    theirs = make_release("101.0.0", org=other_org)
    assert operator.post(URL.format("stable"), {"release": theirs.pk}, format="json").status_code == 404


def test_it_answers_404_to_an_outsider(charlie, acme, other_org, make_release):
    old, _ = two_releases_on_stable(acme, make_release)
    assert charlie.post(URL.format("stable"), {"release": old.pk}, format="json").status_code == 404
    assert acme.channels.get(name="stable").current_release.version == "102.0.0"


def test_it_does_not_let_a_viewer_roll_back(bob, acme, web_group, make_release):
    old, _ = two_releases_on_stable(acme, make_release)
    assert bob.post(URL.format("stable"), {"release": old.pk}, format="json").status_code == 403
    assert acme.channels.get(name="stable").current_release.version == "102.0.0"
