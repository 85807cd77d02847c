"""Schema fuzzing of the REST API (issue 10 item 6): schemathesis generates requests for every
operation of our own OpenAPI document (``/api/schema/``, drf-spectacular) and each one is sent four
times to a real uvicorn serving ``fleetweb.asgi:application`` on the test database:

- with no key, as the viewer (viewer key of Acme), the outsider (admin key of Zeta, another
  organization) and the owner (admin key of Acme), in that order (the owner's writes come last);
- path, query and body ids are mostly real ids of both organizations' rows, so GET/PATCH/DELETE
  reach real rows, the other organization's ones included.

Every answer holds the schema (status code, content type, headers, body) and none is a server
error.  Tenancy: no 2xx carries another organization's data (a unique marker in the names and
contents of its rows, its hosts' ids and machine ids); another organization's id in the path answers
as an unknown id would (404, or 400 for a body refused before the lookup); no key gets no 2xx on a
secured operation and the viewer no 2xx on a write.

Deterministic (a fixed seed per operation, no example database, no shrinking) and bounded:
MAX_EXAMPLES cases per operation (FLEET_FUZZ_EXAMPLES).  Only valid keys or no key are sent (the
fuzzer does not make up Authorization headers), so the invalid-key throttle
(``fleetweb.tenancy.throttle``) never counts anything and the server has a Redis prefix of its own:
a 429 is a failure here, not a flake.
"""
from __future__ import annotations

import io
import os
import subprocess
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import hypothesis
import pytest
import redis
import requests
import schemathesis
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import override_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fleetweb.builds.models import ImageBuild
from fleetweb.cloudconfig import etcd as etcd_layer
from fleetweb.cloudconfig.models import CloudConfig, FetchUrl
from fleetweb.fleet.models import EnrollmentToken, Event, Group, Host
from fleetweb.reboots.models import FleetLockSecret
from fleetweb.tenancy.models import ApiKey, Membership, Organization
from fleetweb.updates.models import OmahaUrl, Release
from scripts.services import test_etcd_endpoints
from tests.conftest import partitions
from tests.e2e.conftest import BIN, REDIS_URL, ROOT, database_url, free_port, stop_process, wait_for

MAX_EXAMPLES = int(os.environ.get("FLEET_FUZZ_EXAMPLES", "4"))
SEED = 20261006
# The organizations (slug and marker, name): the marker is unique enough to be searched for in answers.
TENANTS = [("acmemark", "Acme"), ("zetamark", "Zeta")]
HOSTS, DOOMED = 3, 3  # per organization; only DELETE /hosts/{id}/ gets the doomed ones

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# Writes a viewer may make: validating a document stores nothing (fleetweb.cloudconfig.api.views).
VIEWER_WRITES = {("POST", "/api/v1/cloud-config/validate")}

# The test database is set up for this module; its rows are committed (the server is another process)
# and flushed afterwards by the ``world`` fixture.
pytestmark = pytest.mark.django_db


@dataclass
class Tenant:
    """One organization's seeded rows: ``marker`` is in every name and content it owns."""

    marker: str
    ids: dict[str, list] = field(default_factory=dict)
    identifiers: list[str] = field(default_factory=list)  # host ids, machine ids

    def traces(self) -> list[bytes]:
        return [s.lower().encode() for s in [self.marker, *self.identifiers]]


@dataclass
class Identity:
    name: str
    key: str | None
    tenant: Tenant | None  # whose data it may see (None: nobody's)
    role: str | None


@dataclass
class World:
    url: str
    log: Path
    tenants: list[Tenant]
    identities: list[Identity]

    def ids(self, kind: str) -> list:
        return [i for t in self.tenants for i in t.ids.get(kind, [])]


