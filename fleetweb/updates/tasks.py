"""Rollout waves.  Tasks take ids, re-fetch, and are safe to run twice or concurrently."""
from celery import shared_task

from .choices import RolloutStatus


@shared_task(soft_time_limit=60, acks_late=True)
def advance_rollout(rollout_id: int) -> int:
    from .models import Rollout

    rollout = Rollout.objects.filter(pk=rollout_id, status=RolloutStatus.RUNNING).first()
    if rollout is None:
        return 0
    return len(rollout.advance())


@shared_task(soft_time_limit=120)
def advance_rollouts() -> int:
    """Beat: time out stuck hosts and grant the next waves of every running rollout."""
    from .models import Rollout

    granted = 0
    for pk in Rollout.objects.filter(status=RolloutStatus.RUNNING).values_list("pk", flat=True):
        granted += advance_rollout(pk)
    return granted
