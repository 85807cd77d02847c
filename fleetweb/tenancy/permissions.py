from __future__ import annotations

from rest_framework import permissions

from .choices import Role


class OrganizationRolePermission(permissions.BasePermission):
    """Read needs any role in the organization; writes need ``view.write_role`` (operator)."""

    message = "Your role does not allow this action."

    def has_permission(self, request, view) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        org = getattr(request._request, "organization", None)
        role = getattr(request._request, "role", None)
        if org is None or role is None:
            return False
        if request.method in permissions.SAFE_METHODS:
            return True
        needed = getattr(view, "write_roles", {}).get(getattr(view, "action", None)) or \
            getattr(view, "write_role", Role.OPERATOR)
        return Role.at_least(role, needed)
