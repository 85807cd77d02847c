from __future__ import annotations

from django.utils.deprecation import MiddlewareMixin

from .models import Membership


class OrganizationMiddleware(MiddlewareMixin):
    """Sets request.organization and request.role for logged-in users (session picks the org)."""

    def process_request(self, request) -> None:
        request.organization = None
        request.role = None
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            qs = Membership.objects.select_related("organization").filter(user=user)
            org_id = request.session.get("organization_id")
            m = (qs.filter(organization_id=org_id).first() if org_id else None) or qs.order_by("id").first()
            if m is not None:
                request.organization = m.organization
                request.role = m.role
