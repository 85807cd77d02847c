from __future__ import annotations

from django.conf import settings
from django.db import models
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agent import protocol
from fleetweb.updates.models import Channel

from ..choices import RebootStrategy
from ..models import EnrollmentToken, Event, Group, Host


def _scoped(serializer, queryset):
    """The queryset restricted to the organization of the serializer's request."""
    request = serializer.context.get("request")
    return queryset.filter(organization=getattr(request, "organization", None))


class OrganizationRelatedField(serializers.PrimaryKeyRelatedField):
    """A primary key that must belong to the organization of the request."""

    def get_queryset(self):
        return _scoped(self, super().get_queryset())


class OrganizationSlugRelatedField(serializers.SlugRelatedField):
    def get_queryset(self):
        return _scoped(self, super().get_queryset())


# ---------------------------------------------------------------------------------------------
# Agent registration
# ---------------------------------------------------------------------------------------------

class PartitionSerializer(serializers.Serializer):
    """One USR partition as the agent reports it (the fields of ``agent.protocol.PARTITION_FIELDS``)."""

    label = serializers.CharField()
    number = serializers.IntegerField()
    version = serializers.CharField(allow_null=True, required=False)
    priority = serializers.IntegerField()
    tries = serializers.IntegerField()
    successful = serializers.BooleanField()
    active = serializers.BooleanField()


@extend_schema_field(PartitionSerializer(many=True))
class PartitionsField(serializers.ListField):
    """Validated by the wire protocol's own rules, so the REST body and the hello frame agree."""

    child = serializers.DictField()

    def to_internal_value(self, data):
        if not isinstance(data, list):
            raise serializers.ValidationError("Expected a list of partitions.")
        try:
            protocol._check_partitions("partitions", data)
        except protocol.ProtocolError as exc:
            raise serializers.ValidationError(exc.message) from None
        return data


class RegisterSerializer(serializers.Serializer):
    token = serializers.CharField(max_length=200, trim_whitespace=True)
    machine_id = serializers.CharField(max_length=Host._meta.get_field("machine_id").max_length)
    hostname = serializers.CharField(max_length=Host._meta.get_field("hostname").max_length)
    boot_id = serializers.CharField(max_length=Host._meta.get_field("boot_id").max_length, required=False,
                                    allow_blank=True, default="")
    agent_version = serializers.CharField(max_length=Host._meta.get_field("agent_version").max_length,
                                          required=False, allow_blank=True, default="")
    version = serializers.CharField(max_length=Host._meta.get_field("version").max_length, required=False,
                                    allow_null=True, allow_blank=True, default=None)
    partitions = PartitionsField(required=False, default=list)
    channel = serializers.CharField(max_length=Host._meta.get_field("channel").max_length, required=False,
                                    allow_null=True, allow_blank=True, default=None,
                                    help_text="GROUP= from /etc/coreos/update.conf")
    reboot_strategy = serializers.CharField(max_length=Host._meta.get_field("reboot_strategy").max_length,
                                            required=False, allow_null=True, allow_blank=True, default=None,
                                            help_text="REBOOT_STRATEGY= from /etc/coreos/update.conf")


class RegisteredSerializer(serializers.Serializer):
    host_id = serializers.UUIDField()
    credential = serializers.CharField(help_text="Shown once: the agent keeps it (mode 0600).")
    ws_url = serializers.CharField()
    group = serializers.CharField(help_text="Slug of the group the token enrolled the host in")
    org = serializers.CharField(help_text="Slug of the organization")
    signing_key = serializers.CharField(required=False, help_text="The organization's release signing key (base64 "
                                        "Ed25519); the agent checks it against --key-hash and pins it")
    signing_key_id = serializers.CharField(required=False)
    signing_key_hash = serializers.CharField(required=False, help_text="sha256:<hex> of the raw public key")
    signing_key_endorsement = serializers.CharField(required=False)
    signing_key_chain = serializers.ListField(child=serializers.DictField(), required=False,
                                              help_text="{public_key, endorsement} oldest first: each key "
                                                        "endorsed by the one before")


def agent_ws_url() -> str:
    base = settings.FLEET_PUBLIC_URL
    if base.startswith("https://"):
        base = "wss://" + base[len("https://"):]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://"):]
    return base + "/ws/agent/"


# ---------------------------------------------------------------------------------------------
# Hosts
# ---------------------------------------------------------------------------------------------