def _seed_tenant(marker: str, org_name: str) -> tuple[Tenant, dict[str, str]]:
    """Rows of every kind the API serves, through the models' own paths; returns the tenant and
    its API keys by role."""
    org = Organization.objects.create_with_defaults(f"{marker} {org_name}", marker)
    tenant = Tenant(marker=marker)
    keys = {}
    for role in ("admin", "viewer"):
        user = User.objects.create_user(f"{marker}-{role}")  # no password: the API key is the login
        Membership.objects.create(organization=org, user=user, role=role)
        keys[role] = ApiKey.objects.issue(org, f"{marker}-{role}-key", role, created_by=user)[1]
    groups = [Group.objects.create(organization=org, name=f"{marker}-{name}", slug=f"{marker}-{name}",
                                   channel=org.channels.get(name=channel))
              for name, channel in (("web", "stable"), ("canary", "alpha"))]
    hosts = []
    for i in range(HOSTS + DOOMED):
        group = groups[i % 2]
        token, secret = EnrollmentToken.objects.issue(group, name=f"{marker}-token-{i}", max_uses=5)
        machine_id = uuid.uuid5(uuid.NAMESPACE_DNS, f"{marker}-{i}").hex
        host, _ = Host.objects.register(secret, machine_id=machine_id, hostname=f"{marker}-host-{i}",
                                        version="100.0.0", partitions=partitions())
        hosts.append(host)
        tenant.identifiers += [str(host.pk), machine_id]
    hosts, doomed = hosts[:HOSTS], hosts[HOSTS:]
    releases = [Release.objects.create_from_upload(org, version, io.BytesIO(f"{marker} usr {version}".encode() * 64),
                                                   notes=f"{marker} notes {version}", actor=f"{marker}-admin")
                for version in ("101.0.0", "102.0.0")]
    for release in releases:
        org.channels.get(name="alpha").publish(release, actor=f"{marker}-admin")
    org.channels.get(name="stable").publish(releases[0], actor=f"{marker}-admin")
    build = ImageBuild.objects.create(organization=org, version="103.0.0", channel="alpha", platforms=["pxe"],
                                      status="failed", log=f"{marker} build log\n", last_error=f"{marker} error",
                                      created_by=f"{marker}-admin")
    documents = [CloudConfig.objects.for_organization(org), CloudConfig.objects.for_group(groups[0]),
                 CloudConfig.objects.for_host(hosts[0])]
    for doc in documents:
        for n in (1, 2):
            doc.save_content(f"#cloud-config\nhostname: {marker}-doc-{n}\n", author=None)
    for target in (org, groups[0], hosts[0]):
        FetchUrl.objects.rotate(target)
    OmahaUrl.objects.rotate(groups[0], actor=f"{marker}-admin")
    FleetLockSecret.objects.rotate(org, actor=f"{marker}-admin")
    Event.objects.record(org.pk, "agent_event", f"{marker} event", host=hosts[0], group=groups[0])
    tenant.ids = {
        "groups": [g.pk for g in groups],
        "hosts": [str(h.pk) for h in hosts],
        "doomed_hosts": [str(h.pk) for h in doomed],
        "tokens": list(EnrollmentToken.objects.filter(organization=org).values_list("pk", flat=True)),
        "events": list(Event.objects.filter(organization=org).values_list("pk", flat=True)[:6]),
        "releases": [r.pk for r in releases],
        "rollouts": list(org.rollouts.values_list("pk", flat=True)),
        "builds": [build.pk],
        "machine_ids": [h.machine_id for h in hosts + doomed],
        "keys": ["region", "nested/port"],
    }
    return tenant, keys


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, tmp_path_factory):
    """Both organizations' rows, committed (the server is another process), and the server."""
    tmp = tmp_path_factory.mktemp("fuzz")
    etcd_endpoints, slugs = test_etcd_endpoints(), [marker for marker, _ in TENANTS]
    _forget_etcd_keys(etcd_endpoints, slugs)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    redis_url = os.environ.get("FLEET_TEST_REDIS_URL") or REDIS_URL
    env = {**os.environ, "DATABASE_URL": database_url(), "REDIS_URL": redis_url,
           "FLEET_REDIS_PREFIX": f"fleet-fuzz-{uuid.uuid4().hex[:8]}", "FLEET_PUBLIC_URL": url,
           "ETCD_ENDPOINTS": ",".join(etcd_endpoints), "DJANGO_SETTINGS_MODULE": "fleetweb.settings",
           "FLEET_MEDIA_ROOT": str(tmp / "media"), "PYTHONUNBUFFERED": "1",
           "CELERY_TASK_DEFAULT_QUEUE": f"fleet-fuzz-{uuid.uuid4().hex[:8]}"}
    log = tmp / "server.log"
    with open(log, "ab") as out:  # the server starts while the rows are made
        server = subprocess.Popen(
            [BIN / "uvicorn", "fleetweb.asgi:application", "--host", "127.0.0.1", "--port", str(port),
             "--no-access-log"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with django_db_blocker.unblock():
            (acme, acme_keys), (zeta, zeta_keys) = [_seed_tenant(marker, name) for marker, name in TENANTS]
        wait_for(lambda: server.poll() is None and requests.get(f"{url}/healthz", timeout=1).status_code == 200,
                 timeout=60, what=f"the ASGI server on {url} (log: {log})")
        for tenant, keys in ((acme, acme_keys), (zeta, zeta_keys)):
            for key in tenant.ids["keys"]:
                r = requests.put(f"{url}/api/v1/cluster-config/key", json={"key": key, "value": f"{tenant.marker}-v"},
                                 headers={"Authorization": f"Bearer {keys['admin']}"}, timeout=30)
                assert r.status_code == 200, r.text
        yield World(url=url, log=log, tenants=[acme, zeta], identities=[
            Identity("anonymous", None, None, None),
            Identity("viewer", acme_keys["viewer"], acme, "viewer"),
            Identity("outsider", zeta_keys["admin"], zeta, "admin"),
            Identity("owner", acme_keys["admin"], acme, "admin"),
        ])
    finally:
        stop_process(server)
        with django_db_blocker.unblock():
            call_command("flush", interactive=False, verbosity=0)
        _forget_queue(redis_url, env["CELERY_TASK_DEFAULT_QUEUE"])
        _forget_etcd_keys(etcd_endpoints, slugs)


def _forget_queue(redis_url: str, queue: str) -> None:
    """The tasks the server queued (no worker runs in this module)."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(queue)
    finally:
        client.close()


def _forget_etcd_keys(endpoints: list[str], slugs: list[str]) -> None:
    with override_settings(ETCD_ENDPOINTS=endpoints):
        etcd_layer.reset_client()
        client = etcd_layer.make_client()
        try:
            for slug in slugs:
                client.call("delete_prefix", f"fleet/{slug}/")
        finally:
            client.close()
            etcd_layer.reset_client()


# ---------------------------------------------------------------------------------------------
# Real ids in place of generated ones
# ---------------------------------------------------------------------------------------------

PATH_KINDS = {"groups": "groups", "hosts": "hosts", "tokens": "tokens", "events": "events", "releases": "releases",
              "rollouts": "rollouts", "builds": "builds", "locks": "groups"}
QUERY_KINDS = {"group": "groups", "host": "hosts", "release": "releases", "key": "keys", "q": "machine_ids"}
BODY_KINDS = {"group": "groups", "release": "releases", "holder": "machine_ids"}


def path_kind(operation) -> str | None:
    """What the ``{id}`` (``{group_id}``) of the operation's path names."""
    kind = PATH_KINDS.get(operation.path.removeprefix("/api/v1/").split("/", 1)[0])
    if operation.method.upper() == "DELETE" and kind == "hosts":
        return "doomed_hosts"  # the others stay for the operations after this one
    return kind


def _real_or_generated(generated, real: list) -> st.SearchStrategy:
    """Mostly a real id (of either organization), sometimes what the fuzzer made."""
    return st.sampled_from([*real, generated]) if real else st.just(generated)


def install_hooks(schema, world: World) -> None:
    @schema.hook
    def flatmap_path_parameters(context, path_parameters):
        if not isinstance(path_parameters, dict):
            return st.just(path_parameters)
        kind = path_kind(context.operation)
        real = {"id": world.ids(kind) if kind else [], "group_id": world.ids("groups"), "number": [1, 2, 3],
                "name": ["alpha", "beta", "stable"]}
        return st.fixed_dictionaries({name: _real_or_generated(value, real.get(name, []))
                                      for name, value in path_parameters.items()})

    @schema.hook
    def flatmap_query(context, query):
        if not isinstance(query, dict):
            return st.just(query)
        return st.fixed_dictionaries({name: _real_or_generated(value, world.ids(QUERY_KINDS[name]))
                                      if name in QUERY_KINDS else st.just(value) for name, value in query.items()})

    @schema.hook
    def flatmap_body(context, body):
        if not isinstance(body, dict):
            return st.just(body)
        return st.fixed_dictionaries({name: _real_or_generated(value, world.ids(BODY_KINDS[name]))
                                      if name in BODY_KINDS else st.just(value) for name, value in body.items()})


@pytest.fixture(scope="module")
def api_schema(world):
    """The schema the server serves, fuzzed with both organizations' ids."""
    schema = schemathesis.openapi.from_url(f"{world.url}/api/schema/?format=json")
    schema.config.update(base_url=world.url, request_timeout=60)
    schema.config.generation.update(with_security_parameters=False)  # the identities bring the keys
    install_hooks(schema, world)
    return schema


def _is_secured(operation) -> bool:
    return any("apiKey" in requirement for requirement in operation.definition.raw.get("security", []))


def foreign_id(case, identity: Identity, world: World) -> bool:
    """The path names a row of another organization than the identity's."""
    kind, params = path_kind(case.operation), case.path_parameters or {}
    value = params.get("id", params.get("group_id"))
    return identity.tenant is not None and kind is not None and any(
        value in tenant.ids.get(kind, []) for tenant in world.tenants if tenant is not identity.tenant)


def check_answers(case, world: World, session: requests.Session) -> None:
    """Send CASE as every identity (the owner last: it may delete what it reaches)."""
    method, path = case.method.upper(), case.operation.path
    for identity in world.identities:
        headers = {"Authorization": f"Bearer {identity.key}"} if identity.key else {}
        response = case.call(session=session, headers=headers)
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
            assert response.status_code != 429, "throttled"
            if foreign_id(case, identity, world):
                # As for an id that does not exist: 404, or 400 for a body refused before the lookup
                # (and 403 for a role refused before it).
                allowed = {400, 404} | ({403} if identity.role == "viewer" else set())
                assert response.status_code in allowed, "another organization's row answered"
            if not 200 <= response.status_code < 300:
                continue
            assert identity.key or not _is_secured(case.operation), "a 2xx without a key"
            assert identity.role != "viewer" or method in SAFE_METHODS or (method, path) in VIEWER_WRITES, \
                "the viewer wrote"
            body = response.content.lower()
            for tenant in world.tenants:
                if tenant is not identity.tenant:
                    leaked = [t.decode() for t in tenant.traces() if t in body]
                    assert not leaked, f"{tenant.marker}'s data in the answer: {leaked}"
        except BaseException as exc:
            exc.add_note(f"as {identity.name}: {method} {response.request.url} -> {response.status_code} "
                         f"{response.text[:500]}")
            raise


def fuzz(operation, world: World, session: requests.Session) -> None:
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @hypothesis.seed(SEED ^ zlib.crc32(operation.label.encode()))  # deterministic, yet not the same draws everywhere
    @hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                         phases=[hypothesis.Phase.generate], suppress_health_check=list(hypothesis.HealthCheck),
                         report_multiple_bugs=False, verbosity=hypothesis.Verbosity.quiet)
    @hypothesis.given(case=cases)
    def run(case):
        check_answers(case, world, session)

    run()


def test_every_answer_holds_the_schema_and_the_tenancy(api_schema, world):
    failures = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 80, [op.label for op in operations]
    with requests.Session() as session:
        for operation in operations:
            try:
                fuzz(operation, world, session)
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label}: {type(exc).__name__}: {exc}\n  " +
                                "\n  ".join(getattr(exc, "__notes__", [])))
    assert not failures, (f"{len(failures)} of {len(operations)} operations failed (server log: {world.log}):\n\n"
                          + "\n\n".join(failures))
