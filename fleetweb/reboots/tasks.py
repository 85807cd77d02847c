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
