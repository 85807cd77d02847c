"""The etcd discovery service (issue 6 §6), speaking what etcd 3.4's ``--discovery`` client sends
(etcdserver/api/v2discovery + the v2 ``client`` keys API), like discovery.etcd.io:

- ``GET /discovery/new?size=N`` (or ``size`` in a POST form) → ``text/plain`` token URL
  ``<FLEET_PUBLIC_URL>/discovery/<32 hex>``; N from 1 to 255 (upstream takes any integer).
- ``GET <token>/_config/size`` → ``{"action": "get", "node": {"key", "value": "N", ...}}``.
- ``GET <token>`` or ``GET <token>/`` (``recursive``, ``sorted``, ``quorum`` accepted) → the token
  directory: one node per member, each ``{"key", "value", "modifiedIndex", "createdIndex"}``.  The
  ``_config`` directory is hidden, as etcd v2 hides every key whose name starts with ``_`` from
  listings and recursive watches; ``<token>/_config/size`` is read by its own path.  etcd's client
  keeps a trailing slash of the discovery URL in the listing and the watch (and drops it elsewhere).
- ``PUT <token>/<member id>?prevExist=false`` with form ``value=<name>=<peer urls>`` → 201
  ``{"action": "create", "node": ...}``; a known id → 412 ``errorCode`` 105 "Key already exists".
  Members past the size are stored (etcd's client tells them the cluster is full), up to
  ``EXTRA_MEMBERS`` of them; then 412 ``errorCode`` 101 "cluster is full".
- ``GET <token>[/<id>]?wait=true&waitIndex=N[&recursive=true]`` → the first creation at index ≥ N
  under the key, held open (long poll) until one happens; after ``DISCOVERY_WAIT`` seconds an
  empty 200, which etcd's client answers by asking again with the same index.
- ``DELETE <token>/<member id>`` removes a member (replacing a dead machine, as upstream).

Every JSON answer carries ``X-Etcd-Index`` (the token's index); errors are v2 bodies
``{"errorCode", "message", "cause", "index"}``.  The wait is an async view polling the database
every 0.25 s, so a held request costs no worker thread's time and works across processes.

Who may create tokens (issue 9 §4): a request with an operator's API key (``Authorization: Bearer``,
authenticated by the API's own ``ApiKeyAuthentication``) creates a token owned by that organization.
A request carrying a dashboard session cookie is refused (403 ``session_not_accepted``): a link or an
image must not create tokens in a victim's organization; the dashboard creates them by POST with CSRF.
Anonymous creation, as with discovery.etcd.io, only when ``FLEET_DISCOVERY_ANONYMOUS`` is on (else 401
``anonymous_disabled``).  Tokens unused for ``FLEET_DISCOVERY_TOKEN_TTL`` answer 404 (and a beat task
deletes them); open watches are bounded per token (429) and per process (503).
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from contextlib import contextmanager

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpResponse, JsonResponse, QueryDict
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from fleetweb.core import ratelimit
from fleetweb.core.hub import hub
from fleetweb.tenancy import throttle
from fleetweb.tenancy.authentication import ApiKeyAuthentication
from fleetweb.tenancy.choices import Role

from .discovery_models import MAX_SIZE, DiscoveryError, DiscoveryMember, DiscoveryToken

TOKEN = r"[0-9a-f]{32}"
TOKEN_RE = re.compile(rf"^{TOKEN}$")
# The paths ``keys`` serves: etcd's client (GET, also ?wait=true; PUT; DELETE). The ASGI router sends
# them past the middleware chain, since a watch waits (fleetweb.asgi.WaitingViewHandler).
KEYS_PATH = re.compile(rf"^/discovery/{TOKEN}(/|$)")
MEMBER_RE = re.compile(r"^[0-9A-Za-z]{1,32}$")


def wait_seconds() -> float:
    return float(getattr(settings, "DISCOVERY_WAIT", 50.0))


def token_url(token: str) -> str:
    return f"{settings.FLEET_PUBLIC_URL}/discovery/{token}"


# ---------------------------------------------------------------------------------------------
# v2 keys API shapes
# ---------------------------------------------------------------------------------------------

def _answer(body: dict | None, index: int, status: int = 200) -> HttpResponse:
    resp = HttpResponse(b"" if body is None else json.dumps(body).encode(), status=status,
                        content_type="application/json")
    resp["X-Etcd-Index"] = str(index)
    return resp


def _error(code: int, message: str, cause: str, index: int, status: int) -> HttpResponse:
    return _answer(DiscoveryError(code, message, cause, index, status).as_dict(), index, status)


def _not_found(cause: str, index: int = 0) -> HttpResponse:
    return _error(100, "Key not found", cause, index, 404)


def member_node(token: DiscoveryToken, m: DiscoveryMember) -> dict:
    return {"key": f"/{token.token}/{m.member_id}", "value": m.value,
            "modifiedIndex": m.created_index, "createdIndex": m.created_index}


def size_node(token: DiscoveryToken) -> dict:
    return {"key": f"/{token.token}/_config/size", "value": str(token.size), "modifiedIndex": 1, "createdIndex": 1}


def config_node(token: DiscoveryToken, recursive: bool) -> dict:
    node = {"key": f"/{token.token}/_config", "dir": True, "modifiedIndex": 1, "createdIndex": 1}
    if recursive:
        node["nodes"] = [size_node(token)]
    return node


def token_node(token: DiscoveryToken, members) -> dict:
    """The token's directory as a listing shows it: its members; ``_config`` is hidden.  Without
    members there is no ``nodes`` key, as etcd v2 writes an empty directory."""
    node = {"key": f"/{token.token}", "dir": True, "modifiedIndex": 1, "createdIndex": 1}
    if members:
        node["nodes"] = [member_node(token, m) for m in members]
    return node


def _flag(request, name: str) -> bool:
    return request.GET.get(name, "").lower() == "true"


# ---------------------------------------------------------------------------------------------
# /discovery/new
# ---------------------------------------------------------------------------------------------

def _refusal(code: str, detail: str, status: int) -> JsonResponse:
    return JsonResponse({"code": code, "detail": detail}, status=status)


@csrf_exempt  # no session is accepted here, so there is nothing to forge
@never_cache
def new(request):
    if request.method not in ("GET", "POST", "PUT"):
        return HttpResponse("method not allowed\n", status=405, content_type="text/plain")
    raw = request.GET.get("size") or (request.POST.get("size") if request.method == "POST" else None) or "3"
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if not 1 <= size <= MAX_SIZE:
        return HttpResponse(f"size must be an integer between 1 and {MAX_SIZE}\n", status=400,
                            content_type="text/plain")
    try:
        auth = ApiKeyAuthentication().authenticate(Request(request))
    except AuthenticationFailed as exc:
        return _refusal("invalid_api_key", str(exc.detail), 401)
    except throttle.ApiKeyThrottled as exc:
        return _refusal("throttled", str(exc.detail), 429)
    if auth is not None:
        key = auth[1]
        if not Role.at_least(key.role, Role.OPERATOR):
            return _refusal("permission_denied", "Creating a discovery token needs the operator role.", 403)
        org, user = key.organization, key.created_by
    elif settings.SESSION_COOKIE_NAME in request.COOKIES:
        return _refusal("session_not_accepted", "A dashboard session cannot create discovery tokens here: "
                        "use the Discovery page's form, or an API key (Authorization: Bearer).", 403)
    elif not settings.FLEET_DISCOVERY_ANONYMOUS:
        return _refusal("anonymous_disabled", "Anonymous discovery tokens are disabled: send an operator's "
                        "API key (Authorization: Bearer).", 401)
    elif DiscoveryToken.objects.live().filter(organization__isnull=True).count() \
            >= settings.FLEET_DISCOVERY_ANONYMOUS_MAX_TOKENS:
        return _refusal("anonymous_tokens_exhausted", "Too many anonymous discovery tokens exist; use an API key "
                        "or retry when unused ones have expired.", 429)
    elif not ratelimit.hit(settings.FLEET_DISCOVERY_ANONYMOUS_RATE, "discovery-new",
                           request.META.get("REMOTE_ADDR", "")):
        return _refusal("rate_limited", f"Too many anonymous discovery tokens from this address "
                        f"(limit {settings.FLEET_DISCOVERY_ANONYMOUS_RATE}); use an API key.", 429)
    else:
        org, user = None, None
    token = DiscoveryToken.objects.issue(size, organization=org,
                                         created_by=user if getattr(user, "pk", None) else None)
    return HttpResponse(token_url(token.token), content_type="text/plain")


# ---------------------------------------------------------------------------------------------
# /discovery/<token>[/<key>]
# ---------------------------------------------------------------------------------------------

def _live(token: str):
    """The token, unless unknown or expired (unused for FLEET_DISCOVERY_TOKEN_TTL); records the use."""
    t = DiscoveryToken.objects.live().filter(token=token).first()
    if t is not None:
        t.touch()
    return t


def _load(token: str):
    t = _live(token)
    return (t, list(t.members.all())) if t else (None, [])


# Open watches of this process, per token (FLEET_DISCOVERY_WATCHES_PER_TOKEN / _PER_PROCESS).
_watches: Counter = Counter()


class WatchRefused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@contextmanager
def watch_slot(token_str: str):
    """Hold one watch slot of TOKEN_STR; WatchRefused (429 per token, 503 per process) when full.
    The event loop is single-threaded, so the check and the increment need no lock."""
    if sum(_watches.values()) >= settings.FLEET_DISCOVERY_WATCHES_PER_PROCESS:
        raise WatchRefused(503, "too many open watches on this server")
    if _watches[token_str] >= settings.FLEET_DISCOVERY_WATCHES_PER_TOKEN:
        raise WatchRefused(429, "too many open watches on this token")
    _watches[token_str] += 1
    try:
        yield
    finally:
        _watches[token_str] -= 1
        if _watches[token_str] <= 0:
            del _watches[token_str]


def _events(token: DiscoveryToken, members, key: str, recursive: bool, wait_index: int):
    """The first creation at index >= WAIT_INDEX that concerns KEY (v2 watch semantics: a
    recursive watch does not report a key hidden below it, one with a path segment after KEY that
    starts with ``_``, such as ``_config/size`` under the token; a watch of that key itself does)."""
    events = [(1, "_config/size", size_node(token))] + [(m.created_index, m.member_id, member_node(token, m))
                                                       for m in members]
    for index, name, node in sorted(events, key=lambda e: e[0]):
        if index < wait_index:
            continue
        below = name if key == "" else name[len(key) + 1:] if name.startswith(key + "/") else None
        if name == key or (recursive and below is not None
                           and not any(part.startswith("_") for part in below.split("/"))):
            return {"action": "create", "node": node}
    return None


async def _wait(request, token_str: str, key: str) -> HttpResponse:
    try:
        with watch_slot(token_str):
            return await _watch(request, token_str, key)
    except WatchRefused as exc:
        return _error(300, "Raft Internal Error", str(exc), 0, exc.status)


async def _watch(request, token_str: str, key: str) -> HttpResponse:
    recursive = _flag(request, "recursive")
    token, members = await sync_to_async(_load)(token_str)
    if token is None:
        return _not_found(f"/{token_str}")
    try:
        # waitIndex=0 is no index (etcd's client sends it for "from now"): the next change.
        wait_index = int(request.GET.get("waitIndex") or 0) or token.index + 1
    except ValueError:
        return _error(203, "The given index in POST form is not a number", "Watch", token.index, 400)
    deadline = time.monotonic() + wait_seconds()
    # Woken through the hub when the token changes (a registration or a removal, in any process);
    # a slow recheck (FLEET_DISCOVERY_WATCH_RECHECK) covers a wake-up lost on the way.
    changed, loop = asyncio.Event(), asyncio.get_running_loop()

    async def wake(_text: str) -> None:
        loop.call_soon_threadsafe(changed.set)  # the hub may deliver from another loop (tests' threads)

    watch_key = token.watch_key
    await hub.join(watch_key, wake)
    try:
        while True:
            found = _events(token, members, key, recursive, wait_index)
            if found is not None:
                return _answer(found, token.index)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _answer(None, token.index)  # empty body: the client asks again with the same index
            try:
                await asyncio.wait_for(changed.wait(),
                                       timeout=min(remaining, settings.FLEET_DISCOVERY_WATCH_RECHECK))
            except asyncio.TimeoutError:
                if time.monotonic() >= deadline:
                    return _answer(None, token.index)
            changed.clear()
            token, members = await sync_to_async(_load)(token_str)
            if token is None:
                return _not_found(f"/{token_str}")
    finally:
        hub.leave(watch_key, wake)


def _get(request, token_str: str, key: str) -> HttpResponse:
    token, members = _load(token_str)
    if token is None:
        return _not_found(f"/{token_str}")
    if key == "":
        return _answer({"action": "get", "node": token_node(token, members)}, token.index)
    if key == "_config":
        return _answer({"action": "get", "node": config_node(token, True)}, token.index)
    if key == "_config/size":
        return _answer({"action": "get", "node": size_node(token)}, token.index)
    for m in members:
        if m.member_id == key:
            return _answer({"action": "get", "node": member_node(token, m)}, token.index)
    return _not_found(f"/{token.token}/{key}", token.index)


def _put(request, token_str: str, key: str) -> HttpResponse:
    token = _live(token_str)
    if token is None:
        return _not_found(f"/{token_str}")
    if key == "" or key.startswith("_config"):
        return _error(107, "Root is read only", f"/{token.token}/{key}".rstrip("/"), token.index, 403)
    if not MEMBER_RE.match(key):
        return _error(200, "Member ids are up to 32 letters and digits", f"/{token.token}/{key}", token.index, 400)
    form = QueryDict(request.body or b"", encoding="utf-8")
    value = form.get("value", request.GET.get("value"))
    if value is None or len(value) > 4096:
        return _error(201, "Value is Required in POST form", "Update", token.index, 400)
    try:
        member = token.register(key, value)
    except DiscoveryError as exc:
        return _answer(exc.as_dict(), exc.index, exc.status)
    return _answer({"action": "create", "node": member_node(token, member)}, token.index, 201)


def _delete(request, token_str: str, key: str) -> HttpResponse:
    token = _live(token_str)
    if token is None:
        return _not_found(f"/{token_str}")
    member = token.members.filter(member_id=key).first() if key and not key.startswith("_config") else None
    if member is None:
        return _not_found(f"/{token.token}/{key}", token.index)
    node = member_node(token, member)
    token.remove(key)
    token.refresh_from_db(fields=["index"])
    return _answer({"action": "delete", "node": {"key": node["key"], "modifiedIndex": token.index,
                                                 "createdIndex": node["createdIndex"]}, "prevNode": node},
                   token.index)


@csrf_exempt
@never_cache
async def keys(request, token: str, key: str = ""):
    key = key.strip("/")
    if not TOKEN_RE.match(token):
        return _not_found(f"/{token}")
    if request.method in ("GET", "HEAD"):
        if _flag(request, "wait"):
            return await _wait(request, token, key)
        return await sync_to_async(_get)(request, token, key)
    if request.method == "PUT":
        return await sync_to_async(_put)(request, token, key)
    if request.method == "DELETE":
        return await sync_to_async(_delete)(request, token, key)
    resp = _error(405, "Method not allowed", request.method, 0, 405)
    resp["Allow"] = "GET, PUT, DELETE"
    return resp
