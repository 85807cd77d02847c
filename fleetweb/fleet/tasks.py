from celery import shared_task


@shared_task(soft_time_limit=60)
def reap_offline_hosts() -> int:
    """Mark hosts offline that vanished without closing their socket (safe to run twice)."""
    from .models import Host

    return Host.objects.reap_offline()
