from __future__ import annotations

from django.db.models import Count, Q
from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import serializers

from ..choices import HostUpdateState
from ..models import OS_APPID, Channel, ChannelRelease, OmahaApplication, Release, Rollout, RolloutHost, SigningKey

# ---------------------------------------------------------------------------------------------
# Releases
# ---------------------------------------------------------------------------------------------


class ReleaseBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Release
        fields = ["id", "version", "size", "sha256", "created"]
        read_only_fields = fields


class RolloutBriefSerializer(serializers.ModelSerializer):
    group_name = serializers.CharField(source="group.name", read_only=True)
    channel = serializers.CharField(source="channel.name", read_only=True)

    class Meta:
        model = Rollout
        fields = ["id", "group", "group_name", "channel", "status", "halted_reason", "created", "finished"]
        read_only_fields = fields


class ReleaseSerializer(serializers.ModelSerializer):
    signing_key_id = serializers.CharField(source="signing_key.key_id", read_only=True,
                                           help_text="Id of the Ed25519 key that made the signature")
    channels = serializers.SerializerMethodField(help_text="Names of the channels whose current release this is")

    class Meta:
        model = Release
        fields = ["id", "version", "size", "sha256", "signature", "signing_key_id", "notes", "channels",
                  "created_by", "created"]
        read_only_fields = fields


    def get_channels(self, release) -> list[str]:
        return [channel.name for channel in release.current_on.all()]


class ReleaseDetailSerializer(ReleaseSerializer):
    rollouts = RolloutBriefSerializer(many=True, read_only=True, help_text="Rollouts of this release, newest first")

    class Meta(ReleaseSerializer.Meta):
        fields = ReleaseSerializer.Meta.fields + ["rollouts"]
        read_only_fields = fields


class ReleaseUploadSerializer(serializers.Serializer):
    """The multipart body of a release upload; the rules (version format, uniqueness, declared size
    and hash) are ``Release.objects.create_from_upload``'s."""

    version = serializers.CharField(max_length=Release._meta.get_field("version").max_length)
    payload = serializers.FileField(allow_empty_file=True, help_text="The USR filesystem image")
    size = serializers.IntegerField(required=False, allow_null=True, min_value=0,
                                    help_text="Declared size in bytes: refused if the payload differs")
    sha256 = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=64,
                                   help_text="Declared sha256 (hex): refused if the payload differs")
    notes = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)

    def validate_sha256(self, value):
        return value.strip() or None if value is not None else None


# ---------------------------------------------------------------------------------------------
# Channels
# ---------------------------------------------------------------------------------------------

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


class ReleaseChoiceSerializer(serializers.Serializer):
    release = serializers.IntegerField(help_text="Id of a release of the organization")


class PromoteSerializer(serializers.Serializer):
    override = serializers.BooleanField(default=False, help_text="Promote although the release's rollout halted "
                                                                 "or was aborted on the source channel (admin)")


class ChannelActionSerializer(serializers.Serializer):
    channel = ChannelSerializer()
    rollouts = serializers.ListField(child=serializers.IntegerField(),
                                     help_text="Ids of the rollouts started, one per group following the channel")


# ---------------------------------------------------------------------------------------------
# Rollouts
# ---------------------------------------------------------------------------------------------

STATES = [s.value for s in HostUpdateState]


def annotate_counts(queryset):
    """Per-state host counts on each rollout, in the list's one query (``n_<state>``)."""
    return queryset.annotate(**{f"n_{state}": Count("hosts", filter=Q(hosts__state=state)) for state in STATES})


def counts_of(rollout) -> dict[str, int]:
    """The shape of ``Rollout.counts()`` from the annotations of ``annotate_counts``."""
    counts = {state: getattr(rollout, f"n_{state}") for state in STATES}
    counts["total"] = sum(counts[s] for s in STATES)
    counts["in_flight"] = sum(counts[s] for s in HostUpdateState.in_flight())
    counts["failed_total"] = sum(counts[s] for s in HostUpdateState.failed())
    counts["done"] = sum(counts[s] for s in HostUpdateState.done())
    return counts


