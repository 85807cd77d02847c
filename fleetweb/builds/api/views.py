"""REST endpoints of image builds (DESIGN §3): ``builds/``, ``builds/{id}/`` + ``/cancel``,
``/publish``, ``/log``.  The rules are the models' (``ImageBuild.objects.request``, ``cancel``,
``publish``); a refusal becomes ``{"detail", "errors"}`` through ``fleetweb.core.api``."""
from __future__ import annotations

from django.db.models import Prefetch
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, renderers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from fleetweb.core.api import Conflict, ErrorSerializer
from fleetweb.tenancy.api.base import OrganizationScoped

from ..filtersets import ImageBuildFilterSet
from ..models import BuildArtifact, ImageBuild
from .serializers import ImageBuildCreateSerializer, ImageBuildSerializer, PublishedSerializer, PublishSerializer


def refused(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description)


class PlainTextRenderer(renderers.BaseRenderer):
    media_type = "text/plain"
    format = "txt"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data if isinstance(data, (str, bytes)) else str(data)


@extend_schema(tags=["builds"])
class ImageBuildViewSet(OrganizationScoped, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                        mixins.CreateModelMixin, viewsets.GenericViewSet):
    queryset = (ImageBuild.objects.select_related("release").defer("log")
                .prefetch_related(Prefetch("artifacts", queryset=BuildArtifact.objects.order_by("id"))))
    serializer_class = ImageBuildSerializer
    filterset_class = ImageBuildFilterSet
    lookup_value_converter = "int"

    @extend_schema(
        request=ImageBuildCreateSerializer,
        responses={202: ImageBuildSerializer,
                   400: refused("Bad version, unknown channel, no platform, an unknown or repeated platform; "
                                "nothing stored or queued")})
    def create(self, request, *args, **kwargs):
        """Queue a build of the default image for the given platforms (runs on the Celery workers)."""
        body = ImageBuildCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        build = ImageBuild.objects.request(request.organization, data["version"], data["channel"],
                                           data["platforms"], actor=self.actor)
        return Response(self.get_serializer(self.get_queryset().get(pk=build.pk)).data,
                        status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={200: ImageBuildSerializer,
                                            409: refused("The build already ended: `build is <status>`")})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Stop a queued or running build; running tools are killed within about a second."""
        build = self.get_object()
        if not build.cancel():
            build.refresh_from_db(fields=["status"])
            raise Conflict(f"build is {build.status}: cannot cancel")
        return Response(self.get_serializer(self.get_queryset().get(pk=build.pk)).data)

    @extend_schema(request=PublishSerializer,
                   responses={200: PublishedSerializer,
                              400: refused("Unknown channel"),
                              409: refused("Not succeeded, already published, the version already exists, or "
                                           "older than the channel's current release")})
    @action(detail=True, methods=["post"])
    def publish(self, request, pk=None):
        """Build → channel: make the build's update payload a signed release and publish it (starts rollouts)."""
        build = self.get_object()
        body = PublishSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        release, rollouts = build.publish(body.validated_data["channel"], self.actor)
        return Response({"build": self.get_serializer(self.get_queryset().get(pk=build.pk)).data,
                         "release": release.pk, "rollouts": [r.pk for r in rollouts]})

    @extend_schema(parameters=[OpenApiParameter("offset", int, description="Start at this byte of the log")],
                   responses={(200, "text/plain"): OpenApiTypes.STR})
    @action(detail=True, methods=["get"], renderer_classes=[PlainTextRenderer, renderers.JSONRenderer],
            filter_backends=[], pagination_class=None)
    def log(self, request, pk=None):
        """The whole build log as text (``X-Log-Offset``: the byte to ask from next time)."""
        build = self.get_object()
        try:
            offset = max(int(request.query_params.get("offset", 0)), 0)
        except ValueError:
            offset = 0
        text, end = build.read_log(offset)
        response = HttpResponse(text, content_type="text/plain; charset=utf-8")
        response["X-Log-Offset"] = str(end)
        return response
