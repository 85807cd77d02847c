"""POST /api/v1/rollouts/{id}/pause, /resume and /abort."""
from __future__ import annotations

import pytest

from fleetweb.fleet.models import Event
from fleetweb.updates.choices import RolloutStatus
from fleetweb.updates.models import Rollout

URL = "/api/v1/rollouts/{}/{}"


@pytest.fixture
def rollout(acme, web_group, online_hosts, make_release):
    web_group.max_in_flight = 1
    web_group.save()
    online_hosts(3)
    [rollout] = acme.channels.get(name="stable").publish(make_release("101.0.0"), "alice")
    return rollout


def status(rollout):
    return Rollout.objects.get(pk=rollout.pk).status


def test_it_pauses_resumes_and_aborts(operator, rollout):
    r = operator.post(URL.format(rollout.pk, "pause"))
    assert r.status_code == 200 and r.json()["status"] == "paused"
    assert r.json()["counts"]["total"] == 3
    r = operator.post(URL.format(rollout.pk, "resume"))
    assert r.status_code == 200 and r.json()["status"] == "running"
    r = operator.post(URL.format(rollout.pk, "abort"))
    assert r.status_code == 200 and r.json()["status"] == "aborted" and r.json()["finished"]
    kinds = list(Event.objects.filter(data__rollout=rollout.pk).order_by("id").values_list("kind", "actor"))
    assert kinds[-3:] == [("rollout_paused", "api-key:olga-key"), ("rollout_running", "api-key:olga-key"),
                          ("rollout_aborted", "api-key:olga-key")]


def test_it_refuses_to_pause_twice(operator, rollout):
    assert operator.post(URL.format(rollout.pk, "pause")).status_code == 200
    r = operator.post(URL.format(rollout.pk, "pause"))
    assert r.status_code == 409
    assert r.json()["detail"] == "rollout is paused: cannot pause" and r.json()["errors"] == {}
    assert Event.objects.filter(kind="rollout_paused").count() == 1


@pytest.mark.parametrize("name", ["pause", "resume", "abort"])
def test_it_refuses_any_change_once_aborted(operator, rollout, name):
    rollout.abort("alice")
    r = operator.post(URL.format(rollout.pk, name))
    assert r.status_code == 409 and r.json()["detail"] == f"rollout is aborted: cannot {name}"
    assert status(rollout) == RolloutStatus.ABORTED


def test_it_resumes_a_halted_rollout(operator, rollout):
    rollout.halt("1 of 3 hosts failed")
    r = operator.post(URL.format(rollout.pk, "resume"))
    assert r.status_code == 200 and r.json()["status"] == "running"


def test_it_refuses_to_resume_a_running_rollout(operator, rollout):
    r = operator.post(URL.format(rollout.pk, "resume"))
    assert r.status_code == 409 and r.json()["detail"] == "rollout is running: cannot resume"


@pytest.mark.parametrize("name", ["pause", "resume", "abort"])
def test_it_does_not_let_a_viewer_change_a_rollout(bob, rollout, name):
    if name == "resume":
        rollout.pause("alice")
    before = status(rollout)
    r = bob.post(URL.format(rollout.pk, name))
    assert r.status_code == 403 and set(r.json()) >= {"detail", "errors"}
    assert status(rollout) == before


@pytest.mark.parametrize("name", ["pause", "resume", "abort"])
def test_it_answers_404_to_an_outsider(charlie, rollout, name):
    assert charlie.post(URL.format(rollout.pk, name)).status_code == 404
    assert status(rollout) == RolloutStatus.RUNNING
