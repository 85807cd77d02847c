from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from agent.locksmith import LockError
from fleetweb.core.api import ErrorSerializer, Refused
from fleetweb.fleet.models import Group
from fleetweb.tenancy.api.base import OrganizationScoped
from fleetweb.tenancy.choices import Role

from .. import etcd
from ..models import FleetLockSecret, GroupLock, lock_error_status
from .serializers import (
    FleetLockRotatedSerializer,
    FleetLockUrlSerializer,
    LockSerializer,
    SetMaxSerializer,
    UnlockSerializer,
)

UNAVAILABLE = OpenApiResponse(ErrorSerializer, description="etcd is not configured or does not answer")
GROUP_ID = OpenApiParameter("group_id", int, OpenApiParameter.PATH)  # the list has no group_id in its path


def _lock_call(fn, *args, **kwargs):
    """Run a semaphore write; map "no etcd" and LockError once (503 / 409 / 400)."""
    if not etcd.configured():
        raise Refused(str(etcd.EtcdNotConfigured()), status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
    try:
        return fn(*args, **kwargs)
    except LockError as exc:
        raise Refused(str(exc), status_code=lock_error_status(exc)) from None


@extend_schema(tags=["locks"])
class LockViewSet(OrganizationScoped, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The reboot semaphore of each group: max, free slots, holders (host, since, stuck)."""

    queryset = Group.objects.select_related("organization").order_by("name", "id")
    serializer_class = LockSerializer
    lookup_url_kwarg = "group_id"
    lookup_value_converter = "int"
    write_roles = {"unlock": Role.ADMIN, "set_max": Role.ADMIN}

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.get_queryset())
        data = LockSerializer([GroupLock(g).state() for g in page], many=True).data
        return self.get_paginated_response(data)

    @extend_schema(parameters=[GROUP_ID])
    def retrieve(self, request, *args, **kwargs):
        return Response(LockSerializer(GroupLock(self.get_object()).state()).data)

    @extend_schema(parameters=[GROUP_ID], request=UnlockSerializer, responses={200: LockSerializer, 503: UNAVAILABLE,
                                                        403: OpenApiResponse(ErrorSerializer, description="not admin")})
    @action(detail=True, methods=["post"])
    def unlock(self, request, group_id=None):
        group = self.get_object()
        body = UnlockSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        state = _lock_call(GroupLock(group).unlock, body.validated_data["holder"], actor=self.actor)
        return Response(LockSerializer(state).data)

    @extend_schema(parameters=[GROUP_ID], request=SetMaxSerializer, responses={200: LockSerializer, 503: UNAVAILABLE,
                                                        403: OpenApiResponse(ErrorSerializer, description="not admin")})
    @action(detail=True, methods=["post"], url_path="set-max")
    def set_max(self, request, group_id=None):
        group = self.get_object()
        body = SetMaxSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        state = _lock_call(GroupLock(group).set_max, body.validated_data["max"], actor=self.actor)
        return Response(LockSerializer(state).data)


NO_URL = OpenApiResponse(ErrorSerializer, description="The organization has no FleetLock URL")


@extend_schema(tags=["locks"])
class FleetLockUrlView(APIView):
    """The organization's FleetLock URL (Zincati's ``fleet_lock.base_url``): read (masked), issue or
    rotate (admin; shown once, the old URL stops working at once), revoke (admin)."""

    write_role = Role.ADMIN

    @property
    def actor(self) -> str:
        return getattr(self.request.user, "username", None) or str(self.request.user)

    @extend_schema(responses={200: FleetLockUrlSerializer, 404: NO_URL})
    def get(self, request):
        current = FleetLockSecret.objects.filter(organization=request.organization).first()
        if current is None:
            raise exceptions.NotFound("The organization has no FleetLock URL.")
        return Response(FleetLockUrlSerializer(current).data)

    @extend_schema(request=None, responses={201: FleetLockRotatedSerializer})
    def post(self, request):
        _, secret = FleetLockSecret.objects.rotate(request.organization, actor=self.actor)
        return Response({"url": FleetLockSecret.base_url(secret), "zincati_config": FleetLockSecret.zincati_config(secret)},
                        status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={204: None, 404: NO_URL})
    def delete(self, request):
        if not FleetLockSecret.objects.revoke(request.organization, actor=self.actor):
            raise exceptions.NotFound("The organization has no FleetLock URL.")
        return Response(status=status.HTTP_204_NO_CONTENT)
