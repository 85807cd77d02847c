from __future__ import annotations

from django.db.models import Count, Prefetch
from drf_spectacular.utils import extend_schema
from rest_framework import viewsets

from fleetweb.tenancy.api.base import OrganizationScoped

from ..models import Channel, ChannelRelease
from .serializers import ChannelSerializer

HISTORY_LENGTH = 20


@extend_schema(tags=["channels"])
class ChannelViewSet(OrganizationScoped, viewsets.ReadOnlyModelViewSet):
    queryset = (Channel.objects.select_related("current_release")
                .annotate(groups_count=Count("groups"))
                .prefetch_related(Prefetch(
                    "history", to_attr="recent_history",
                    queryset=ChannelRelease.objects.select_related("release", "previous")
                    .order_by("-created", "-id")[:HISTORY_LENGTH]))
                .order_by("position"))
    serializer_class = ChannelSerializer
    lookup_field = "name"
