from __future__ import annotations

from django.db.models import Count
from drf_spectacular.utils import extend_schema
from rest_framework import viewsets

from fleetweb.tenancy.api.base import OrganizationScoped

from ..models import Channel
from .serializers import ChannelSerializer


@extend_schema(tags=["channels"])
class ChannelViewSet(OrganizationScoped, viewsets.ReadOnlyModelViewSet):
    queryset = Channel.objects.annotate(groups_count=Count("groups")).order_by("position")
    serializer_class = ChannelSerializer
    lookup_field = "name"
