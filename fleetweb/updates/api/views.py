"""REST endpoints of the update rules: releases, channels (publish / promote / rollback), rollouts
(pause / resume / abort), the signing key, Omaha URLs and Omaha application ids.  The rules are the models'
(``Release.objects.create_from_upload``, ``Channel.publish/promote/rollback``, ``Rollout.pause/...``);
an ``UpdateError`` they raise becomes its status with ``{"detail", "errors"}`` (``fleetweb.core.api``)."""
from __future__ import annotations

from django.db.models import Count, Prefetch
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, generics, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from fleetweb.core.api import Conflict, ErrorSerializer, Refused
from fleetweb.fleet.models import Group
from fleetweb.tenancy.api.base import OrganizationScoped
from fleetweb.tenancy.choices import Role

from ..filtersets import ReleaseFilterSet, RolloutFilterSet, RolloutHostFilterSet
from ..models import Channel, ChannelRelease, OmahaApplication, OmahaUrl, Release, Rollout, RolloutHost, SigningKey
from .serializers import (
    ChannelActionSerializer,
    ChannelSerializer,
    OmahaApplicationSerializer,
    OmahaUrlIssuedSerializer,
    OmahaUrlSerializer,
    PromoteSerializer,
    ReleaseChoiceSerializer,
    ReleaseDetailSerializer,
    ReleaseSerializer,
    ReleaseUploadSerializer,
    RolloutHostSerializer,
    RolloutSerializer,
    SigningKeySerializer,
    annotate_counts,
)

HISTORY_LENGTH = 20


def refused(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description)


# ---------------------------------------------------------------------------------------------
# Releases
# ---------------------------------------------------------------------------------------------

@extend_schema(tags=["releases"])
class ReleaseViewSet(OrganizationScoped, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                     mixins.CreateModelMixin, viewsets.GenericViewSet):
    queryset = (Release.objects.select_related("signing_key")
                .prefetch_related(Prefetch("current_on", queryset=Channel.objects.order_by("position"))))
    serializer_class = ReleaseSerializer
    filterset_class = ReleaseFilterSet
    lookup_value_converter = "int"
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.action == "retrieve":
            queryset = queryset.prefetch_related(Prefetch(
                "rollouts", queryset=Rollout.objects.select_related("group", "channel").order_by("-created", "-id")))
        return queryset

    def get_serializer_class(self):
        return ReleaseDetailSerializer if self.action == "retrieve" else ReleaseSerializer

    @extend_schema(
        request={"multipart/form-data": ReleaseUploadSerializer},
        responses={201: ReleaseSerializer,
                   400: refused("Bad version, size or sha256 not matching the payload, empty or missing payload; "
                                "nothing stored"),
                   409: refused("The version already exists; nothing stored")},
    )
    def create(self, request, *args, **kwargs):
        body = ReleaseUploadSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        release = Release.objects.create_from_upload(
            request.organization, data["version"], data["payload"], size=data.get("size"), sha256=data.get("sha256"),
            notes=data["notes"], actor=self.actor)
        return Response(ReleaseSerializer(self.get_queryset().get(pk=release.pk)).data,
                        status=status.HTTP_201_CREATED)


# ---------------------------------------------------------------------------------------------
# Channels
# ---------------------------------------------------------------------------------------------

CHANNEL_REFUSALS = {
    400: refused("Malformed body, or an action the channel cannot take (promote to alpha, roll back to a "
                 "release it never had)"),
    404: refused("Unknown channel, or a release of another organization"),
    409: refused("Refused in this state: already current, older than the current release (use rollback), "
                 "nothing to promote, or the release halted on the source channel"),
}


