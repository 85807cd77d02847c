"""The OpenAPI schema class of the API: every operation also documents the errors it can answer
with, in the one error shape (``fleetweb.core.api.ErrorSerializer``), so that a client (and the
schema fuzzer, tests/fleetweb/test_fuzz_api.py) finds every answer it can get in the schema.

An answer an operation documents itself (``extend_schema(responses=...)``) keeps its description."""
from __future__ import annotations

from drf_spectacular import openapi
from drf_spectacular.utils import OpenApiResponse

from .api import ErrorSerializer

SECURED = {
    "401": "No API key, or an invalid or revoked one",
    "403": "The key's role does not allow this",
    "429": "Too many invalid API keys from this address: wait (Retry-After) and check the key",
}
NOT_FOUND = "Not in your organization, or no such item"
NO_PAGE = "No such page"
BAD_INPUT = "Malformed input; nothing changed"
BODY = {
    "413": "The request body is over the limit of the route",
    "415": "The body's media type is not one the operation reads",
}


def error_responses(operation: dict) -> dict[str, str]:
    """The error answers of an operation, from its shape: code -> description."""
    parameters = operation.get("parameters", [])
    where = {p["in"] for p in parameters}
    codes = {}
    if any(operation.get("security", [])):
        codes.update(SECURED)
    if "path" in where:
        codes["404"] = NOT_FOUND
    elif any(p["in"] == "query" and p["name"] == "page" for p in parameters):
        codes["404"] = NO_PAGE
    if "query" in where or "requestBody" in operation:
        codes["400"] = BAD_INPUT
    if "requestBody" in operation:
        codes.update(BODY)
    return codes


class AutoSchema(openapi.AutoSchema):
    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        responses = operation["responses"]
        for code, description in error_responses(operation).items():
            if code not in responses:
                responses[code] = self._get_response_for_code(
                    OpenApiResponse(ErrorSerializer, description=description), code)
        operation["responses"] = dict(sorted(responses.items()))
        return operation
