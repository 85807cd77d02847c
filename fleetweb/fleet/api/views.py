from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.utils.text import slugify
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import APIView

from fleetweb.core.api import Conflict
from fleetweb.tenancy.api.base import OrganizationScoped
from fleetweb.tenancy.choices import Role

from ..filtersets import EnrollmentTokenFilterSet, EventFilterSet, HostFilterSet
from ..models import EnrollmentError, EnrollmentToken, Event, Group, Host
from .serializers import (
    EnrollmentTokenCreateSerializer,
    EnrollmentTokenSerializer,
    ErrorSerializer,
    EventSerializer,
    GroupSerializer,
    HostSerializer,
    RegisteredSerializer,
    RegisterSerializer,
    agent_ws_url,
    annotate_groups,
)

# ---------------------------------------------------------------------------------------------
# Agent registration
# ---------------------------------------------------------------------------------------------

class TokenRejected(exceptions.APIException):
    """An enrollment token that cannot enroll; the body carries the EnrollmentError code."""

    STATUS = {"token_invalid": status.HTTP_401_UNAUTHORIZED}

    def __init__(self, error: EnrollmentError):
        super().__init__(error.detail, error.code)
        self.status_code = self.STATUS.get(error.code, status.HTTP_403_FORBIDDEN)


def client_address(request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


class RegisterView(APIView):
    """Trade an enrollment token for a host credential (the token is the only authentication)."""

    authentication_classes: list = []
    permission_classes = [permissions.AllowAny]
    parser_classes = [JSONParser]

    @extend_schema(
        operation_id="agents_register", tags=["agents"], auth=[], request=RegisterSerializer,
        responses={201: RegisteredSerializer,
                   400: OpenApiResponse(ErrorSerializer, description="Malformed body; nothing stored"),
                   401: OpenApiResponse(ErrorSerializer, description="code token_invalid"),
                   403: OpenApiResponse(ErrorSerializer,
                                        description="code token_revoked, token_expired or token_exhausted")},
    )
    def post(self, request):
        body = RegisterSerializer(data=request.data)
        body.is_valid(raise_exception=True)  # before the token is redeemed: a bad body uses nothing up
        data = body.validated_data
        try:  # one transaction: a failure after the token is redeemed gives the use back
            host, credential = Host.objects.register(
                data["token"], machine_id=data["machine_id"], hostname=data["hostname"],
                agent_version=data["agent_version"], boot_id=data["boot_id"], version=data["version"],
                partitions=data["partitions"], channel=data["channel"],
                reboot_strategy=data["reboot_strategy"], address=client_address(request))
        except EnrollmentError as exc:
            raise TokenRejected(exc) from None
        return Response({"host_id": str(host.pk), "credential": credential, "ws_url": agent_ws_url(),
                         "group": host.group.slug, "org": host.group.organization.slug},
                        status=status.HTTP_201_CREATED)


# ---------------------------------------------------------------------------------------------
# Hosts
# ---------------------------------------------------------------------------------------------

@extend_schema(tags=["hosts"])
class HostViewSet(OrganizationScoped, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                  mixins.UpdateModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    queryset = Host.objects.select_related("group", "group__channel")
    serializer_class = HostSerializer
    filterset_class = HostFilterSet
    lookup_value_converter = "uuid"
    http_method_names = ["get", "patch", "delete", "head", "options"]
    write_roles = {"destroy": Role.ADMIN}

    def perform_update(self, serializer):
        host = serializer.instance
        data = serializer.validated_data
        with transaction.atomic():
            if "group" in data:
                host.move_to(data["group"], actor=self.actor)
            if "hostname" in data and data["hostname"] != host.hostname:
                host.hostname = data["hostname"]
                host.save(update_fields=["hostname"])

    def perform_destroy(self, instance):
        instance.delete_with_event(actor=self.actor)


# ---------------------------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------------------------

@extend_schema(tags=["groups"])
class GroupViewSet(OrganizationScoped, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                   mixins.CreateModelMixin, mixins.UpdateModelMixin, viewsets.GenericViewSet):
    queryset = Group.objects.all()
    serializer_class = GroupSerializer
    lookup_value_converter = "int"
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self):
        return annotate_groups(super().get_queryset())

    def perform_create(self, serializer):
        group = Group(organization=self.request.organization, **serializer.validated_data)
        group.slug = slugify(group.name)[:100] or "group"
        group.full_clean()  # the reboot window and the slug's uniqueness are the model's rules
        group.save()
        serializer.instance = self.get_queryset().get(pk=group.pk)  # with its counts

    def perform_update(self, serializer):
        group = serializer.instance
        group.apply_changes(dict(serializer.validated_data), actor=self.actor)
        serializer.instance = self.get_queryset().get(pk=group.pk)


# ---------------------------------------------------------------------------------------------
# Enrollment tokens
# ---------------------------------------------------------------------------------------------

@extend_schema(tags=["tokens"])
class EnrollmentTokenViewSet(OrganizationScoped, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                             mixins.CreateModelMixin, viewsets.GenericViewSet):
    queryset = EnrollmentToken.objects.select_related("group", "created_by")
    serializer_class = EnrollmentTokenSerializer
    filterset_class = EnrollmentTokenFilterSet
    lookup_value_converter = "int"

    @extend_schema(request=EnrollmentTokenCreateSerializer, responses={201: EnrollmentTokenCreateSerializer})
    def create(self, request, *args, **kwargs):
        body = EnrollmentTokenCreateSerializer(data=request.data, context=self.get_serializer_context())
        body.is_valid(raise_exception=True)
        data = body.validated_data
        user = request.user
        created_by = getattr(getattr(user, "key", None), "created_by", None) or (
            user if getattr(user, "pk", None) else None)
        with transaction.atomic():
            token, secret = EnrollmentToken.objects.issue(
                data["group"], name=data.get("name", ""), max_uses=data.get("max_uses"), created_by=created_by,
                expires_in=timedelta(seconds=data["expires_in"]) if data.get("expires_in") else None)
        out = EnrollmentTokenCreateSerializer(token, context={**self.get_serializer_context(), "secret": secret})
        return Response(out.data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: EnrollmentTokenSerializer,
                                            409: OpenApiResponse(ErrorSerializer, description="Already revoked")})
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        token = self.get_object()
        if not token.revoke(actor=self.actor):
            raise Conflict("The enrollment token is already revoked.")
        token.refresh_from_db()
        return Response(self.get_serializer(token).data)


# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------

@extend_schema(tags=["events"])
class EventViewSet(OrganizationScoped, viewsets.ReadOnlyModelViewSet):
    queryset = Event.objects.select_related("host", "group").order_by("-created", "-id")
    serializer_class = EventSerializer
    filterset_class = EventFilterSet
    lookup_value_converter = "int"
