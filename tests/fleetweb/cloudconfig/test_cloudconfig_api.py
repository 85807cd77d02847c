"""REST for cloud-config documents: scoping, roles, validation report, revisions, diff, restore,
the agent's fetch, the policy fields and the applied report."""
from __future__ import annotations

import pytest

from fleetweb.cloudconfig.models import CloudConfig, HostCloudConfigState, Revision
from fleetweb.fleet.models import Event

GOOD = "#cloud-config\nhostname: web\ncoreos:\n  update:\n    reboot_strategy: etcd-lock\n"
BAD = "#cloud-config\ncoreos:\n  update:\n    reboot_strategy: false\n"


def put(client, url, content):
    return client.put(url, {"content": content}, format="json")


def test_it_validates_with_the_contract_shape(bob):
    r = bob.post("/api/v1/cloud-config/validate", {"content": BAD}, format="json")
    assert r.status_code == 200
    assert r.json() == {"valid": False, "entries": [{"line": 4, "kind": "error", "message": "invalid value false"}]}
    r = bob.post("/api/v1/cloud-config/validate", {"content": "hostname: x\n"}, format="json")
    assert r.json()["entries"] == [{"line": 1, "kind": "error", "message": 'must be "#cloud-config" or begin with "#!"'}]


def test_it_saves_a_group_document_as_a_new_revision(operator, web_group):
    r = put(operator, f"/api/v1/groups/{web_group.pk}/cloud-config", GOOD)
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["content"] == GOOD and body["revision"] == 1 and body["author"] == "olga"
    assert operator.get(f"/api/v1/groups/{web_group.pk}/cloud-config").json()["content"] == GOOD
    r = put(operator, f"/api/v1/groups/{web_group.pk}/cloud-config", GOOD + "ssh_authorized_keys: [k]\n")
    assert r.json()["revision"] == 2
    assert put(operator, f"/api/v1/groups/{web_group.pk}/cloud-config", GOOD + "ssh_authorized_keys: [k]\n") \
        .json()["revision"] == 2   # unchanged: no new revision


