from __future__ import annotations

from rest_framework import serializers

from ..models import Channel


class ChannelSerializer(serializers.ModelSerializer):
    name = serializers.CharField(read_only=True, help_text="alpha, beta or stable")
    groups_count = serializers.IntegerField(read_only=True)
    # Releases arrive with their own issue; until then a channel has none.
    current_release = serializers.SerializerMethodField(help_text="The release on the channel (none yet)")
    history = serializers.SerializerMethodField(help_text="Releases the channel carried, newest first")

    class Meta:
        model = Channel
        fields = ["name", "position", "groups_count", "current_release", "history"]
        read_only_fields = fields

    def get_current_release(self, obj) -> dict | None:
        return None

    def get_history(self, obj) -> list[dict]:
        return []
