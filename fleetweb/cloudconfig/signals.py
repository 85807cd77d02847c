"""How cloudconfig plugs into the fleet domain without editing it.

- ``policy_fields``: the registry contributor (fleetweb/fleet/policy.py) that adds
  ``cloud_config_revision`` and ``cloud_config_url`` to every group's ``policy`` frame.  The frame
  goes to every agent of the group, and host documents differ, so the frame carries the URL where
  an agent fetches its own effective document (authenticated by its credential), not the content.
- ``on_event``: the agent's ``cloud_config_applied`` event (stored by the agent consumer like any
  agent event) updates the host's HostCloudConfigState.
"""
from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_save
from django.urls import reverse

APPLIED_EVENT = "cloud_config_applied"


def policy_fields(group) -> dict:
    from .models import CloudConfig

    return {"cloud_config_revision": CloudConfig.objects.group_revision(group),
            "cloud_config_url": settings.FLEET_PUBLIC_URL + reverse("api:agent-cloud-config")}


def reported_fields(group) -> dict:
    """What an agent reports back of this domain's policy fields (the revision it last synced):
    reconciliation resends the policy when a cloud-config change's push was lost."""
    from .models import CloudConfig

    return {"cloud_config_revision": CloudConfig.objects.group_revision(group)}


def on_event(sender, instance, created, **kwargs) -> None:
    if not created or not instance.host_id or (instance.data or {}).get("kind") != APPLIED_EVENT:
        return
    from fleetweb.core import live

    from .models import HostCloudConfigState

    data = instance.data
    if HostCloudConfigState.objects.record_applied(instance.host_id, data.get("revision"), data.get("errors")):
        org, host = instance.organization_id, str(instance.host_id)
        transaction.on_commit(lambda: live.to_ui(org, {"kind": "host", "host": host}))


def connect() -> None:
    from fleetweb.fleet.models import Event

    post_save.connect(on_event, sender=Event, dispatch_uid="cloudconfig-applied")