@extend_schema(tags=["channels"])
class ChannelViewSet(OrganizationScoped, viewsets.ReadOnlyModelViewSet):
    queryset = (Channel.objects.select_related("current_release")
                .annotate(groups_count=Count("groups"))
                .prefetch_related(Prefetch(
                    "history", to_attr="recent_history",
                    queryset=ChannelRelease.objects.select_related("release", "previous")
                    .order_by("-created", "-id")[:HISTORY_LENGTH]))
                .order_by("position"))
    serializer_class = ChannelSerializer
    lookup_field = "name"

    def _release(self, request) -> Release:
        body = ReleaseChoiceSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        release = Release.objects.filter(organization=request.organization, pk=body.validated_data["release"]).first()
        if release is None:
            raise Refused("Unknown release.", "release", status.HTTP_404_NOT_FOUND)
        return release

    def _started(self, channel, rollouts) -> Response:
        channel = self.get_queryset().get(pk=channel.pk)  # with its new current release and history
        return Response({"channel": self.get_serializer(channel).data, "rollouts": [r.pk for r in rollouts]})

    @extend_schema(request=ReleaseChoiceSerializer, responses={200: ChannelActionSerializer, **CHANNEL_REFUSALS})
    @action(detail=True, methods=["post"])
    def publish(self, request, name=None):
        """Put a release on the channel; starts a rollout for every group following it."""
        channel = self.get_object()
        return self._started(channel, channel.publish(self._release(request), self.actor))

    @extend_schema(request=PromoteSerializer,
                   responses={200: ChannelActionSerializer, **CHANNEL_REFUSALS,
                              403: refused("override needs the admin role")})
    @action(detail=True, methods=["post"])
    def promote(self, request, name=None):
        """Take the release of the channel before this one (alpha → beta → stable)."""
        channel = self.get_object()
        body = PromoteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        override = body.validated_data["override"]
        if override and not Role.at_least(request.role, Role.ADMIN):
            raise exceptions.PermissionDenied("Overriding a failed rollout needs the admin role.")
        return self._started(channel, channel.promote(self.actor, override=override))

    @extend_schema(request=ReleaseChoiceSerializer, responses={200: ChannelActionSerializer, **CHANNEL_REFUSALS})
    @action(detail=True, methods=["post"])
    def rollback(self, request, name=None):
        """Explicitly go back to a release the channel carried before (hosts may downgrade)."""
        channel = self.get_object()
        return self._started(channel, channel.rollback(self._release(request), self.actor))


# ---------------------------------------------------------------------------------------------
# Rollouts
# ---------------------------------------------------------------------------------------------

ROLLOUT_REFUSED = {409: refused("The rollout's status does not allow it: `rollout is <status>: cannot <action>`")}


@extend_schema(tags=["rollouts"])
class RolloutViewSet(OrganizationScoped, viewsets.ReadOnlyModelViewSet):
    queryset = Rollout.objects.select_related("group", "channel", "release")
    serializer_class = RolloutSerializer
    filterset_class = RolloutFilterSet
    lookup_value_converter = "int"

    def get_queryset(self):
        # Meta.ordering does not apply to aggregating queries
        return annotate_counts(super().get_queryset()).order_by("-created", "-id")

    def _transition(self, name: str) -> Response:
        rollout = self.get_object()
        if not getattr(rollout, name)(actor=self.actor):
            rollout.refresh_from_db(fields=["status"])
            raise Conflict(f"rollout is {rollout.status}: cannot {name}")
        return Response(self.get_serializer(self.get_queryset().get(pk=rollout.pk)).data)

    @extend_schema(request=None, responses={200: RolloutSerializer, **ROLLOUT_REFUSED})
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        """Stop granting hosts (hosts already updating finish)."""
        return self._transition("pause")

    @extend_schema(request=None, responses={200: RolloutSerializer, **ROLLOUT_REFUSED})
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        """Resume a paused or halted rollout."""
        return self._transition("resume")

    @extend_schema(request=None, responses={200: RolloutSerializer, **ROLLOUT_REFUSED})
    @action(detail=True, methods=["post"])
    def abort(self, request, pk=None):
        """End the rollout for good; no more hosts are granted."""
        return self._transition("abort")


@extend_schema(tags=["rollouts"], parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH)])
class RolloutHostListView(OrganizationScoped, generics.ListAPIView):
    """The hosts of a rollout with their state, progress and error (``rollouts/{id}/hosts``)."""

    queryset = RolloutHost.objects.select_related("host").order_by("host__hostname", "id")
    serializer_class = RolloutHostSerializer
    filterset_class = RolloutHostFilterSet
    organization_field = "rollout__organization"

    def get_queryset(self):
        rollout = generics.get_object_or_404(Rollout.objects.filter(
            organization=getattr(self.request, "organization", None)), pk=self.kwargs["id"])
        return super().get_queryset().filter(rollout=rollout)


