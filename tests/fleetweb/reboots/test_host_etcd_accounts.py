"""Least privilege in etcd (issue 9 §8), against a real etcd with auth enabled: each host has its own
etcd user that may change only its group's semaphore and read only the configuration keys meant
for it; deleting the host deletes the user."""
from __future__ import annotations

import pytest

from agent.locksmith import LockError, Locksmith, group_key
from fleetweb.fleet.choices import EventKind

from .test_isolation import ROOT_PASSWORD, auth_etcd  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db

DENIED = "(?i)permission denied"


@pytest.fixture
def auth_on(auth_etcd):  # noqa: F811
    from fleetweb.reboots import etcd

    etcd.enable_auth([auth_etcd.url], "root", ROOT_PASSWORD)
    etcd.reset_client()
    return auth_etcd


@pytest.fixture
def db_group(acme):
    from fleetweb.fleet.models import Group

    return Group.objects.create(organization=acme, name="db", slug="db", channel=acme.channels.get(name="stable"))


def _client(host):
    from fleetweb.reboots import etcd

    frame = host.policy()
    return etcd.client_for(frame["etcd_username"], frame["etcd_password"]), frame


def test_a_host_of_group_a_cannot_change_group_bs_semaphore_nor_the_orgs_config(auth_on, acme, web_group,
                                                                                 db_group, make_host):
    """Fails on main: every host got the organization's user, read-write on all of ``fleet/<org>/``."""
    from fleetweb.reboots import etcd

    prefix = etcd.org_prefix(acme)
    server = etcd.server_client()
    db_key = group_key("db", prefix)
    server.put(db_key, '{"semaphore": 1, "max": 1, "holders": []}')
    server.put(f"{prefix}config/motd", "hello")
    server.put(f"{prefix}config/groups/web/role", "web")
    server.put(f"{prefix}config/groups/db/role", "db")
    web_host = make_host(web_group)
    client, frame = _client(web_host)
    try:
        # Its own group's semaphore: lock and unlock work.
        own = Locksmith(client, group=frame["lock_group"], prefix=frame["etcd_prefix"])
        assert own.lock("web-1").holders == ["web-1"]
        assert own.unlock("web-1").holders == []
        # The configuration meant for it: readable, not writable.
        assert client.get(f"{prefix}config/motd")[0] == b"hello"
        assert client.get(f"{prefix}config/groups/web/role")[0] == b"web"
        for key in (f"{prefix}config/motd", f"{prefix}config/new", f"{prefix}config/groups/web/role"):
            with pytest.raises(Exception, match=DENIED):
                client.put(key, "evil")
        with pytest.raises(Exception, match=DENIED):
            client.delete(f"{prefix}config/motd")
        # Group B's semaphore and configuration: neither read nor write.
        intruder = Locksmith(client, group="db", prefix=prefix)
        for op in (intruder.get, lambda: intruder.lock("web-1"), lambda: intruder.set_max(9)):
            with pytest.raises(LockError):
                op()
        with pytest.raises(Exception, match=DENIED):
            client.put(db_key, '{"semaphore": 99, "max": 99, "holders": []}')
        with pytest.raises(Exception, match=DENIED):
            client.get(f"{prefix}config/groups/db/role")
        # Anything else of the organization.
        with pytest.raises(Exception, match=DENIED):
            client.put(f"{prefix}anything", "x")
    finally:
        client.close()
    # Nothing changed.
    assert server.get(db_key)[0] == b'{"semaphore": 1, "max": 1, "holders": []}'
    assert server.get(f"{prefix}config/motd")[0] == b"hello"


def test_a_deleted_hosts_etcd_password_stops_working(auth_on, acme, web_group, make_host):
    """Fails on main: the organization's password outlived any host it was given to."""
    from fleetweb.fleet.models import Event
    from fleetweb.reboots import etcd
    from fleetweb.reboots.models import HostEtcdAccount

    host = make_host(web_group)
    client, frame = _client(host)
    prefix = frame["etcd_prefix"]
    Locksmith(client, group="web", prefix=prefix).get()          # works while the host exists
    client.close()
    host.delete_with_event(actor="alice")
    assert not HostEtcdAccount.objects.filter(username=frame["etcd_username"]).exists()
    assert frame["etcd_username"] not in etcd.list_users(etcd.server_client())
    with pytest.raises(Exception, match="(?i)authentication failed|invalid|not found|permission denied"):
        stale = etcd.client_for(frame["etcd_username"], frame["etcd_password"])
        try:
            stale.get(group_key("web", prefix))
        finally:
            stale.close()
    assert Event.objects.filter(kind=EventKind.ETCD_ACCESS_REVOKED, actor="alice").exists()


def test_a_group_move_moves_the_hosts_permissions(auth_on, acme, web_group, db_group, make_host):
    from fleetweb.reboots import etcd

    host = make_host(web_group)
    host.policy()
    host.move_to(db_group, actor="alice")
    client, frame = _client(host)
    try:
        assert Locksmith(client, group="db", prefix=frame["etcd_prefix"]).lock("h").holders == ["h"]
        with pytest.raises(LockError):
            Locksmith(client, group="web", prefix=frame["etcd_prefix"]).lock("h")
    finally:
        client.close()
    perms = etcd.role_permissions(etcd.server_client(), f"fleet-{acme.slug}-host-{host.pk}")
    assert [key for kind, key, _ in perms if kind == 2] == [group_key("db", etcd.org_prefix(acme)).encode()]


def _works(username, password, key) -> bool:
    """Whether etcd lets these credentials read KEY: False only when it refuses them (a slow or
    unreachable etcd is an error, not a refusal)."""
    from fleetweb.reboots import etcd

    client = etcd.client_for(username, password)
    try:
        client.get(key)
        return True
    except Exception as exc:
        if "authentication failed" not in repr(exc) + repr(exc.__cause__ or exc.__context__):
            raise
        return False
    finally:
        client.close()


