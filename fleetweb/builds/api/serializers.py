from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import serializers

from fleetweb.updates.choices import ChannelName
from fleetweb.updates.models import VERSION_RE

from ..choices import Platform
from ..models import BuildArtifact, ImageBuild, validate_request


class BuildArtifactSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField(help_text="Download (login or API key; Range requests)")

    class Meta:
        model = BuildArtifact
        fields = ["platform", "name", "size", "sha256", "url"]
        read_only_fields = fields

    def get_url(self, artifact) -> str:
        path = reverse("build-artifact", args=[artifact.build_id, artifact.name])
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path


STEP_SCHEMA = inline_serializer("BuildStepTiming", {
    "started": serializers.DateTimeField(), "finished": serializers.DateTimeField(required=False),
    "seconds": serializers.FloatField(required=False)})


class ImageBuildSerializer(serializers.ModelSerializer):
    platforms = serializers.ListField(child=serializers.ChoiceField(choices=Platform.choices), read_only=True)
    timings = serializers.SerializerMethodField(help_text="Per step (prepare, each platform, sums)")
    release_version = serializers.CharField(source="release.version", read_only=True, allow_null=True, default=None,
                                            help_text="The release the build was published as")
    artifacts = BuildArtifactSerializer(many=True, read_only=True)

    class Meta:
        model = ImageBuild
        fields = ["id", "version", "channel", "platforms", "status", "progress", "current_step", "timings",
                  "last_error", "release", "release_version", "artifacts", "created_by", "created", "started",
                  "finished"]
        read_only_fields = fields

    @extend_schema_field(serializers.DictField(child=STEP_SCHEMA))
    def get_timings(self, build) -> dict:
        return build.timings


class ImageBuildCreateSerializer(serializers.Serializer):
    """A build request; the rules are ``fleetweb.builds.models.validate_request``."""

    version = serializers.CharField(max_length=64, help_text=f"Like 1234.5.6 ({VERSION_RE.pattern})")
    channel = serializers.ChoiceField(choices=ChannelName.choices)
    platforms = serializers.ListField(child=serializers.ChoiceField(choices=Platform.choices), allow_empty=False,
                                      help_text="Non-empty, no duplicates")

    def validate(self, data):
        from fleetweb.updates.models import UpdateError

        try:
            validate_request(data["version"], data["channel"], data["platforms"])
        except UpdateError as exc:
            raise serializers.ValidationError({exc.field or "non_field_errors": [exc.message]}) from None
        return data


class PublishSerializer(serializers.Serializer):
    channel = serializers.ChoiceField(choices=ChannelName.choices, default=ChannelName.ALPHA)


class PublishedSerializer(serializers.Serializer):
    build = ImageBuildSerializer()
    release = serializers.IntegerField(help_text="Id of the release made from the build's payload")
    rollouts = serializers.ListField(child=serializers.IntegerField(),
                                     help_text="Ids of the rollouts started, one per group following the channel")
