"""Filters over update querysets; the UI list views and the API viewsets share them."""
from __future__ import annotations

import django_filters
from django.db.models import Q

from .choices import ChannelName, HostUpdateState, RolloutStatus
from .models import Release, Rollout, RolloutHost


class ReleaseFilterSet(django_filters.FilterSet):
    version = django_filters.CharFilter(field_name="version")
    channel = django_filters.ChoiceFilter(field_name="channel_history__channel__name", choices=ChannelName.choices,
                                          distinct=True, label="Releases the channel carried (now or before)")

    class Meta:
        model = Release
        fields = ["version", "channel"]


class RolloutFilterSet(django_filters.FilterSet):
    group = django_filters.CharFilter(method="filter_group", label="Group id or slug")
    status = django_filters.ChoiceFilter(choices=RolloutStatus.choices)
    release = django_filters.CharFilter(method="filter_release", label="Release id or version")
    channel = django_filters.ChoiceFilter(field_name="channel__name", choices=ChannelName.choices)

    class Meta:
        model = Rollout
        fields = ["group", "status", "release", "channel"]

    def filter_group(self, queryset, name, value):
        if value.isdigit():
            return queryset.filter(Q(group_id=int(value)) | Q(group__slug=value))
        return queryset.filter(group__slug=value)

    def filter_release(self, queryset, name, value):
        if value.isdigit():  # a version always has a dot
            return queryset.filter(release_id=int(value))
        return queryset.filter(release__version=value)


class RolloutHostFilterSet(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=HostUpdateState.choices)

    class Meta:
        model = RolloutHost
        fields = ["state"]
