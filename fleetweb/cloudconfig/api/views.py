"""REST for cloud-config documents (DESIGN §3): one set of views per level (organization, group,
host), the validator, and the agent's own fetch endpoint.  Scoped to the request's organization
(another organization's group or host is a 404); writes need the operator role."""
from __future__ import annotations

from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, permissions, status
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import APIView

from agent import cloudconfig as cc
from fleetweb.core.api import ErrorSerializer
from fleetweb.fleet.api.views import client_address
from fleetweb.fleet.models import Group, Host, HostCredential
from fleetweb.tenancy.choices import Role

from ..choices import Level
from ..models import (
    CloudConfig,
    FetchUrl,
    HostCloudConfigState,
    InvalidDocument,
    Revision,
    host_addresses,
    saving_report,
)
from ..models import apply_state as compute_state
from .serializers import (
    AgentDocumentSerializer,
    AgentRequestSerializer,
    ContentSerializer,
    DiffSerializer,
    DocumentSerializer,
    EffectiveSerializer,
    FetchUrlInfoSerializer,
    FetchUrlSerializer,
    InvalidDocumentSerializer,
    ReportSerializer,
    RevisionSerializer,
)

TAGS = ["cloud-config"]
NOT_FOUND = OpenApiResponse(ErrorSerializer, description="Not in your organization")


def invalid_response(exc: InvalidDocument) -> Response:
    body = {"detail": exc.detail, "errors": {"content": [str(e) for e in exc.report.errors]},
            **exc.report.as_dict()}
    return Response(body, status=status.HTTP_400_BAD_REQUEST)


class LevelMixin:
    """Finds the document of the URL's level inside the request's organization."""

    level = Level.ORGANIZATION
    parser_classes = [JSONParser]

    def target(self):
        org = self.request.organization
        pk = self.kwargs.get("pk")
        if self.level == Level.GROUP:
            return get_object_or_404(Group.objects.filter(organization=org).select_related("channel"), pk=pk)
        if self.level == Level.HOST:
            return get_object_or_404(Host.objects.filter(organization=org).select_related("group"), pk=pk)
        return org

    def document(self, create: bool = False) -> CloudConfig:
        target = self.target()
        field = {Level.ORGANIZATION: {}, Level.GROUP: {"group": target}, Level.HOST: {"host": target}}[self.level]
        if create:
            getter = {Level.ORGANIZATION: CloudConfig.objects.for_organization, Level.GROUP: CloudConfig.objects.for_group,
                      Level.HOST: CloudConfig.objects.for_host}[self.level]
            return getter(target)
        org_id = target.pk if self.level == Level.ORGANIZATION else target.organization_id
        qs = CloudConfig.objects.select_related("current_revision").filter(organization_id=org_id, **field)
        if self.level == Level.ORGANIZATION:
            qs = qs.filter(group__isnull=True, host__isnull=True)
        return qs.first() or CloudConfig(organization_id=org_id, **field)

    def revision(self, doc, number) -> Revision:
        if doc.pk is None:
            raise exceptions.NotFound("No such revision.")
        return get_object_or_404(doc.revisions.all(), number=number)


class DocumentView(LevelMixin, APIView):
    @extend_schema(tags=TAGS, responses={200: DocumentSerializer, 404: NOT_FOUND})
    def get(self, request, pk=None):
        return Response(DocumentSerializer.of(self.document()))

    @extend_schema(tags=TAGS, request=ContentSerializer,
                   responses={200: DocumentSerializer, 400: InvalidDocumentSerializer, 404: NOT_FOUND},
                   description="Save a new revision.  A document with validation errors is not saved: the "
                               "400 carries the report.  The same content again makes no new revision.")
    def put(self, request, pk=None):
        body = ContentSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        self.target()  # 404 before anything is created
        report = saving_report(body.validated_data["content"])
        if not report.valid:
            return invalid_response(InvalidDocument(report))
        with transaction.atomic():
            doc = self.document(create=True)
            try:
                doc.save_content(body.validated_data["content"], author=_author(request))
            except InvalidDocument as exc:
                return invalid_response(exc)
        doc.refresh_from_db()
        return Response(DocumentSerializer.of(doc))


