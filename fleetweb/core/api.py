"""Shared API plumbing: pagination and the one mapping of errors to 4xx bodies.

Every 4xx body is ``{"detail": "...", "errors": {field: [...]}}``.
"""
from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from django.views import defaults
from rest_framework import exceptions, serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from agent import cloudconfig as cc
from fleetweb.updates.models import UpdateError


class ErrorSerializer(serializers.Serializer):
    """The shape of every 4xx body (``exception_handler`` below)."""

    detail = serializers.CharField()
    errors = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))
    code = serializers.CharField(required=False)


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state."
    default_code = "conflict"


class Refused(exceptions.APIException):
    """A domain rule said no: ``detail`` says why, ``errors`` names the input to fix."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "refused"

    def __init__(self, detail: str, field: str | None = None, status_code: int = status.HTTP_400_BAD_REQUEST):
        super().__init__(detail)
        self.status_code = status_code
        self.errors = {field: [detail]} if field else {}


class DocumentTooLarge(exceptions.APIException):
    """A merged cloud-config document over its budget (issue 9 §5): refused, not served."""

    status_code = status.HTTP_409_CONFLICT
    default_code = "document_too_large"


def _flatten(detail) -> dict:
    if isinstance(detail, dict):
        return {k: [str(x) for x in (v if isinstance(v, list) else [v])] for k, v in detail.items()}
    if isinstance(detail, list):
        return {"non_field_errors": [str(x) for x in detail]}
    return {}


def exception_handler(exc, context):
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    if isinstance(exc, UpdateError):
        exc = Refused(exc.message, exc.field, exc.status)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("Not found.")
    if isinstance(exc, cc.TooLarge):
        exc = DocumentTooLarge(str(exc))
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    data = response.data
    if isinstance(exc, exceptions.ValidationError):
        errors = _flatten(data)
        first = next(iter(errors.items()), None)
        detail = f"{first[0]}: {first[1][0]}" if first and first[0] != "non_field_errors" else (
            first[1][0] if first else "Invalid input.")
        body = {"detail": detail, "errors": errors}
    else:
        detail = data.get("detail") if isinstance(data, dict) else data
        body = {"detail": str(detail), "errors": getattr(exc, "errors", {})}
        code = getattr(exc, "code", None) or (getattr(exc, "get_codes", lambda: None)())
        if isinstance(code, str):
            body["code"] = code
    return Response(body, status=response.status_code, headers=getattr(response, "headers", None) and {
        k: v for k, v in response.headers.items() if k.lower() in ("www-authenticate", "retry-after")})


def not_found(request, exception=None):
    """``handler404``: a URL under /api/ that no route matches answers in the error shape above,
    as the API's own 404s do; elsewhere Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found.", "errors": {}, "code": "not_found"}, status=404)
    return defaults.page_not_found(request, exception)