COUNTS_SCHEMA = inline_serializer("RolloutCounts", {
    **{state: serializers.IntegerField() for state in STATES},
    "total": serializers.IntegerField(), "in_flight": serializers.IntegerField(),
    "failed_total": serializers.IntegerField(), "done": serializers.IntegerField()})
PROGRESS_SCHEMA = inline_serializer("RolloutProgress", {
    "done": serializers.IntegerField(), "total": serializers.IntegerField(),
    "percent": serializers.FloatField()})


class RolloutSerializer(serializers.ModelSerializer):
    group_name = serializers.CharField(source="group.name", read_only=True)
    channel = serializers.CharField(source="channel.name", read_only=True)
    release_version = serializers.CharField(source="release.version", read_only=True)
    counts = serializers.SerializerMethodField(help_text="Hosts per state, plus total, in_flight, failed_total, done")
    progress = serializers.SerializerMethodField(help_text="Hosts done (updated, failed, rolled back or skipped)")

    class Meta:
        model = Rollout
        fields = ["id", "group", "group_name", "channel", "release", "release_version", "status", "halted_reason",
                  "allow_downgrade", "counts", "progress", "created_by", "created", "finished"]
        read_only_fields = fields

    def _counts(self, rollout) -> dict:
        cached = getattr(rollout, "_api_counts", None)
        if cached is None:
            cached = rollout._api_counts = counts_of(rollout)
        return cached

    @extend_schema_field(COUNTS_SCHEMA)
    def get_counts(self, rollout) -> dict:
        return self._counts(rollout)

    @extend_schema_field(PROGRESS_SCHEMA)
    def get_progress(self, rollout) -> dict:
        counts = self._counts(rollout)
        total = counts["total"]
        return {"done": counts["done"], "total": total,
                "percent": round(100 * counts["done"] / total, 1) if total else 100.0}


class RolloutHostSerializer(serializers.ModelSerializer):
    hostname = serializers.CharField(source="host.hostname", read_only=True)
    # A plain string in the schema: an enum named "state" would collide with the token's state enum.
    state = serializers.CharField(read_only=True, help_text=", ".join(STATES))

    class Meta:
        model = RolloutHost
        fields = ["id", "host", "hostname", "state", "progress", "error", "attempts", "from_version", "granted_at",
                  "finished_at"]
        read_only_fields = fields


# ---------------------------------------------------------------------------------------------
# Signing key
# ---------------------------------------------------------------------------------------------

class SigningKeySerializer(serializers.ModelSerializer):
    algorithm = serializers.SerializerMethodField()

    class Meta:
        model = SigningKey
        fields = ["key_id", "algorithm", "public_key", "created"]
        read_only_fields = fields

    def get_algorithm(self, key) -> str:
        return "ed25519"


class OmahaUrlSerializer(serializers.Serializer):
    """A group's Omaha URL as stored: the secret itself is never shown again."""

    group = serializers.IntegerField(source="group_id")
    url = serializers.CharField(source="masked", help_text="masked: the secret is shown once, when issued")
    created = serializers.DateTimeField()
    created_by = serializers.CharField()


class OmahaUrlIssuedSerializer(serializers.Serializer):
    url = serializers.CharField(help_text="update_engine's SERVER=; shown once")
    update_conf = serializers.CharField(help_text="the update.conf lines to paste (SERVER=, GROUP=); shown once")


class OmahaApplicationSerializer(serializers.ModelSerializer):
    """An Omaha application id the organization serves besides the OS's own (always served)."""

    appid = serializers.CharField(help_text=f"A GUID, with or without a pair of braces, any case (stored lower "
                                            f"case without braces); not the OS's own {OS_APPID}")
    label = serializers.CharField(required=False, allow_blank=True, default="",
                                  max_length=OmahaApplication._meta.get_field("label").max_length)

    class Meta:
        model = OmahaApplication
        fields = ["id", "appid", "label", "created", "created_by"]
        read_only_fields = ["id", "created", "created_by"]