class RevisionListView(LevelMixin, APIView):
    @extend_schema(tags=TAGS, responses={200: RevisionSerializer(many=True), 404: NOT_FOUND})
    def get(self, request, pk=None):
        doc = self.document()
        revisions = doc.revisions.select_related("restored_from") if doc.pk else []
        return Response(RevisionSerializer(revisions, many=True).data)


class RevisionDetailView(LevelMixin, APIView):
    @extend_schema(tags=TAGS, responses={200: RevisionSerializer, 404: NOT_FOUND})
    def get(self, request, number, pk=None):
        return Response(RevisionSerializer(self.revision(self.document(), number)).data)


class RevisionRestoreView(LevelMixin, APIView):
    @extend_schema(tags=TAGS, request=None, responses={201: RevisionSerializer, 400: InvalidDocumentSerializer,
                                                       404: NOT_FOUND},
                   description="Make a new revision with the content of revision NUMBER.")
    def post(self, request, number, pk=None):
        doc = self.document()
        old = self.revision(doc, number)
        try:
            new = doc.restore(old, author=_author(request))
        except InvalidDocument as exc:  # the rules got stricter since
            return invalid_response(exc)
        return Response(RevisionSerializer(new).data, status=status.HTTP_201_CREATED)


class DiffView(LevelMixin, APIView):
    @extend_schema(tags=TAGS, responses={200: DiffSerializer, 404: NOT_FOUND}, parameters=[
        OpenApiParameter("from", int, description="old revision number (default: the one before `to`)"),
        OpenApiParameter("to", int, description="new revision number (default: the current one)")])
    def get(self, request, pk=None):
        doc = self.document()
        try:
            to_n = int(request.query_params.get("to") or doc.revision_number)
            from_q = request.query_params.get("from")
            from_n = int(from_q) if from_q not in (None, "") else None
        except ValueError:
            raise exceptions.ValidationError({"from": ["Revision numbers are integers."]}) from None
        new = self.revision(doc, to_n)
        old = self.revision(doc, from_n) if from_n is not None else new.previous()
        return Response({"from_revision": old.number if old else None, "to_revision": new.number,
                         "diff": doc.diff(old, new)})


class FetchUrlView(LevelMixin, APIView):
    """The level's secret fetch URL (kernel argument ``cloud-config-url=``, for hosts without the
    agent): read (masked), issue or rotate (admin; shown once, the old URL stops working at once),
    revoke (admin)."""

    write_role = Role.ADMIN

    @extend_schema(tags=TAGS, responses={200: FetchUrlInfoSerializer, 404: NOT_FOUND})
    def get(self, request, pk=None):
        url = FetchUrl.objects.active_for(self.target())
        if url is None:
            raise exceptions.NotFound("No cloud-config URL.")
        return Response(FetchUrlInfoSerializer(url).data)

    @extend_schema(tags=TAGS, request=None, responses={201: FetchUrlSerializer, 404: NOT_FOUND},
                   description="Issue or rotate the secret URL serving the document to hosts without the "
                               "agent (kernel argument cloud-config-url=).  Shown once, stored hashed; the "
                               "previous URL answers 404 from now on.")
    def post(self, request, pk=None):
        _, secret = FetchUrl.objects.rotate(self.target(), created_by=_author(request))
        return Response({"url": FetchUrl.url_for(secret)}, status=status.HTTP_201_CREATED)

    @extend_schema(tags=TAGS, request=None, responses={204: None, 404: NOT_FOUND},
                   description="Revoke the URL: it answers 404 from now on.")
    def delete(self, request, pk=None):
        if not FetchUrl.objects.revoke_for(self.target(), actor=_actor(request)):
            raise exceptions.NotFound("No cloud-config URL.")
        return Response(status=status.HTTP_204_NO_CONTENT)


