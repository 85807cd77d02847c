from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from datetime import timedelta

from django.db import transaction
from django.utils.text import slugify
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import APIView

from fleetweb.core.api import Conflict, ErrorSerializer, exception_handler
from fleetweb.reboots import etcd
from fleetweb.tenancy.api.base import OrganizationScoped
from fleetweb.tenancy.choices import Role

from ..filtersets import EnrollmentTokenFilterSet, EventFilterSet, HostFilterSet
from ..models import EnrollmentError, EnrollmentToken, Event, Group, Host
from ..writer import registrations
from .serializers import (
    EnrollmentTokenCreateSerializer,
    EnrollmentTokenSerializer,
    EventSerializer,
    GroupSerializer,
    HostSerializer,
    RegisteredSerializer,
    RegisterSerializer,
    RotatedSerializer,
    agent_ws_url,
    annotate_groups,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Agent registration
# ---------------------------------------------------------------------------------------------

class TokenRejected(exceptions.APIException):
    """An enrollment token that cannot enroll; the body carries the EnrollmentError code."""

    STATUS = {"token_invalid": status.HTTP_401_UNAUTHORIZED, "host_exists": status.HTTP_409_CONFLICT}

    def __init__(self, error: EnrollmentError):
        super().__init__(error.detail, error.code)
        self.status_code = self.STATUS.get(error.code, status.HTTP_403_FORBIDDEN)


def bearer(authorization: str | None) -> str | None:
    """The agent's own credential on a re-registration (``Authorization: Bearer fwh_...``)."""
    if authorization and authorization.startswith("Bearer "):
        return authorization[7:].strip() or None
    return None


def client_address(request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def registered(host, credential: str, trust: dict) -> dict:
    """``trust``: the signing key and its endorsement chain, pinned by the agent (against --key-hash)."""
    return {"host_id": str(host.pk), "credential": credential, "ws_url": agent_ws_url(),
            "group": host.group.slug, "org": host.group.organization.slug, **trust}


# The answer holds a secret: no cache may keep it.
NO_STORE = {"Cache-Control": "no-store"}


class RegisterView(APIView):
    """Trade an enrollment token for a host credential (the token is the only authentication).

    Under ASGI, POSTs reach ``register_endpoint`` below (the same body validation, model call and
    answers, batched); this view serves the schema, WSGI and the test client."""

    authentication_classes: list = []
    permission_classes = [permissions.AllowAny]
    parser_classes = [JSONParser]

    @extend_schema(
        operation_id="agents_register", tags=["agents"], auth=[], request=RegisterSerializer,
        responses={201: RegisteredSerializer,
                   400: OpenApiResponse(ErrorSerializer, description="Malformed body; nothing stored"),
                   401: OpenApiResponse(ErrorSerializer, description="code token_invalid"),
                   403: OpenApiResponse(ErrorSerializer,
                                        description="code token_revoked, token_expired or token_exhausted"),
                   409: OpenApiResponse(ErrorSerializer,
                                        description="code host_exists: the machine id is enrolled; send the "
                                                    "host's own credential as Bearer, or have an operator "
                                                    "allow re-enrollment; nothing changed")},
    )
    def post(self, request):
        body = RegisterSerializer(data=request.data)
        body.is_valid(raise_exception=True)  # before the token is redeemed: a bad body uses nothing up
        try:
            host, credential = Host.objects.register(**body.validated_data, address=client_address(request),
                                                     credential=bearer(request.META.get("HTTP_AUTHORIZATION")))
        except EnrollmentError as exc:
            raise TokenRejected(exc) from None
        return Response(registered(host, credential, host.group.signing_key_fields()), status=status.HTTP_201_CREATED, headers=NO_STORE)


MAX_REGISTER_BODY = 64 * 1024


async def register_endpoint(scope, receive, send) -> None:
    """POST /api/v1/agents/register as a bare ASGI app: no session, CSRF or auth middleware (the
    token is the only authentication), and enrollments that arrive together share a transaction
    (``writer.registrations``).  Errors have the API's shape, produced by the same handler."""

    async def answer(code: int, data: dict, headers: dict | None = None) -> None:
        payload = json.dumps(data, separators=(",", ":")).encode()
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                (b"x-content-type-options", b"nosniff"),
                *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())]
        await send({"type": "http.response.start", "status": code, "headers": head})
        await send({"type": "http.response.body", "body": payload})

    async def refuse(exc: exceptions.APIException) -> None:
        response = exception_handler(exc, {})
        await answer(response.status_code, response.data)

    raw, more = bytearray(), True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        raw += message.get("body", b"")
        more = message.get("more_body", False)
        if len(raw) > MAX_REGISTER_BODY:
            return await answer(413, {"detail": f"The request body is larger than {MAX_REGISTER_BODY} bytes.",
                                      "errors": {}})
    headers = dict(scope.get("headers") or ())
    media = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip()
    if media != "application/json":
        return await refuse(exceptions.UnsupportedMediaType(media))
    try:
        data = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError included
        return await refuse(exceptions.ParseError(f"JSON parse error - {exc}"))
    body = RegisterSerializer(data=data)  # plain fields: validation touches no database
    if not body.is_valid():
        return await refuse(exceptions.ValidationError(body.errors))
    client = scope.get("client")
    try:
        host, credential, trust = await registrations.submit({
            **body.validated_data, "address": client[0] if client else None,
            "credential": bearer(headers.get(b"authorization", b"").decode("latin-1"))})
    except EnrollmentError as exc:
        return await refuse(TokenRejected(exc))
    except Exception:
        log.exception("registration failed")
        return await answer(500, {"detail": "The registration could not be stored (nothing was): try again.",
                                  "errors": {}})
    await answer(201, registered(host, credential, trust), NO_STORE)


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
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    write_roles = {"destroy": Role.ADMIN, "revoke_credential": Role.ADMIN, "rotate_etcd_credentials": Role.ADMIN}

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

    @extend_schema(request=None, responses={200: HostSerializer})
    @action(detail=True, methods=["post"], url_path="allow-reenrollment")
    def allow_reenrollment(self, request, pk=None):
        """Let this machine id register once more with any token of the organization (a reimaged
        machine), within FLEET_REENROLLMENT_WINDOW; logged."""
        host = self.get_object()
        host.allow_reenrollment(actor=self.actor)
        return Response(self.get_serializer(host).data)

    @extend_schema(request=None, responses={200: HostSerializer})
    @action(detail=True, methods=["post"], url_path="revoke-credential")
    def revoke_credential(self, request, pk=None):
        """Void the host's agent credential and close its live socket (admin)."""
        host = self.get_object()
        host.revoke_credentials(actor=self.actor)
        return Response(self.get_serializer(host).data)

    @extend_schema(request=None, responses={200: RotatedSerializer,
                                            409: OpenApiResponse(ErrorSerializer, description="etcd has no auth")})
    @action(detail=True, methods=["post"], url_path="rotate-etcd-credentials")
    def rotate_etcd_credentials(self, request, pk=None):
        """New etcd password for the host (admin), pushed to it; the old one stops working at once."""
        host = self.get_object()
        with etcd_auth_required():
            host.rotate_etcd_credentials(actor=self.actor)
        return Response({"rotated": 1})


