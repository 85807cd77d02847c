"""Filters over builds; the dashboard list and the API viewset share them."""
from __future__ import annotations

import django_filters

from fleetweb.updates.choices import ChannelName

from .choices import BuildStatus
from .models import ImageBuild


class ImageBuildFilterSet(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=BuildStatus.choices)
    channel = django_filters.ChoiceFilter(choices=ChannelName.choices)

    class Meta:
        model = ImageBuild
        fields = ["status", "channel"]
