"""The discovery service against discovery.etcd.io and etcd's v2 store and discovery client (issue 11).

Every ``discovery-server`` case of ``fixtures/discovery/cases.json`` (facts carried over from
coreos/discovery.etcd.io and etcd-io/etcd release-3.5, see ``fixtures/discovery/PROVENANCE.md``)
is replayed against our view, request by request.  The differences we keep on purpose are listed in
``DELIBERATE`` with the reason, and each is asserted to still differ, so a stale entry fails.
The cases about etcd's client (the requests it sends with and without a trailing slash) are proven
by a real etcd in ``tests/e2e/test_discovery_cluster.py``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.test import Client

from fleetweb.cloudconfig.discovery_models import DiscoveryToken

pytestmark = pytest.mark.django_db

CASES = json.loads((Path(__file__).parent / "fixtures" / "discovery" / "cases.json").read_text())
SERVER_CASES = [c for c in CASES if c["role"] == "discovery-server" and "request" in c]
SIZE = 3

DELIBERATE = {
    "new-size-not-a-number": "our 400 says what is allowed (\"size must be an integer between 1 and "
                             "255\") instead of Go's strconv error text; the status is the same",
    "new-size-1000": "sizes stop at 255: an etcd cluster has a handful of voting members, and every "
                     "listing and woken watch reads all of a token's members (upstream takes any integer)",
    "new-size-zero-or-negative": "a cluster of 0 or fewer members cannot bootstrap: refused with 400 "
                                 "instead of a token no etcd can use",
    "non-hex-token": "a path that is not a token answers etcd's v2 JSON 404 (errorCode 100), which "
                     "etcd's client reads, instead of Go's plain-text \"404 page not found\"",
}


def fill(text: str, settings, token: str = "") -> str:
    return (text.replace("{base}", "/discovery").replace("{public}", re.escape(f"{settings.FLEET_PUBLIC_URL}/discovery"))
            .replace("{token}", token).replace("{size}", str(SIZE)))


def send(web: Client, request: dict, settings, token: str):
    method, path = request["method"], fill(request["path"], settings, token)
    body = request.get("body", "")
    content_type = (request.get("headers") or {}).get("Content-Type", "application/x-www-form-urlencoded")
    return getattr(web, method.lower())(path, body, content_type=content_type) if method in ("PUT", "POST") \
        else getattr(web, method.lower())(path)


def check(response, expect: dict, settings, token: str) -> list[str]:
    """What about RESPONSE differs from the facts in EXPECT (empty when it matches)."""
    wrong = []
    body = response.content.decode()
    data = None
    if response.get("Content-Type", "").startswith("application/json") and body:
        data = json.loads(body)

    def subset(want, got, where="") -> None:
        if isinstance(want, dict):
            if not isinstance(got, dict):
                wrong.append(f"{where or 'body'} is {got!r}, expected an object")
                return
            for k, v in want.items():
                if k not in got:
                    wrong.append(f"{where}.{k} missing")
                else:
                    subset(v, got[k], f"{where}.{k}")
        elif fill(str(want), settings, token) != str(got) if isinstance(want, str) else want != got:
            wrong.append(f"{where} is {got!r}, expected {want!r}")

    node = (data or {}).get("node") or {}
    for key, want in expect.items():
        if key == "status" and response.status_code != want:
            wrong.append(f"status {response.status_code}, expected {want}: {body[:200]}")
        elif key == "body" and body != want:
            wrong.append(f"body {body!r}, expected {want!r}")
        elif key == "body_regex" and not re.match(fill(want, settings), body):
            wrong.append(f"body {body!r} does not match {want}")
        elif key == "body_trailing_newline" and body.endswith("\n") != want:
            wrong.append(f"body {body!r}: trailing newline expected {want}")
        elif key == "content_type_prefix" and not response.get("Content-Type", "").startswith(want):
            wrong.append(f"Content-Type {response.get('Content-Type')!r}, expected {want}")
        elif key == "header_present":
            wrong += [f"header {h} missing" for h in want if not response.has_header(h)]
        elif key == "json_subset":
            subset(want, data)
        elif key == "node_key_endswith" and not str(node.get("key", "")).endswith(fill(want, settings, token)):
            wrong.append(f"node.key {node.get('key')!r}, expected to end with {want}")
        elif key == "node_nodes_len" and len(node.get("nodes", [])) != want:
            wrong.append(f"{len(node.get('nodes', []))} nodes, expected {want}")
        elif key == "nodes_key_absent" and want and "nodes" in node:
            wrong.append("an empty directory carries a nodes key (etcd v2 omits it)")
        elif key == "node_nodes_basenames_set" and sorted(n["key"].rsplit("/", 1)[1] for n in node.get("nodes", [])) \
                != sorted(want):
            wrong.append(f"nodes {[n['key'] for n in node.get('nodes', [])]}, expected {want}")
        elif key == "nodes_never_contain_basename":
            def names(n):
                for child in n.get("nodes", []):
                    yield child["key"].rsplit("/", 1)[1]
                    yield from names(child)
            if want in set(names(node)):
                wrong.append(f"the listing shows {want}")
        elif key == "node_createdIndex_equals_modifiedIndex" and node.get("createdIndex") != node.get("modifiedIndex"):
            wrong.append("createdIndex differs from modifiedIndex")
        elif key == "has_keys":
            wrong += [f"{k} missing" for k in want if k not in (data or {})]
    return wrong


def run(case: dict, settings) -> list[str]:
    settings.FLEET_DISCOVERY_ANONYMOUS = True
    web = Client()
    token = DiscoveryToken.objects.issue(SIZE).token
    for step in case.get("setup", []):
        if step == "register size members":
            for i in range(SIZE):
                assert send(web, {"method": "PUT", "path": f"{{base}}/{{token}}/{i + 1:x}?prevExist=false",
                                  "body": f"value=m{i}%3Dhttp%3A%2F%2Fh{i}%3A2380"}, settings, token).status_code == 201
        else:
            assert send(web, step, settings, token).status_code < 300, step
    response = send(web, case["request"], settings, token)
    wrong = check(response, {k: v for k, v in case["expect"].items() if k != "then"}, settings, token)
    then = case["expect"].get("then")
    if then and not wrong:
        created = response.content.decode().rsplit("/", 1)[1]
        wrong += check(send(web, then["request"], settings, created), then["expect"], settings, created)
    return wrong


@pytest.mark.parametrize("case", SERVER_CASES, ids=[c["id"] for c in SERVER_CASES])
def test_the_discovery_service_answers_as_upstream(case, settings):
    wrong = run(case, settings)
    if case["id"] in DELIBERATE:
        assert wrong, f"{case['id']} now matches upstream: drop it from DELIBERATE ({DELIBERATE[case['id']]})"
    else:
        assert wrong == [], f"{case['id']} ({', '.join(case['source'])}): {wrong}"


def test_every_deliberate_difference_names_a_case():
    assert set(DELIBERATE) <= {c["id"] for c in SERVER_CASES}
