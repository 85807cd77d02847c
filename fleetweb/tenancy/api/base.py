"""API plumbing every app shares: the organization scope and the router."""
from __future__ import annotations

from rest_framework import routers


class Router(routers.SimpleRouter):
    """Collections and items end with a slash (``hosts/``, ``hosts/{id}/``); actions do not
    (``tokens/{id}/revoke``), as DESIGN §3 spells them."""

    routes = [
        route._replace(url=route.url.replace("{trailing_slash}", ""))
        if isinstance(route, routers.DynamicRoute) else route
        for route in routers.SimpleRouter.routes
    ]

    def __init__(self):
        super().__init__(trailing_slash=True, use_regex_path=False)


class OrganizationScoped:
    """Every queryset of a viewset goes through the organization of the request.

    ``request.organization`` is set by the API-key authentication or the session middleware;
    another organization's ids are simply not in the queryset, so they answer 404.
    """

    organization_field = "organization"

    def scope(self, queryset):
        # Schema generation runs views without an organization: an empty queryset, not an error.
        return queryset.filter(**{self.organization_field: getattr(self.request, "organization", None)})

    def get_queryset(self):
        return self.scope(super().get_queryset())

    @property
    def actor(self) -> str:
        user = self.request.user
        return getattr(user, "username", None) or str(user)
