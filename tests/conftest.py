"""Shared fixtures: the personas of every data test (healthchecks' alice/bob/charlie).

- alice: admin of Acme; bob: viewer of Acme; charlie: admin of Other (the outsider).
Each persona has an API client authenticated with an API key of their organization and role.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from rest_framework.test import APIClient

# Processes the tests start (agents, uvicorn, Celery, imagebuilder) run this checkout's code: the
# virtualenv's editable install points at the checkout that created it, which in another git worktree
# is not the code under test (uvicorn and Celery find this one only through their working directory).
_ROOT = str(Path(__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join([_ROOT, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                     if p and p != _ROOT]])

# The personas' password: long enough for the password validators (tests log in with it).
PASSWORD = "persona-passphrase-7"


@pytest.fixture(autouse=True, scope="session")
def celery_eager():
    """In-process tests run Celery tasks inline; the end-to-end tests start a real worker."""
    from fleetweb.celery import app

    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield


@pytest.fixture(autouse=True)
def fresh_rate_limits():
    """Every test starts with no rate-limit counts (they live in Redis when REDIS_URL is set)."""
    from fleetweb.core import ratelimit

    ratelimit.reset()


@pytest.fixture(autouse=True)
def close_sync_thread_connections():
    """Async tests reach the database through asgiref's one shared sync thread and the lanes, whose connections
    persists (CONN_MAX_AGE); close it after each test, as a request would, so that the test database
    can be flushed and finally dropped (PostgreSQL refuses while a session is open)."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=30)
    # The web process's request lanes and watch lane keep theirs too (fleetweb/core/lanes.py).
    asgi = sys.modules.get("fleetweb.asgi")
    if asgi is not None:
        for executor in [*asgi.request_lanes.executors, asgi.watch_lane.executor]:
            executor.submit(connections.close_all).result(timeout=30)


@pytest.fixture
def acme(db):
    from fleetweb.tenancy.models import Organization

    return Organization.objects.create_with_defaults("Acme", "acme")


@pytest.fixture
def other_org(db):
    from fleetweb.tenancy.models import Organization

    return Organization.objects.create_with_defaults("Other", "other")


def _member(org, username, role):
    from django.contrib.auth.models import User

    from fleetweb.tenancy.models import ApiKey, Membership

    user = User.objects.create_user(username, password=PASSWORD)
    Membership.objects.create(organization=org, user=user, role=role)
    _, secret = ApiKey.objects.issue(org, f"{username}-key", role, created_by=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    client.user = user
    client.api_key = secret
    return client


@pytest.fixture
def alice(acme):
    return _member(acme, "alice", "admin")


@pytest.fixture
def operator(acme):
    return _member(acme, "olga", "operator")


@pytest.fixture
def bob(acme):
    return _member(acme, "bob", "viewer")


@pytest.fixture
def charlie(other_org):
    return _member(other_org, "charlie", "admin")


@pytest.fixture
def web_group(acme):
    from fleetweb.fleet.models import Group

    return Group.objects.create(organization=acme, name="web", slug="web",
                                channel=acme.channels.get(name="stable"))


@pytest.fixture
def other_group(other_org):
    from fleetweb.fleet.models import Group

    return Group.objects.create(organization=other_org, name="web", slug="web",
                                channel=other_org.channels.get(name="stable"))


def partitions(active="USR-A", version_a="100.0.0", version_b=None):
    return [
        {"label": "USR-A", "number": 3, "version": version_a, "priority": 1, "tries": 0,
         "successful": True, "active": active == "USR-A"},
        {"label": "USR-B", "number": 4, "version": version_b, "priority": 0, "tries": 0,
         "successful": False, "active": active == "USR-B"},
    ]


@pytest.fixture
def make_host(db):
    """Create a registered host in a group (through the real enrollment path)."""
    counter = {"n": 0}

    def make(group, hostname=None, **kw):
        from fleetweb.fleet.models import EnrollmentToken, Host

        counter["n"] += 1
        _, secret = EnrollmentToken.objects.issue(group)
        host, credential = Host.objects.register(
            secret, machine_id=kw.pop("machine_id", f"{counter['n']:032x}"),
            hostname=hostname or f"host-{counter['n']}", version=kw.pop("version", "100.0.0"),
            partitions=kw.pop("partitions", partitions()), **kw)
        host.credential = credential
        return host

    return make
