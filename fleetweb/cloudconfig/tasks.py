"""Periodic tasks of the cloudconfig app."""
from __future__ import annotations

from celery import shared_task

from .discovery_models import DiscoveryToken


@shared_task
def delete_expired_discovery_tokens() -> int:
    """Delete discovery tokens unused for FLEET_DISCOVERY_TOKEN_TTL (they already answer 404)."""
    deleted, _ = DiscoveryToken.objects.expired().delete()
    return deleted