@contextmanager
def etcd_auth_required():
    """409 ``etcd_auth_disabled`` when etcd runs without auth (no per-host users to rotate)."""
    try:
        yield
    except etcd.EtcdAuthDisabled as exc:
        raise Conflict(str(exc), code=exc.code) from exc


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
    write_roles = {"rotate_etcd_credentials": Role.ADMIN}

    def get_queryset(self):
        return annotate_groups(super().get_queryset())

    @extend_schema(request=None, responses={200: RotatedSerializer,
                                            409: OpenApiResponse(ErrorSerializer, description="etcd has no auth")})
    @action(detail=True, methods=["post"], url_path="rotate-etcd-credentials")
    def rotate_etcd_credentials(self, request, pk=None):
        """New etcd passwords for every host of the group (admin), each pushed to its host."""
        group = self.get_object()
        with etcd_auth_required():
            count = group.rotate_etcd_credentials(actor=self.actor)
        return Response({"rotated": count})

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
        if data.get("replace_existing") and not Role.at_least(request._request.role, Role.ADMIN):
            raise exceptions.PermissionDenied("Only an admin may create a token that replaces existing hosts.")
        user = request.user
        created_by = getattr(getattr(user, "key", None), "created_by", None) or (
            user if getattr(user, "pk", None) else None)
        with transaction.atomic():
            token, secret = EnrollmentToken.objects.issue(
                data["group"], name=data.get("name", ""), max_uses=data.get("max_uses"), created_by=created_by,
                replace_existing=data.get("replace_existing", False),
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