def test_a_malformed_body_answers_the_400_the_schema_documents(operator, client, web_group):
    """The schema fuzzer: the 400 of a PUT was documented as always carrying the report."""
    r = operator.put(f"/api/v1/groups/{web_group.pk}/cloud-config", {"contents": GOOD}, format="json")
    assert r.status_code == 400 and set(r.json()) == {"detail", "errors"} and "content" in r.json()["errors"]
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    put_400 = schema["paths"]["/api/v1/groups/{id}/cloud-config"]["put"]["responses"]["400"]
    name = put_400["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(schema["components"]["schemas"][name]["required"]) <= set(r.json())


def test_a_document_with_errors_is_not_saved(operator, web_group):
    put(operator, f"/api/v1/groups/{web_group.pk}/cloud-config", GOOD)
    r = put(operator, f"/api/v1/groups/{web_group.pk}/cloud-config", BAD)
    assert r.status_code == 400
    body = r.json()
    assert body["valid"] is False
    assert body["entries"] == [{"line": 4, "kind": "error", "message": "invalid value false"}]
    assert body["errors"] == {"content": ["line 4: error: invalid value false"]}
    assert body["detail"].startswith("The document has errors: line 4")
    assert Revision.objects.count() == 1
    assert CloudConfig.objects.get(group=web_group).content == GOOD


def test_an_ignition_config_passes_validation_as_upstream_but_is_not_saved(operator, web_group):
    """coreos-cloudinit --validate passes Ignition JSON (the interop suite checks ours does too); the
    agent applies cloud-config only, so a saved one would silently do nothing."""
    ignition = '{"ignition": {"version": "3.0.0"}}'
    r = operator.post("/api/v1/cloud-config/validate", {"content": ignition}, format="json")
    assert r.json() == {"valid": True, "entries": []}
    r = put(operator, f"/api/v1/groups/{web_group.pk}/cloud-config", ignition)
    assert r.status_code == 400
    assert r.json()["entries"] == [{"line": 1, "kind": "error", "message": "this is an Ignition config (JSON): "
                                    "Fleetweb serves cloud-config; write it as a #cloud-config document"}]
    assert CloudConfig.objects.count() == 0 and Revision.objects.count() == 0


def test_a_first_document_with_errors_creates_nothing(operator, web_group, make_host):
    host = make_host(web_group)
    assert put(operator, f"/api/v1/hosts/{host.pk}/cloud-config", "no header\n").status_code == 400
    assert CloudConfig.objects.count() == 0 and Revision.objects.count() == 0


def test_the_viewer_reads_but_cannot_write(bob, web_group):
    assert bob.get(f"/api/v1/groups/{web_group.pk}/cloud-config").status_code == 200
    assert put(bob, f"/api/v1/groups/{web_group.pk}/cloud-config", GOOD).status_code == 403
    assert put(bob, "/api/v1/organization/cloud-config", GOOD).status_code == 403
    assert Revision.objects.count() == 0


@pytest.mark.parametrize("suffix", ["cloud-config", "cloud-config/revisions", "cloud-config/diff"])
def test_the_outsider_gets_404(charlie, alice, web_group, make_host, suffix):
    host = make_host(web_group)
    put(alice, f"/api/v1/groups/{web_group.pk}/cloud-config", GOOD)
    put(alice, f"/api/v1/hosts/{host.pk}/cloud-config", GOOD)
    assert charlie.get(f"/api/v1/groups/{web_group.pk}/{suffix}").status_code == 404
    assert charlie.get(f"/api/v1/hosts/{host.pk}/{suffix}").status_code == 404
    assert put(charlie, f"/api/v1/groups/{web_group.pk}/cloud-config", GOOD).status_code == 404
    assert charlie.get(f"/api/v1/hosts/{host.pk}/cloud-config/effective").status_code == 404
    assert charlie.post(f"/api/v1/groups/{web_group.pk}/cloud-config/revisions/1/restore").status_code == 404
    assert charlie.get("/api/v1/organization/cloud-config").json()["content"] == ""   # their own, empty


def test_revisions_diff_and_restore(alice, web_group):
    url = f"/api/v1/groups/{web_group.pk}/cloud-config"
    put(alice, url, "#cloud-config\nhostname: a\n")
    put(alice, url, "#cloud-config\nhostname: b\n")
    revs = alice.get(f"{url}/revisions").json()
    assert [r["number"] for r in revs] == [2, 1]
    diff = alice.get(f"{url}/diff").json()
    assert diff["from_revision"] == 1 and diff["to_revision"] == 2
    assert "-hostname: a\n+hostname: b\n" in diff["diff"] and diff["diff"].startswith("--- r1\n+++ r2\n")
    r = alice.post(f"{url}/revisions/1/restore")
    assert r.status_code == 201 and r.json()["number"] == 3 and r.json()["restored_from"] == 1
    assert alice.get(url).json()["content"] == "#cloud-config\nhostname: a\n"
    assert alice.get(f"{url}/revisions/2").json()["content"] == "#cloud-config\nhostname: b\n"
    assert alice.get(f"{url}/revisions/9").status_code == 404


def test_the_effective_document_merges_levels_and_substitutes(alice, web_group, make_host):
    host = make_host(web_group)
    put(alice, "/api/v1/organization/cloud-config", "#cloud-config\nhostname: org\nssh_authorized_keys: [ORG]\n")
    put(alice, f"/api/v1/groups/{web_group.pk}/cloud-config", "#cloud-config\nssh_authorized_keys: [GRP]\n")
    put(alice, f"/api/v1/hosts/{host.pk}/cloud-config",
        "#cloud-config\nhostname: h1\nwrite_files:\n  - path: /etc/ip\n    content: $private_ipv4\n")
    HostCloudConfigState.objects.record_addresses(host.pk, {"private_ipv4": "10.1.2.3", "bogus": "x"})
    body = alice.get(f"/api/v1/hosts/{host.pk}/cloud-config/effective").json()
    assert "hostname: h1" in body["content"] and "- ORG\n- GRP" in body["content"]
    assert "content: 10.1.2.3" in body["content"]
    assert body["revision"] == Revision.objects.order_by("-pk").first().pk
    assert body["applied_revision"] is None and body["apply_state"] == "behind"


def test_the_policy_carries_the_revision_and_the_agent_fetches_its_document(alice, web_group, make_host):
    host = make_host(web_group)
    assert web_group.policy()["cloud_config_revision"] == 0
    put(alice, f"/api/v1/groups/{web_group.pk}/cloud-config", GOOD)
    policy = web_group.policy()
    assert policy["cloud_config_revision"] == Revision.objects.get().pk
    assert policy["cloud_config_url"].endswith("/api/v1/agents/cloud-config")
    from agent import protocol

    protocol.validate(policy, "server")
    from rest_framework.test import APIClient

    agent = APIClient()
    assert agent.post("/api/v1/agents/cloud-config", {}, format="json").status_code == 401
    agent.credentials(HTTP_AUTHORIZATION=f"Bearer {host.credential}")
    r = agent.post("/api/v1/agents/cloud-config", {"addresses": {"private_ipv4": "10.9.9.9"}}, format="json")
    assert r.status_code == 200 and r.json() == {"content": GOOD, "revision": policy["cloud_config_revision"]}
    assert HostCloudConfigState.objects.get(host=host).addresses == {"private_ipv4": "10.9.9.9"}
    # a host document moves the group's revision too
    put(alice, f"/api/v1/hosts/{host.pk}/cloud-config", "#cloud-config\nhostname: own\n")
    assert web_group.policy()["cloud_config_revision"] == Revision.objects.order_by("-pk").first().pk


def test_the_applied_report_is_stored_on_the_host(alice, web_group, make_host):
    host = make_host(web_group)
    put(alice, f"/api/v1/groups/{web_group.pk}/cloud-config", GOOD)
    rev = Revision.objects.get().pk
    Event.objects.record(host.organization_id, "agent_event", "applied", host=host,
                         data={"kind": "cloud_config_applied", "revision": rev, "errors": []})
    state = HostCloudConfigState.objects.get(host=host)
    assert state.applied_revision == rev and state.errors == []
    assert alice.get(f"/api/v1/hosts/{host.pk}/cloud-config/effective").json()["apply_state"] == "current"


def test_a_fetch_url_serves_the_document_to_hosts_without_the_agent(alice, bob, web_group, make_host, client):
    host = make_host(web_group)
    put(alice, f"/api/v1/groups/{web_group.pk}/cloud-config",
        "#cloud-config\ncoreos:\n  etcd2:\n    advertise-client-urls: http://$private_ipv4:2379\n")
    HostCloudConfigState.objects.record_addresses(host.pk, {"private_ipv4": "10.0.0.7"})
    assert bob.post(f"/api/v1/hosts/{host.pk}/cloud-config/url").status_code == 403
    url = alice.post(f"/api/v1/hosts/{host.pk}/cloud-config/url").json()["url"]
    path = url.split("://", 1)[1].split("/", 1)[1]
    r = client.get("/" + path)
    assert r.status_code == 200 and r["Content-Type"].startswith("text/plain")
    assert "http://10.0.0.7:2379" in r.content.decode()
    group_url = alice.post(f"/api/v1/groups/{web_group.pk}/cloud-config/url").json()["url"]
    r = client.get("/" + group_url.split("://", 1)[1].split("/", 1)[1])
    assert "$private_ipv4" in r.content.decode()
    assert client.get("/cloud-config/fwc_000000000000_nope").status_code == 404
    assert client.get("/" + path[:-2] + "xx").status_code == 404
