from __future__ import annotations

from rest_framework import serializers


class LockHolderSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="holder id: the host's machine id (or a FleetLock client id)")
    host = serializers.CharField(allow_null=True, help_text="hostname of the host with that machine id")
    host_id = serializers.UUIDField(allow_null=True)
    since = serializers.DateTimeField(allow_null=True, help_text="when the server first saw it hold the lock")
    online = serializers.BooleanField(allow_null=True)
    stuck = serializers.BooleanField(help_text="offline for longer than the group's update timeout")


class LockSerializer(serializers.Serializer):
    """A group's reboot semaphore (locksmith JSON under ``fleet/<org>/``)."""

    group = serializers.IntegerField()
    group_name = serializers.CharField()
    key = serializers.CharField(help_text="the etcd key")
    max = serializers.IntegerField()
    free = serializers.IntegerField(allow_null=True, help_text="free slots; null when etcd cannot be read")
    semaphore = serializers.IntegerField(required=False, help_text="locksmith's counter (negative after a max cut)")
    holders = LockHolderSerializer(many=True)
    error = serializers.CharField(allow_null=True, help_text="why etcd could not be read (not configured, down)")


class UnlockSerializer(serializers.Serializer):
    holder = serializers.CharField(max_length=255)


class SetMaxSerializer(serializers.Serializer):
    max = serializers.IntegerField(min_value=0, max_value=10000)


class FleetLockUrlSerializer(serializers.Serializer):
    """The organization's FleetLock URL as stored: the secret itself is never shown again."""

    url = serializers.CharField(source="masked", help_text="masked: the secret is shown once, when issued")
    created = serializers.DateTimeField()
    created_by = serializers.CharField()


class FleetLockRotatedSerializer(serializers.Serializer):
    url = serializers.CharField(help_text="Zincati's fleet_lock.base_url; shown once")
    zincati_config = serializers.CharField(help_text="a Zincati config.d drop-in using it; shown once")
