from __future__ import annotations

from rest_framework import serializers

from ..models import Channel, ChannelRelease, Release


class ReleaseBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Release
        fields = ["id", "version", "size", "sha256", "created"]
        read_only_fields = fields


class ChannelReleaseSerializer(serializers.ModelSerializer):
    release = ReleaseBriefSerializer(read_only=True)
    previous = serializers.CharField(source="previous.version", read_only=True, allow_null=True, default=None,
                                     help_text="Version the channel carried before")

    class Meta:
        model = ChannelRelease
        fields = ["release", "previous", "action", "override", "actor", "created"]
        read_only_fields = fields


class ChannelSerializer(serializers.ModelSerializer):
    name = serializers.CharField(read_only=True, help_text="alpha, beta or stable")
    groups_count = serializers.IntegerField(read_only=True)
    current_release = ReleaseBriefSerializer(read_only=True, allow_null=True)
    history = ChannelReleaseSerializer(source="recent_history", many=True, read_only=True,
                                       help_text="The last 20 releases the channel carried, newest first")

    class Meta:
        model = Channel
        fields = ["name", "position", "groups_count", "current_release", "history"]
        read_only_fields = fields
