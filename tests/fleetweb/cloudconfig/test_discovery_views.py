"""Dashboard of discovery tokens: the organization's tokens with their members; anonymous tokens
for staff only; outsiders 404, viewers cannot create or remove."""
from __future__ import annotations

import pytest

from fleetweb.cloudconfig.discovery_models import DiscoveryToken


@pytest.fixture
def page(client):
    def login(api_client):
        client.force_login(api_client.user)
        return client
    return login


def test_it_lists_the_organizations_tokens_and_members(alice, acme, other_org, page):
    mine = DiscoveryToken.objects.issue(3, organization=acme, name="etcd-web")
    mine.register("8e9e05c52164694d", "m1=http://10.0.0.1:2380")
    theirs = DiscoveryToken.objects.issue(3, organization=other_org)
    anonymous = DiscoveryToken.objects.issue(3)
    html = page(alice).get("/discovery/tokens/").content.decode()
    assert mine.token in html and "1 / 3" in html
    assert theirs.token not in html and anonymous.token not in html
    detail = page(alice).get(f"/discovery/tokens/{mine.pk}/").content.decode()
    assert "8e9e05c52164694d" in detail and "http://10.0.0.1:2380" in detail and f"/discovery/{mine.token}" in detail


def test_staff_also_see_anonymous_tokens(alice, page):
    anonymous = DiscoveryToken.objects.issue(5)
    alice.user.is_staff = True
    alice.user.save()
    assert anonymous.token in page(alice).get("/discovery/tokens/").content.decode()


def test_the_outsider_gets_404(charlie, acme, page):
    token = DiscoveryToken.objects.issue(3, organization=acme)
    assert page(charlie).get(f"/discovery/tokens/{token.pk}/").status_code == 404


def test_an_operator_creates_a_token_and_a_viewer_cannot(operator, bob, acme, page, client):
    r = page(operator).post("/discovery/tokens/", {"name": "db", "size": "5"})
    token = DiscoveryToken.objects.get(organization=acme)
    assert r.status_code == 302 and token.size == 5 and token.name == "db" and len(token.token) == 32
    assert page(operator).post("/discovery/tokens/", {"size": "0"}).status_code == 422
    client.logout()
    assert page(bob).post("/discovery/tokens/", {"size": "3"}).status_code == 403
    token.register("aa", "m1=http://a:2380")
    assert page(bob).post(f"/discovery/tokens/{token.pk}/members/aa/remove").status_code == 403
    assert token.members.count() == 1
