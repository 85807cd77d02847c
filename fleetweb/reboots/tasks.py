from celery import shared_task


@shared_task(soft_time_limit=60)
def sync_locks() -> int:
    """Read every group's semaphore: record new/gone holders, flag stuck ones (safe to run twice)."""
    from fleetweb.fleet.models import Group

    from . import etcd
    from .models import GroupLock

    if not etcd.configured():
        return 0
    stuck = 0
    for group in Group.objects.select_related("organization"):
        stuck += GroupLock(group).report_stuck()
    return stuck


@shared_task(soft_time_limit=60)
def reconcile_etcd_accounts() -> int:
    """Delete the etcd users of hosts that are gone (a deletion while etcd was down, a bulk delete)."""
    from . import etcd
    from .models import HostEtcdAccount

    if not etcd.auth_enabled():
        return 0
    return HostEtcdAccount.objects.remove_orphans()
