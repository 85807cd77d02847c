"""Isolation in etcd with auth enabled: each organization's user may read and write its own prefix
``fleet/<slug>/`` and nothing else; agents get their organization's credentials through `policy`."""
from __future__ import annotations

import pytest
from django.core.management import call_command

from agent.locksmith import LockError, Locksmith

pytestmark = pytest.mark.django_db

ROOT_PASSWORD = "root-password-for-tests"


@pytest.fixture
def auth_etcd(settings):
    """A throw-away etcd with auth enabled by `provision_etcd --enable-auth`."""
    from fleetweb.reboots import etcd
    from scripts.services import start_etcd

    with start_etcd() as server:
        settings.ETCD_ENDPOINTS = [server.url]
        settings.ETCD_USERNAME, settings.ETCD_PASSWORD = "root", ROOT_PASSWORD
        etcd.reset_client()
        yield server
        etcd.reset_client()


def _accounts(*orgs):
    from fleetweb.reboots.models import EtcdAccount

    return [EtcdAccount.objects.get(organization=o) for o in orgs]


def test_one_organization_cannot_read_or_change_anothers_semaphore(auth_etcd, acme, other_org, web_group,
                                                                    other_group):
    from fleetweb.reboots import etcd

    call_command("provision_etcd", "--enable-auth")
    mine, theirs = _accounts(acme, other_org)
    acme_client = etcd.client_for(mine.username, mine.password)
    other_client = etcd.client_for(theirs.username, theirs.password)
    try:
        # Their own: works.
        other_smith = Locksmith(other_client, group="web", prefix=etcd.org_prefix(other_org))
        assert other_smith.lock("other-host").holders == ["other-host"]
        own = Locksmith(acme_client, group="web", prefix=etcd.org_prefix(acme))
        assert own.lock("acme-host").holders == ["acme-host"]
        assert own.unlock("acme-host").holders == []

        # Another organization's: neither read nor write, whatever the API used.
        intruder = Locksmith(acme_client, group="web", prefix=etcd.org_prefix(other_org))
        for op in (intruder.get, lambda: intruder.unlock("other-host"), lambda: intruder.set_max(9),
                   lambda: intruder.lock("acme-host")):
            with pytest.raises(LockError):
                op()
        with pytest.raises(Exception, match="(?i)permission denied"):
            acme_client.get(intruder.key)
        with pytest.raises(Exception, match="(?i)permission denied"):
            acme_client.put(intruder.key, '{"semaphore": 99, "max": 99, "holders": []}')
        with pytest.raises(Exception, match="(?i)permission denied"):
            acme_client.delete(intruder.key)
        # Nor locksmith's un-prefixed keys, nor a prefix that merely starts like theirs.
        with pytest.raises(Exception, match="(?i)permission denied"):
            acme_client.get("coreos.com/updateengine/rebootlock/semaphore")
        with pytest.raises(Exception, match="(?i)permission denied"):
            acme_client.put(etcd.org_prefix(acme).rstrip("/") + "x/key", "v")

        # The other organization's semaphore is untouched.
        assert other_smith.get().holders == ["other-host"] and other_smith.get().max == 1
    finally:
        acme_client.close()
        other_client.close()


def test_without_credentials_nothing_is_readable(auth_etcd, acme, web_group):
    from agent.etcd import make_client
    from fleetweb.reboots import etcd

    call_command("provision_etcd", "--enable-auth")
    anonymous = make_client([auth_etcd.url], timeout=10)
    try:
        with pytest.raises(Exception, match="(?i)user name is empty|permission denied|token"):
            anonymous.get(etcd.org_prefix(acme) + "anything")
    finally:
        anonymous.close()


def test_the_role_covers_exactly_the_prefix(auth_etcd, acme):
    from fleetweb.reboots import etcd

    call_command("provision_etcd", "--enable-auth")
    [account] = _accounts(acme)
    perms = etcd.role_permissions(etcd.server_client(), account.role)
    prefix = etcd.org_prefix(acme).encode()
    assert perms == [(2, prefix, prefix[:-1] + b"0")]  # READWRITE on [fleet/<slug>/, fleet/<slug>0)


def test_provisioning_is_idempotent_and_the_password_is_encrypted(auth_etcd, acme):
    from fleetweb.reboots import etcd

    call_command("provision_etcd", "--enable-auth")
    call_command("provision_etcd", "--enable-auth")      # again: no error, same password works
    [account] = _accounts(acme)
    assert account.password not in account.password_encrypted
    client = etcd.client_for(account.username, account.password)
    try:
        client.put(etcd.org_prefix(acme) + "probe", "1")
    finally:
        client.close()


def test_a_hosts_policy_carries_its_own_credentials_and_provisions_lazily(auth_etcd, acme, web_group,
                                                                          make_host):
    from fleetweb.reboots import etcd
    from fleetweb.reboots.models import HostEtcdAccount

    etcd.enable_auth([auth_etcd.url], "root", ROOT_PASSWORD)   # auth on, nobody provisioned
    etcd.reset_client()
    one, two = make_host(web_group), make_host(web_group)
    frame = one.policy()
    account = HostEtcdAccount.objects.get(host=one)
    assert account.is_provisioned
    assert frame["etcd_prefix"] == f"fleet/{acme.slug}/"
    assert frame["etcd_username"] == account.username and frame["etcd_password"] == account.password
    assert frame["max_concurrent_reboots"] == web_group.max_concurrent_reboots
    assert frame["etcd_endpoints"] == [auth_etcd.url]
    theirs = two.policy()
    assert theirs["etcd_username"] != frame["etcd_username"] and theirs["etcd_password"] != frame["etcd_password"]
    # A frame broadcast to the whole group carries nobody's credentials.
    group_frame = web_group.policy()
    assert "etcd_username" not in group_frame and "etcd_password" not in group_frame
    # The credentials in the frame work for the host's own semaphore.
    client = etcd.client_for(frame["etcd_username"], frame["etcd_password"])
    try:
        assert Locksmith(client, group=frame["lock_group"], prefix=frame["etcd_prefix"]).lock("m").holders == ["m"]
    finally:
        client.close()


def test_the_server_reads_every_organizations_locks_with_its_root_credentials(auth_etcd, alice, acme, web_group):
    call_command("provision_etcd", "--enable-auth")
    r = alice.get(f"/api/v1/locks/{web_group.pk}/")
    assert r.status_code == 200 and r.json()["error"] is None and r.json()["max"] == 1
