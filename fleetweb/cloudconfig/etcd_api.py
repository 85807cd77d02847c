"""REST API of the cluster configuration in etcd (issue 6 §5): ``cluster-config/`` (list),
``cluster-config/key`` (GET, PUT, DELETE one key), ``cluster-config/history`` (its revisions).
Keys travel in the query string or the body, relative to the scope, never in the URL path, so
``..`` cannot be normalised away before the prefix check sees it."""
from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from fleetweb.core.api import ErrorSerializer, Refused
from fleetweb.tenancy.choices import Role

from .etcd import EtcdError, configured
from .etcd_scope import store_for


class ClusterConfigEntrySerializer(serializers.Serializer):
    key = serializers.CharField(help_text="Relative to the scope's prefix")
    value = serializers.CharField(allow_blank=True)
    json = serializers.BooleanField(help_text="Marked JSON: only valid JSON can be stored")
    create_revision = serializers.IntegerField()
    mod_revision = serializers.IntegerField()
    version = serializers.IntegerField()
    etcd_key = serializers.CharField(help_text="The full etcd key hosts read")


class ClusterConfigListSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(choices=["org", "group"])
    group = serializers.IntegerField(allow_null=True)
    prefix = serializers.CharField()
    results = ClusterConfigEntrySerializer(many=True)


class ClusterConfigPutSerializer(serializers.Serializer):
    key = serializers.CharField(max_length=512)
    value = serializers.CharField(allow_blank=True, trim_whitespace=False)
    json = serializers.BooleanField(required=False, allow_null=True, default=None,
                                    help_text="true marks the key JSON, false unmarks it, omitted keeps the marker")


class ClusterConfigRevisionSerializer(serializers.Serializer):
    value = serializers.CharField(allow_blank=True)
    mod_revision = serializers.IntegerField()
    create_revision = serializers.IntegerField()
    version = serializers.IntegerField()


class ClusterConfigHistorySerializer(serializers.Serializer):
    key = serializers.CharField()
    etcd_key = serializers.CharField()
    revisions = ClusterConfigRevisionSerializer(many=True)
    compacted = serializers.BooleanField(help_text="Older revisions existed but etcd compacted them")
    truncated = serializers.BooleanField()


SCOPE = [
    OpenApiParameter("scope", OpenApiTypes.STR, enum=["org", "group"], description="Default org"),
    OpenApiParameter("group", OpenApiTypes.INT, description="The group's id (scope=group)"),
]
KEY = OpenApiParameter("key", OpenApiTypes.STR, required=True, description="Relative to the scope's prefix")
ERRORS = {400: OpenApiResponse(ErrorSerializer, description="Bad key, scope or value; nothing written"),
          404: OpenApiResponse(ErrorSerializer, description="No such key or group"),
          503: OpenApiResponse(ErrorSerializer, description="etcd is not configured or not reachable")}


class ClusterConfigMixin:
    write_role = Role.OPERATOR

    def store(self, request):
        if not configured():
            raise Refused("etcd is not configured on this server (ETCD_ENDPOINTS is empty).",
                          status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
        try:
            return store_for(request, request.query_params)
        except EtcdError as exc:
            raise Refused(exc.message, exc.field, exc.status) from None

    def run(self, fn):
        try:
            return fn()
        except EtcdError as exc:
            raise Refused(exc.message, exc.field, exc.status) from None

    def key(self, request, data=None) -> str:
        key = (data or request.query_params).get("key")
        if not key:
            raise Refused("A key is required.", "key")
        return key


@extend_schema(tags=["cluster-config"])
class ClusterConfigListView(ClusterConfigMixin, APIView):
    @extend_schema(operation_id="cluster_config_list", parameters=SCOPE, responses={200: ClusterConfigListSerializer, **ERRORS})
    def get(self, request):
        store, group = self.store(request)
        entries = self.run(store.list)
        return Response({"scope": store.scope, "group": group.pk if group else None, "prefix": store.base,
                         "results": [e.as_dict() for e in entries]})


@extend_schema(tags=["cluster-config"])
class ClusterConfigKeyView(ClusterConfigMixin, APIView):
    @extend_schema(operation_id="cluster_config_get", parameters=[*SCOPE, KEY],
                   responses={200: ClusterConfigEntrySerializer, **ERRORS})
    def get(self, request):
        store, _ = self.store(request)
        key = self.key(request)
        return Response(self.run(lambda: store.get(key)).as_dict())

    @extend_schema(operation_id="cluster_config_put", parameters=SCOPE, request=ClusterConfigPutSerializer,
                   responses={200: ClusterConfigEntrySerializer, **ERRORS})
    def put(self, request):
        store, _ = self.store(request)
        body = ClusterConfigPutSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        entry = self.run(lambda: store.put(data["key"], data["value"], as_json=data.get("json")))
        return Response(entry.as_dict())

    @extend_schema(operation_id="cluster_config_delete", parameters=[*SCOPE, KEY],
                   responses={204: None, **ERRORS})
    def delete(self, request):
        store, _ = self.store(request)
        key = self.key(request)
        self.run(lambda: store.delete(key))
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["cluster-config"])
class ClusterConfigHistoryView(ClusterConfigMixin, APIView):
    @extend_schema(operation_id="cluster_config_history", parameters=[*SCOPE, KEY],
                   responses={200: ClusterConfigHistorySerializer, **ERRORS})
    def get(self, request):
        store, _ = self.store(request)
        key = self.key(request)
        return Response(self.run(lambda: store.history(key)))
