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


@shared_task(soft_time_limit=300)
def sweep_payload_store(min_age_seconds: int = 3600) -> int:
    """Remove payload files no release refers to (content-addressed: an upload whose transaction
    rolled back after the file was moved in, e.g. a build whose publish was refused)."""
    import time
    from pathlib import Path

    from django.conf import settings

    from .models import Release

    store = Path(settings.FLEET_MEDIA_ROOT) / "releases"
    if not store.is_dir():
        return 0
    referenced = {str(Path(settings.FLEET_MEDIA_ROOT) / p) for p in Release.objects.values_list("payload", flat=True)}
    removed, cutoff = 0, time.time() - min_age_seconds
    for path in store.glob("*/*.usr"):
        if str(path) not in referenced and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