# ---------------------------------------------------------------------------------------------
# Signing key
# ---------------------------------------------------------------------------------------------

@extend_schema(tags=["signing-key"])
class SigningKeyView(APIView):
    """The organization's active release signing key (the private half never leaves the server)."""

    @extend_schema(responses={200: SigningKeySerializer, 404: refused("No signing key yet")})
    def get(self, request):
        key = SigningKey.objects.active(request.organization)
        if key is None:
            raise exceptions.NotFound("The organization has no signing key yet.")
        return Response(SigningKeySerializer(key).data)


@extend_schema(tags=["signing-key"])
class SigningKeyRotateView(APIView):
    """Retire the active key and make a new one (admin); releases made afterwards use the new key."""

    write_role = Role.ADMIN

    @extend_schema(request=None, responses={200: SigningKeySerializer})
    def post(self, request):
        actor = getattr(request.user, "username", None) or str(request.user)
        return Response(SigningKeySerializer(SigningKey.objects.rotate(request.organization, actor=actor)).data)


# ---------------------------------------------------------------------------------------------
# Omaha URLs
# ---------------------------------------------------------------------------------------------

@extend_schema(tags=["omaha"], parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH)])
class GroupOmahaUrlView(APIView):
    """A group's Omaha URL (update_engine's ``SERVER=``): read (masked), issue or rotate (admin;
    the URL is shown once, the old one stops working), revoke (admin)."""

    write_role = Role.ADMIN

    def group(self, request, id):
        group = Group.objects.select_related("channel").filter(
            organization=getattr(request, "organization", None), pk=id).first()
        if group is None:
            raise exceptions.NotFound("No such group.")
        return group

    @property
    def actor(self) -> str:
        return getattr(self.request.user, "username", None) or str(self.request.user)

    @extend_schema(responses={200: OmahaUrlSerializer, 404: refused("No such group, or no Omaha URL")})
    def get(self, request, id):
        url = OmahaUrl.objects.filter(group=self.group(request, id)).first()
        if url is None:
            raise exceptions.NotFound("The group has no Omaha URL.")
        return Response(OmahaUrlSerializer(url).data)

    @extend_schema(request=None, responses={201: OmahaUrlIssuedSerializer, 404: refused("No such group")})
    def post(self, request, id):
        group = self.group(request, id)
        _, secret = OmahaUrl.objects.rotate(group, actor=self.actor)
        return Response({"url": OmahaUrl.url(secret), "update_conf": OmahaUrl.update_conf(secret, group)},
                        status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={204: None, 404: refused("No such group, or no Omaha URL")})
    def delete(self, request, id):
        if not OmahaUrl.objects.revoke(self.group(request, id), actor=self.actor):
            raise exceptions.NotFound("The group has no Omaha URL.")
        return Response(status=status.HTTP_204_NO_CONTENT)


# ---------------------------------------------------------------------------------------------
# Omaha application ids
# ---------------------------------------------------------------------------------------------

@extend_schema(tags=["omaha"])
class OmahaApplicationViewSet(OrganizationScoped, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                              mixins.CreateModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """Omaha application ids the organization serves besides the OS's own
    (``{e96281a6-d1af-4bde-9a0a-97b76e56dc57}``, always served): requests naming one get the same OS
    updates.  An appid the organization does not serve is answered ``error-unknownApplication`` and
    changes nothing.  Operators add and remove them; viewers list them."""

    queryset = OmahaApplication.objects.all()
    serializer_class = OmahaApplicationSerializer
    lookup_value_converter = "int"

    @extend_schema(responses={201: OmahaApplicationSerializer,
                              400: refused("Not a GUID (with or without one pair of braces); nothing stored"),
                              409: refused("The OS's own appid (always served), or one the organization "
                                           "already serves; nothing stored")})
    def create(self, request, *args, **kwargs):
        body = self.get_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        app = OmahaApplication.objects.add(request.organization, body.validated_data["appid"],
                                           body.validated_data["label"], actor=self.actor)
        return Response(self.get_serializer(app).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        OmahaApplication.objects.remove(instance, actor=self.actor)
