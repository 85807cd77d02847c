"""Hosts read the cluster configuration through etcd itself with their organization's credentials
(the per-organization user and role the reboots app provisions on ``fleet/<slug>/``), and cannot
read another organization's."""
from __future__ import annotations

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db

ROOT_PASSWORD = "root-password-for-cluster-config-tests"


@pytest.fixture
def auth_etcd(settings):
    from fleetweb.reboots import etcd
    from scripts.services import start_etcd

    with start_etcd() as server:
        settings.ETCD_ENDPOINTS = [server.url]
        settings.ETCD_USERNAME, settings.ETCD_PASSWORD = "root", ROOT_PASSWORD
        etcd.reset_client()
        yield server
        etcd.reset_client()


def test_a_host_reads_its_organizations_config_keys_and_not_anothers(auth_etcd, alice, charlie, acme, other_org,
                                                                     web_group):
    from fleetweb.reboots import etcd
    from fleetweb.reboots.models import EtcdAccount

    call_command("provision_etcd", "--enable-auth")
    assert alice.put("/api/v1/cluster-config/key", {"key": "app/db.json", "value": '{"host": "db1"}', "json": True},
                     format="json").status_code == 200
    r = alice.put(f"/api/v1/cluster-config/key?scope=group&group={web_group.pk}", {"key": "port", "value": "8080"},
                  format="json")
    assert r.status_code == 200
    assert charlie.put("/api/v1/cluster-config/key", {"key": "secret", "value": "s"}, format="json").status_code == 200

    mine = EtcdAccount.objects.get(organization=acme)
    host = etcd.client_for(mine.username, mine.password)
    try:
        assert host.get("fleet/acme/config/app/db.json")[0] == b'{"host": "db1"}'
        assert host.get("fleet/acme/config/groups/web/port")[0] == b"8080"
        with pytest.raises(Exception, match="(?i)permission denied"):
            host.get("fleet/other/config/secret")
    finally:
        host.close()
