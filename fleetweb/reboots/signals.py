"""How the reboots app hooks into the rest: the group's policy frame, and a change of a group's
max concurrent reboots (set-max on its semaphore, locksmith's semantics)."""
from __future__ import annotations

import logging

from django.db import transaction

from . import etcd

log = logging.getLogger(__name__)

SYNC_INTERVAL = 15.0
RECONCILE_INTERVAL = 300.0  # etcd users of deleted hosts (issue 9 §8)


def policy_fields(group) -> dict:
    """Fields every `policy` frame of the group carries: the organization's prefix and the lock
    size.  No credentials: each host gets its own in ``host_policy_fields``.

    ``etcd_ca`` is the PEM of ETCD_CA_FILE when etcd speaks TLS.  The server's own client
    certificate is never sent: etcd may map a certificate's CN to a user, so sharing it would
    share the server's identity; hosts authenticate with their organization's user/password.
    """
    fields = {"max_concurrent_reboots": group.max_concurrent_reboots}
    if not etcd.configured():
        return fields
    fields["etcd_prefix"] = etcd.org_prefix(group.organization)
    ca = etcd.ca_pem()
    if ca:
        fields["etcd_ca"] = ca
    return fields


def _host_accounts() -> bool:
    """Whether hosts get etcd users of their own: without etcd auth (no ETCD_USERNAME) etcd refuses
    any login, so no credentials are sent and none are reconciled."""
    from django.conf import settings

    return etcd.configured() and bool(settings.ETCD_USERNAME)


def host_policy_fields(host) -> dict:
    """The host's own etcd user (issue 9 §8), only in frames sent to that host, never to a group."""
    from .models import HostEtcdAccount

    if not _host_accounts():
        return {}
    return HostEtcdAccount.objects.for_policy(host).policy_fields()


def reported_host_fields(host_ids: list) -> dict:
    """The etcd credentials' revision each host's agent should report (its last rotation): a
    rotation whose push was lost is resent on the host's next heartbeat."""
    from .models import HostEtcdAccount

    if not _host_accounts():
        return {}
    return {host_id: {"etcd_credentials_revision": revision} for host_id, revision
            in HostEtcdAccount.objects.filter(host__pk__any=list(host_ids)).values_list("host_id", "revision")}


def remember_max(sender, instance, **kwargs):
    # Only when loaded: a deferred field (``.only(...)``) must not cost a query here.
    instance._reboots_max = instance.__dict__.get("max_concurrent_reboots")


def max_changed(sender, instance, created, **kwargs):
    old, new = getattr(instance, "_reboots_max", None), instance.__dict__.get("max_concurrent_reboots")
    instance._reboots_max = new
    if created or old is None or new is None or old == new or getattr(instance, "_reboots_syncing", False):
        return
    if not etcd.configured():
        return
    group_id = instance.pk

    def apply():
        from fleetweb.fleet.models import Group

        from .models import GroupLock

        group = Group.objects.select_related("organization").get(pk=group_id)
        try:
            GroupLock(group).set_max(group.max_concurrent_reboots, actor="group settings", from_group=True)
        except Exception as exc:  # etcd down: agents still get the new max; the admin can set-max later
            log.warning("set-max of group %s to %s failed: %s", group.slug, group.max_concurrent_reboots, exc)

    transaction.on_commit(apply)


def schedule_sync() -> None:
    """Beat runs ``sync_locks`` (holders' "since", stuck hosts, live notices)."""
    from fleetweb.celery import app

    schedule = dict(app.conf.beat_schedule or {})
    schedule.setdefault("sync-reboot-locks", {"task": "fleetweb.reboots.tasks.sync_locks",
                                              "schedule": SYNC_INTERVAL})
    schedule.setdefault("reconcile-etcd-accounts", {"task": "fleetweb.reboots.tasks.reconcile_etcd_accounts",
                                                    "schedule": RECONCILE_INTERVAL})
    app.conf.beat_schedule = schedule
