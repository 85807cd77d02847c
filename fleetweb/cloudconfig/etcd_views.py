"""Dashboard "Cluster config": browse, edit and see the history of the organization's (or a
group's) keys in etcd.  Rules live in fleetweb/cloudconfig/etcd.py; the scope comes from
etcd_scope.store_for, as in the API.  Opening the page starts this process's etcd watch on the
organization's prefix, so the key list refreshes live (``{"kind": "etcd"}`` notices)."""
from __future__ import annotations

from urllib.parse import urlencode

from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from fleetweb.core.htmx import template_for
from fleetweb.core.views import can_operate, member_required, require_operator
from fleetweb.fleet.models import Group

from .etcd import EtcdError, EtcdUnavailable, configured, ensure_watch
from .etcd_scope import store_for

INVALID = 422


def _page_url(store, group, key: str | None = None) -> str:
    params = {"scope": store.scope}
    if group is not None:
        params["group"] = group.pk
    if key:
        params["key"] = key
    return f"{reverse('cluster-config')}?{urlencode(params)}"


def _context(request, params, **extra) -> dict:
    context = {"nav": "cluster-config", "can_operate": can_operate(request), "configured": configured(),
               "groups": Group.objects.filter(organization=request.organization).only("id", "name", "slug"),
               "entries": [], "selected": None, "history": None, "error": None, "form": {}}
    if not context["configured"]:
        context.update(extra)
        return context
    store, group = store_for(request, params)
    context.update(store=store, group=group, scope=store.scope, prefix=store.base,
                   list_url=_page_url(store, group))
    key = params.get("key") or ""
    try:
        context["entries"] = store.list()
        if key and not extra.get("form"):
            try:
                context["selected"] = store.get(key)
                context["history"] = store.history(key)
            except EtcdError as exc:
                if isinstance(exc, EtcdUnavailable):
                    raise
                context["error"] = exc.message
    except EtcdUnavailable as exc:
        context["unavailable"] = exc.message
    sel = context["selected"]
    context["form"] = {"key": sel.key, "value": sel.value, "json": sel.json} if sel else {"key": key, "value": "",
                                                                                          "json": False}
    context.update(extra)
    return context


@never_cache
@member_required
def cluster_config(request):
    if configured():
        ensure_watch(request.organization.pk, request.organization.slug)
    try:
        context = _context(request, request.GET)
    except EtcdError as exc:  # a bad scope in the query string
        context = _context(request, {}, error=exc.message)
    return render(request, template_for(request, "cloudconfig/etcd_config.html", "htmx/cloudconfig/etcd_keys.html"),
                  context)


def _write(request, action):
    require_operator(request)
    store, group = store_for(request, request.POST)
    try:
        key = action(store)
    except EtcdError as exc:
        form = {"key": request.POST.get("key", ""), "value": request.POST.get("value", ""),
                "json": request.POST.get("json") == "on"}
        context = _context(request, request.POST, error=exc.message, error_field=exc.field, form=form)
        return render(request, "cloudconfig/etcd_config.html", context, status=exc.status if exc.status != 400
                      else INVALID)
    return redirect(_page_url(store, group, key))


@require_POST
@member_required
def cluster_config_save(request):
    def save(store):
        entry = store.put(request.POST.get("key", "").strip(), request.POST.get("value", "").replace("\r\n", "\n"),
                          as_json=request.POST.get("json") == "on")
        return entry.key
    return _write(request, save)


@require_POST
@member_required
def cluster_config_delete(request):
    def delete(store):
        store.delete(request.POST.get("key", ""))
        return None
    return _write(request, delete)