class EffectiveView(LevelMixin, APIView):
    level = Level.HOST

    @extend_schema(tags=TAGS, responses={200: EffectiveSerializer, 404: NOT_FOUND},
                   description="The host's effective document (organization ⊕ group ⊕ host) and whether the "
                               "host applied it.")
    def get(self, request, pk=None):
        host = self.target()
        content, revision = CloudConfig.objects.effective_for_host(host)
        state = HostCloudConfigState.objects.filter(host=host).first()
        applied, errors = (state.applied_revision, state.errors) if state else (None, [])
        return Response({"content": cc.substitute(content, host_addresses(host)), "revision": revision,
                         "applied_revision": applied, "errors": errors,
                         "apply_state": compute_state(revision, applied, errors)})


class ValidateView(APIView):
    parser_classes = [JSONParser]

    @extend_schema(tags=TAGS, request=ContentSerializer, responses={200: ReportSerializer},
                   description="Validate as coreos-cloudinit --validate does; entries `line N: kind: message`.")
    def post(self, request):
        body = ContentSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return Response(cc.validate(body.validated_data["content"]).as_dict())

    def check_permissions(self, request):
        # Validating writes nothing: any member (a viewer too) may use it.
        if request.method == "POST" and getattr(request._request, "role", None):
            return
        super().check_permissions(request)


class CredentialRejected(exceptions.APIException):
    status_code = status.HTTP_401_UNAUTHORIZED
    default_detail = "invalid or revoked host credential"
    default_code = "unauthorized"


class AgentDocumentView(APIView):
    """The agent's own effective document (its credential is the authentication)."""

    authentication_classes: list = []
    permission_classes = [permissions.AllowAny]
    parser_classes = [JSONParser]

    def host(self, request) -> Host:
        header = request.headers.get("Authorization", "")
        secret = header[7:].strip() if header.startswith("Bearer ") else ""
        host = HostCredential.objects.authenticate(secret) if secret else None
        if host is None:
            raise CredentialRejected()
        return host

    def answer(self, host) -> Response:
        content, revision = CloudConfig.objects.effective_for_host(host)
        return Response({"content": cc.substitute(content, host_addresses(host)), "revision": revision})

    @extend_schema(operation_id="agents_cloud_config_retrieve", tags=["agents"], auth=[],
                   responses={200: AgentDocumentSerializer, 401: ErrorSerializer})
    def get(self, request):
        return self.answer(self.host(request))

    @extend_schema(operation_id="agents_cloud_config_fetch", tags=["agents"], auth=[],
                   request=AgentRequestSerializer, responses={200: AgentDocumentSerializer, 401: ErrorSerializer},
                   description="Report the host's addresses, then get the effective document with them substituted.")
    def post(self, request):
        host = self.host(request)
        body = AgentRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        addresses = dict(body.validated_data.get("addresses") or {})
        remote = client_address(request)
        if remote:
            import ipaddress

            ip = ipaddress.ip_address(remote)
            if ip.is_global:
                addresses.setdefault("public_ipv4" if ip.version == 4 else "public_ipv6", remote)
        HostCloudConfigState.objects.record_addresses(host.pk, addresses)
        return self.answer(host)


def _actor(request) -> str:
    return getattr(request.user, "username", None) or str(request.user)


def _author(request):
    user = request.user
    key = getattr(user, "key", None)
    return getattr(key, "created_by", None) or (user if getattr(user, "pk", None) else None)


def level_views(level: str) -> dict:
    """The view classes of one level (distinct classes, so the schema names them apart)."""
    names = {"document": DocumentView, "revisions": RevisionListView, "revision": RevisionDetailView,
             "restore": RevisionRestoreView, "diff": DiffView, "url": FetchUrlView}
    return {key: type(f"{level.title()}{base.__name__}", (base,), {"level": level}) for key, base in names.items()}
