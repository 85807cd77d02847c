"""Filters over fleet querysets; the UI list views and the API viewsets share them."""
from __future__ import annotations

import django_filters
from django.db.models import Q

from agent.protocol import UPDATE_STATUSES

from .choices import EventKind
from .models import EnrollmentToken, Event, Host


class HostFilterSet(django_filters.FilterSet):
    group = django_filters.CharFilter(method="filter_group", label="Group id or slug")
    channel = django_filters.CharFilter(field_name="group__channel__name", label="Channel of the host's group")
    version = django_filters.CharFilter(field_name="version")
    status = django_filters.ChoiceFilter(field_name="update_status", choices=[(s, s) for s in UPDATE_STATUSES],
                                         label="Update status")
    online = django_filters.BooleanFilter(field_name="online")
    q = django_filters.CharFilter(method="filter_q", label="Hostname or machine id contains")

    class Meta:
        model = Host
        fields = ["group", "channel", "version", "status", "online", "q"]

    def filter_group(self, queryset, name, value):
        if value.isdigit():
            return queryset.filter(Q(group_id=int(value)) | Q(group__slug=value))
        return queryset.filter(group__slug=value)

    def filter_q(self, queryset, name, value):
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(Q(hostname__icontains=value) | Q(machine_id__icontains=value))


class EventFilterSet(django_filters.FilterSet):
    kind = django_filters.ChoiceFilter(choices=EventKind.choices)
    host = django_filters.UUIDFilter(field_name="host_id")
    group = django_filters.NumberFilter(field_name="group_id")

    class Meta:
        model = Event
        fields = ["kind", "host", "group"]


class EnrollmentTokenFilterSet(django_filters.FilterSet):
    group = django_filters.NumberFilter(field_name="group_id")

    class Meta:
        model = EnrollmentToken
        fields = ["group"]