def test_rotation_invalidates_the_old_password_and_pushes_the_new_one(auth_on, alice, acme, web_group, make_host,
                                                                      monkeypatch, django_capture_on_commit_callbacks):
    from fleetweb.core import hub as hub_module
    from fleetweb.fleet.models import Event

    sent = []
    monkeypatch.setattr(hub_module, "publish", lambda channel, frame: sent.append((channel, frame)))
    host = make_host(web_group)
    old = host.policy()
    key = group_key("web", old["etcd_prefix"])
    assert _works(old["etcd_username"], old["etcd_password"], key)
    with django_capture_on_commit_callbacks(execute=True):
        r = alice.post(f"/api/v1/hosts/{host.pk}/rotate-etcd-credentials")
    assert r.status_code == 200, r.content
    assert r.json() == {"rotated": 1}
    [(channel, frame)] = [(c, f) for c, f in sent if c == f"host:{host.pk}"]
    assert frame["etcd_username"] == old["etcd_username"] and frame["etcd_password"] != old["etcd_password"]
    assert not _works(old["etcd_username"], old["etcd_password"], key)
    assert _works(frame["etcd_username"], frame["etcd_password"], key)
    assert Event.objects.filter(kind=EventKind.ETCD_ROTATED, actor__contains="alice").count() == 1


def test_group_rotation_gives_every_host_a_new_password(auth_on, alice, web_group, make_host):
    hosts = [make_host(web_group), make_host(web_group)]
    before = [h.policy()["etcd_password"] for h in hosts]
    r = alice.post(f"/api/v1/groups/{web_group.pk}/rotate-etcd-credentials")
    assert r.status_code == 200 and r.json() == {"rotated": 2}
    assert all(h.policy()["etcd_password"] != b for h, b in zip(hosts, before, strict=True))


def test_only_an_admin_may_rotate(auth_on, operator, web_group, make_host):
    from fleetweb.reboots.models import HostEtcdAccount

    host = make_host(web_group)
    password = host.policy()["etcd_password"]
    assert operator.post(f"/api/v1/hosts/{host.pk}/rotate-etcd-credentials").status_code == 403
    assert operator.post(f"/api/v1/groups/{web_group.pk}/rotate-etcd-credentials").status_code == 403
    assert HostEtcdAccount.objects.get(host=host).password == password


def test_rotation_without_etcd_auth_is_a_clear_conflict(alice, web_group, make_host, settings):
    from fleetweb.fleet.models import Event

    settings.ETCD_USERNAME = ""
    host = make_host(web_group)
    for url in (f"/api/v1/hosts/{host.pk}/rotate-etcd-credentials",
                f"/api/v1/groups/{web_group.pk}/rotate-etcd-credentials"):
        r = alice.post(url)
        assert r.status_code == 409, r.content
        assert r.json()["code"] == "etcd_auth_disabled"
    assert not Event.objects.filter(kind=EventKind.ETCD_ROTATED).exists()


def test_reconcile_removes_the_users_of_hosts_deleted_behind_its_back(auth_on, web_group, make_host):
    from fleetweb.reboots import etcd
    from fleetweb.reboots.tasks import reconcile_etcd_accounts

    host = make_host(web_group)
    name = host.policy()["etcd_username"]
    host.delete()                                   # not through delete_with_event: the user stays
    assert name in etcd.list_users(etcd.server_client())
    assert reconcile_etcd_accounts() == 1
    assert name not in etcd.list_users(etcd.server_client())


def test_healthz_and_the_dashboard_say_when_tenants_are_not_isolated(client, alice, settings, auth_on):
    from django.test import Client

    from fleetweb.reboots import etcd

    dashboard = Client()
    dashboard.force_login(alice.user)

    r = client.get("/healthz")
    assert r.json()["etcd_isolation"] is True and "etcd_isolation_message" not in r.json()
    assert b"data-etcd-isolation" not in dashboard.get("/", follow=True).content
    settings.ETCD_USERNAME = ""
    r = client.get("/healthz")
    assert r.json()["etcd_isolation"] is False
    assert r.json()["etcd_isolation_message"] == etcd.ISOLATION_OFF_MESSAGE
    page = dashboard.get("/", follow=True)
    assert b'data-etcd-isolation="off"' in page.content and b"not isolated in etcd" in page.content


def test_the_agents_etcd_settings_from_its_own_policy_take_the_lock(auth_on, web_group, make_host, tmp_path):
    """What `agent run` does with a policy frame (etcd.json), then the etcd-lock strategy's lock."""
    from agent.config import load_etcd_settings, store_etcd_policy

    host = make_host(web_group)
    store_etcd_policy(tmp_path, host.policy())
    conf = load_etcd_settings(tmp_path)
    client = conf.client(timeout=10.0)
    try:
        smith = Locksmith(client, group=conf.group, prefix=conf.prefix)
        assert smith.lock(host.machine_id).holders == [host.machine_id]
        assert smith.unlock(host.machine_id).holders == []
    finally:
        client.close()


def test_revoking_a_hosts_credential_revokes_its_etcd_password(auth_on, web_group, make_host):
    host = make_host(web_group)
    old = host.policy()
    key = group_key("web", old["etcd_prefix"])
    host.revoke_credentials(actor="alice")
    assert not _works(old["etcd_username"], old["etcd_password"], key)
    new = host.policy()                              # re-enrolled later: a fresh password
    assert new["etcd_password"] != old["etcd_password"] and _works(new["etcd_username"], new["etcd_password"], key)