class HostSerializer(serializers.ModelSerializer):
    group = OrganizationRelatedField(queryset=Group.objects.all())
    group_name = serializers.CharField(source="group.name", read_only=True)
    channel = serializers.CharField(source="group.channel.name", read_only=True,
                                    help_text="Channel of the host's group (what the server wants)")
    reported_channel = serializers.CharField(source="channel", read_only=True,
                                             help_text="GROUP= the agent reported from update.conf")
    partitions = PartitionSerializer(many=True, read_only=True)
    policy_applied = serializers.BooleanField(read_only=True,
                                              help_text="The agent acknowledged its group's current policy")

    class Meta:
        model = Host
        fields = ["id", "hostname", "machine_id", "group", "group_name", "channel", "reported_channel",
                  "version", "update_status", "online", "last_seen", "partitions", "policy_applied",
                  "agent_version", "boot_id", "registered_at", "reenrollment_allowed_until"]
        read_only_fields = ["id", "machine_id", "version", "update_status", "online", "last_seen",
                            "agent_version", "boot_id", "registered_at", "reenrollment_allowed_until"]


# ---------------------------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------------------------

ROLLOUT_FIELDS = ["updates_enabled", "max_updates_per_period", "update_period", "max_in_flight", "update_timeout",
                  "safe_mode", "failure_threshold", "failure_threshold_percent"]


class GroupSerializer(serializers.ModelSerializer):
    channel = OrganizationSlugRelatedField(slug_field="name", queryset=Channel.objects.all(),
                                           help_text="alpha, beta or stable: the switch toggle")
    reboot_strategy = serializers.ChoiceField(choices=RebootStrategy.choices, required=False)
    hosts_count = serializers.IntegerField(read_only=True)
    hosts_applied = serializers.IntegerField(read_only=True,
                                             help_text="Hosts that acknowledged the current policy revision")

    class Meta:
        model = Group
        fields = ["id", "name", "slug", "channel", "reboot_strategy", "max_concurrent_reboots", "lock_stuck_after",
                  "reboot_window_start", "reboot_window_length", *ROLLOUT_FIELDS, "policy_revision",
                  "hosts_count", "hosts_applied", "created"]
        read_only_fields = ["id", "slug", "policy_revision", "created"]
        extra_kwargs = {"max_concurrent_reboots": {"min_value": 1}}

    def validate_name(self, value: str) -> str:
        value = value.strip()
        if not value:
            raise serializers.ValidationError("This field may not be blank.")
        return value


def annotate_groups(queryset):
    """The counts a group item carries, in the list's one query."""
    return queryset.select_related("channel").annotate(
        hosts_count=models.Count("hosts"),
        hosts_applied=models.Count("hosts", filter=models.Q(hosts__policy_revision__gte=models.F("policy_revision"))),
    ).order_by("name", "id")  # Meta.ordering does not apply to aggregating queries


# ---------------------------------------------------------------------------------------------
# Enrollment tokens
# ---------------------------------------------------------------------------------------------

class EnrollmentTokenSerializer(serializers.ModelSerializer):
    group = OrganizationRelatedField(queryset=Group.objects.all())
    group_name = serializers.CharField(source="group.name", read_only=True)
    state = serializers.ChoiceField(choices=["active", "revoked", "expired", "used up"], read_only=True)
    display = serializers.CharField(read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True, allow_null=True, default=None)

    class Meta:
        model = EnrollmentToken
        fields = ["id", "name", "display", "group", "group_name", "state", "expires_at", "max_uses", "uses",
                  "replace_existing", "created", "created_by", "last_used", "revoked_at"]
        read_only_fields = ["id", "expires_at", "uses", "created", "last_used", "revoked_at"]


class EnrollmentTokenCreateSerializer(EnrollmentTokenSerializer):
    expires_in = serializers.IntegerField(required=False, allow_null=True, min_value=1,
                                          max_value=10 * 365 * 24 * 3600, write_only=True,
                                          help_text="Seconds until the token expires; omit for no expiry")
    max_uses = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=EnrollmentToken.MAX_USES,
                                        help_text="How many hosts may enroll with it; omit for no limit")
    token = serializers.SerializerMethodField(help_text="The secret: shown in this response only")
    command = serializers.SerializerMethodField(help_text="Run on the host to enroll it")

    class Meta(EnrollmentTokenSerializer.Meta):
        fields = EnrollmentTokenSerializer.Meta.fields + ["expires_in", "token", "command"]

    def get_token(self, obj) -> str:
        return self.context["secret"]

    def get_command(self, obj) -> str:
        return obj.enrollment_command(self.context["secret"])


# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------

class EventSerializer(serializers.ModelSerializer):
    host_name = serializers.CharField(source="host.hostname", read_only=True, allow_null=True, default=None)
    group_name = serializers.CharField(source="group.name", read_only=True, allow_null=True, default=None)

    class Meta:
        model = Event
        fields = ["id", "kind", "message", "host", "host_name", "group", "group_name", "actor", "data", "created"]
        read_only_fields = fields


class RotatedSerializer(serializers.Serializer):
    rotated = serializers.IntegerField(help_text="How many hosts got a new etcd password")
