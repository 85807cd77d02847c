"""YAML alias bombs (issue 9 §5): refused with one clear error in validation, saving, merging and
serving; nothing stored.  No timing assertions: the error names the node budget, and the loader's
count shows it stopped right past the budget instead of expanding the whole document."""
from __future__ import annotations

from pathlib import Path

import pytest
from django.test import Client
from rest_framework.test import APIClient

from agent import cloudconfig as cc
from fleetweb.cloudconfig.models import CloudConfig, FetchUrl, Revision

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "cloudconfig"
BOMBS = ["bomb_validate.yaml", "bomb_merge.yaml"]
ERROR = f"document expands to more than {cc.MAX_NODES} nodes (aliases)"


def bomb(name: str) -> str:
    return (FIXTURES / name).read_text()


@pytest.mark.parametrize("name", BOMBS)
def test_validation_refuses_a_bomb_with_one_error(bob, name):
    r = bob.post("/api/v1/cloud-config/validate", {"content": bomb(name)}, format="json")
    assert r.status_code == 200
    assert r.json() == {"valid": False, "entries": [{"line": 1, "kind": "error", "message": ERROR}]}


@pytest.mark.parametrize("name", BOMBS)
def test_the_composer_stops_at_the_budget(name):
    loader = cc.SafeComposeLoader(bomb(name))
    with pytest.raises(cc.TooLarge, match="nodes"):
        loader.get_single_node()
    # stopped as soon as the count passed the budget, not after expanding everything (> 100,000)
    assert cc.MAX_NODES < loader.total <= cc.MAX_NODES + 2 * 7 ** 5


@pytest.mark.parametrize("name", BOMBS)
def test_a_put_of_a_bomb_stores_nothing(operator, web_group, name):
    r = operator.put(f"/api/v1/groups/{web_group.pk}/cloud-config", {"content": bomb(name)}, format="json")
    assert r.status_code == 400
    body = r.json()
    assert body["valid"] is False and body["entries"] == [{"line": 1, "kind": "error", "message": ERROR}]
    assert Revision.objects.count() == 0 and CloudConfig.objects.filter(revisions__isnull=False).count() == 0


def test_the_editor_refuses_a_bomb_and_stores_nothing(alice, web_group):
    web = Client()
    web.force_login(alice.user)
    r = web.post(f"/cloud-config/groups/{web_group.pk}/", {"content": bomb("bomb_merge.yaml")})
    assert r.status_code == 422 and ERROR in r.content.decode()
    assert Revision.objects.count() == 0


def test_merge_refuses_a_bomb():
    with pytest.raises(cc.TooLarge, match="nodes"):
        cc.merge("#cloud-config\nhostname: a\n", bomb("bomb_merge.yaml"))


def test_merged_output_is_bounded():
    big = "#cloud-config\nwrite_files:\n" + "".join(
        f"  - path: /etc/f{i}\n    content: {'x' * 60_000}\n" for i in range(60))
    with pytest.raises(cc.TooLarge, match="larger than"):
        cc.merge(big.replace("/etc/f", "/etc/a"), big.replace("/etc/f", "/etc/b"))


def test_a_stored_bomb_is_not_served(alice, web_group, make_host):
    """A bomb stored before the limits existed: the server refuses to serve it (409)."""
    host = make_host(web_group)
    CloudConfig.objects.for_group(web_group)
    CloudConfig.objects.filter(group=web_group).update(content=bomb("bomb_merge.yaml"))
    r = alice.get(f"/api/v1/hosts/{host.pk}/cloud-config/effective")
    assert r.status_code == 409 and r.json()["code"] == "document_too_large" and r.json()["detail"] == ERROR
    agent = APIClient()
    agent.credentials(HTTP_AUTHORIZATION=f"Bearer {host.credential}")
    r = agent.post("/api/v1/agents/cloud-config", {}, format="json")
    assert r.status_code == 409 and r.json()["code"] == "document_too_large"
    _, secret = FetchUrl.objects.issue(group=web_group, created_by=None)
    r = Client().get(f"/cloud-config/{secret}")
    assert r.status_code == 409 and r.json()["code"] == "document_too_large"
