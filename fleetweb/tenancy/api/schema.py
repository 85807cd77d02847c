"""OpenAPI description of our authentication (drf-spectacular finds it by the class path)."""
from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "fleetweb.tenancy.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "fwk_…",
                "description": "An API key of the organization: `Authorization: Bearer fwk_…`"}
