"""The one place that turns a request into a ConfigStore: ``scope=org`` (default) or
``scope=group&group=<id>`` with the group looked up inside the request's organization (another
organization's group is simply not found).  Shared by the REST API and the dashboard."""
from __future__ import annotations

from django.http import Http404

from fleetweb.fleet.models import Group

from .etcd import ConfigStore, EtcdError


class ScopeError(EtcdError):
    status = 400


def store_for(request, params) -> tuple[ConfigStore, Group | None]:
    org = request.organization
    scope = (params.get("scope") or ("group" if params.get("group") else "org")).strip()
    if scope == "org":
        return ConfigStore(org.slug), None
    if scope != "group":
        raise ScopeError("scope is 'org' or 'group'.", "scope")
    raw = params.get("group") or ""
    if not str(raw).isdigit():
        raise ScopeError("scope=group needs group=<id>.", "group")
    group = Group.objects.filter(organization=org, pk=int(raw)).first()
    if group is None:
        raise Http404("No such group.")
    return ConfigStore(org.slug, group.slug), group
