"""Reboots tests run against a real etcd (scripts/services.py).  Organizations get unique slugs so
their prefixes ``fleet/<slug>/`` never meet another test's keys in a shared etcd."""
from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def acme(db):
    from fleetweb.tenancy.models import Organization

    return Organization.objects.create_with_defaults("Acme", f"acme-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def other_org(db):
    from fleetweb.tenancy.models import Organization

    return Organization.objects.create_with_defaults("Other", f"other-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def etcd_endpoints(settings):
    from fleetweb.reboots import etcd
    from scripts.services import test_etcd_endpoints

    endpoints = test_etcd_endpoints()
    settings.ETCD_ENDPOINTS = endpoints
    settings.ETCD_USERNAME = settings.ETCD_PASSWORD = None
    yield endpoints
    etcd.reset_client()


@pytest.fixture
def no_etcd(settings):
    from fleetweb.reboots import etcd

    settings.ETCD_ENDPOINTS = []
    yield
    etcd.reset_client()


def semaphore(org, group: str):
    """The raw locksmith JSON of ORG's GROUP, read with the server's client."""
    import json

    from agent.locksmith import group_key
    from fleetweb.reboots import etcd

    value, _ = etcd.server_client().get(group_key(group, etcd.org_prefix(org)))
    return json.loads(value) if value is not None else None


def smith(org, group: str, default_max: int = 1):
    from fleetweb.reboots.models import GroupLock

    return GroupLock.locksmith_for(org, group, default_max)
