from __future__ import annotations

from rest_framework import serializers

from ..choices import ApplyState, EntryKind, Level
from ..models import Revision


class ContentSerializer(serializers.Serializer):
    content = serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=256 * 1024)


class EntrySerializer(serializers.Serializer):
    line = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=EntryKind.choices)
    message = serializers.CharField()


class ReportSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    entries = EntrySerializer(many=True)


class InvalidDocumentSerializer(serializers.Serializer):
    """400 from a PUT or a restore: the usual error body, plus the validation report when the
    content itself is invalid (not when the body is malformed)."""

    detail = serializers.CharField()
    errors = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))
    valid = serializers.BooleanField(required=False)
    entries = EntrySerializer(many=True, required=False)


class DocumentSerializer(serializers.Serializer):
    level = serializers.ChoiceField(choices=Level.choices)
    content = serializers.CharField(allow_blank=True)
    revision = serializers.IntegerField(help_text="number of the current revision of this document (0: none yet)")
    revision_id = serializers.IntegerField(allow_null=True, help_text="global id; effective revisions compare these")
    updated = serializers.DateTimeField(allow_null=True)
    author = serializers.CharField(allow_blank=True)

    @staticmethod
    def of(doc) -> dict:
        rev = doc.current_revision
        return {"level": doc.level, "content": doc.content, "revision": rev.number if rev else 0,
                "revision_id": rev.pk if rev else None, "updated": doc.updated if rev else None,
                "author": rev.author_name if rev else ""}


class RevisionSerializer(serializers.ModelSerializer):
    id = serializers.IntegerField(read_only=True)
    author = serializers.CharField(source="author_name", read_only=True)
    restored_from = serializers.SerializerMethodField()

    class Meta:
        model = Revision
        fields = ["id", "number", "author", "created", "restored_from", "content"]

    def get_restored_from(self, obj) -> int | None:
        return obj.restored_from.number if obj.restored_from_id else None


class DiffSerializer(serializers.Serializer):
    from_revision = serializers.IntegerField(allow_null=True)
    to_revision = serializers.IntegerField()
    diff = serializers.CharField(allow_blank=True, help_text="difflib unified diff")


class EffectiveSerializer(serializers.Serializer):
    content = serializers.CharField(allow_blank=True, help_text="with $public_ipv4 & co. substituted")
    revision = serializers.IntegerField(help_text="effective revision (0: no document)")
    applied_revision = serializers.IntegerField(allow_null=True)
    errors = serializers.ListField(child=serializers.CharField())
    apply_state = serializers.ChoiceField(choices=ApplyState.choices)


class FetchUrlSerializer(serializers.Serializer):
    url = serializers.CharField(help_text="secret URL, shown once (for cloud-config-url=)")


class FetchUrlInfoSerializer(serializers.Serializer):
    """A fetch URL as stored: the secret itself is never shown again."""

    level = serializers.CharField()
    url = serializers.CharField(source="masked", help_text="masked: the secret is shown once, when issued")
    created = serializers.DateTimeField()
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)
    last_used = serializers.DateTimeField(allow_null=True)


class AgentRequestSerializer(serializers.Serializer):
    addresses = serializers.DictField(child=serializers.CharField(), required=False,
                                      help_text="public_ipv4, private_ipv4, public_ipv6, private_ipv6")


class AgentDocumentSerializer(serializers.Serializer):
    content = serializers.CharField(allow_blank=True)
    revision = serializers.IntegerField()
