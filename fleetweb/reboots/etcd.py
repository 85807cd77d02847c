"""The server's side of etcd: its one client (built by ``agent.etcd.make_client``), the organization
prefix, and the auth administration that provisions one user + role per organization.

pyetcd has no helpers for etcd's Auth service, so the few calls we need go to its gRPC stub with
the client's own token (``metadata``) and call credentials.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from django.conf import settings

from agent.etcd import make_client

log = logging.getLogger(__name__)

# A web request must not hang on a dead etcd: the client tries each endpoint once within this.
SERVER_TIMEOUT = 3.0

_lock = threading.Lock()
_client = None
_client_config = None


class EtcdNotConfigured(Exception):
    """No ETCD_ENDPOINTS: locks, FleetLock and provisioning cannot work."""

    def __init__(self):
        super().__init__("etcd is not configured on this server: set ETCD_ENDPOINTS "
                         "(and ETCD_USERNAME/ETCD_PASSWORD when etcd has auth enabled).")


class EtcdAuthDisabled(Exception):
    """etcd runs without auth (no ETCD_USERNAME): there are no per-host users to rotate."""

    code = "etcd_auth_disabled"

    def __init__(self):
        super().__init__("etcd runs without authentication on this server: hosts have no etcd users, "
                         "and tenants are not isolated in etcd (set ETCD_USERNAME/ETCD_PASSWORD).")


ISOLATION_OFF_MESSAGE = ("etcd runs without authentication: tenants are not isolated in etcd (any host can "
                         "read and change every organization's locks and configuration). Development only.")


def auth_enabled() -> bool:
    """The server logs in to etcd, so hosts get their own least-privilege users (issue 9 §8)."""
    return configured() and bool(settings.ETCD_USERNAME)


class EtcdAdminError(Exception):
    """An Auth call etcd refused or could not answer; ``message`` says which and why."""


def configured() -> bool:
    return bool(settings.ETCD_ENDPOINTS)


def org_prefix(organization) -> str:
    """Everything an organization owns in etcd lives under this prefix (DESIGN §3)."""
    return f"fleet/{organization.slug}/"


def tls_kwargs() -> dict:
    return {"ca": settings.ETCD_CA_FILE, "cert": settings.ETCD_CERT_FILE, "key": settings.ETCD_KEY_FILE}


def server_client():
    """The process's etcd client with the server's (root) credentials; rebuilt if settings change."""
    global _client, _client_config
    if not configured():
        raise EtcdNotConfigured()
    config = (tuple(settings.ETCD_ENDPOINTS), settings.ETCD_USERNAME, settings.ETCD_PASSWORD,
              *tls_kwargs().values())
    with _lock:
        if _client is None or _client_config != config:
            if _client is not None:
                _client.close()
            _client = make_client(settings.ETCD_ENDPOINTS, user=settings.ETCD_USERNAME,
                                  password=settings.ETCD_PASSWORD, timeout=SERVER_TIMEOUT, **tls_kwargs())
            _client_config = config
        return _client


def client_for(username: str, password: str, endpoints=None):
    """A client with an organization's credentials (tests, diagnostics)."""
    return make_client(endpoints or settings.ETCD_ENDPOINTS, user=username, password=password,
                       timeout=SERVER_TIMEOUT, **tls_kwargs())


def reset_client() -> None:
    global _client, _client_config
    with _lock:
        if _client is not None:
            _client.close()
        _client, _client_config = None, None


def ca_pem() -> str | None:
    return Path(settings.ETCD_CA_FILE).read_text() if settings.ETCD_CA_FILE else None


# ---------------------------------------------------------------------------------------------
# Auth administration
# ---------------------------------------------------------------------------------------------

def _auth(client, method: str, request):
    """Call the Auth service; returns the response or None when the object already exists."""
    import grpc

    raw = client.client  # the pyetcd client under agent.etcd's wrapper (token already obtained)
    try:
        return getattr(raw.authstub, method)(request, client.timeout, credentials=raw.call_credentials,
                                             metadata=raw.metadata)
    except grpc.RpcError as exc:
        details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
        if "already exists" in (details or ""):
            return None
        raise EtcdAdminError(f"etcd refused {method}: {details}") from exc


def prefix_range_end(prefix: str) -> bytes:
    from pyetcd.utils import prefix_range_end as end

    return end(prefix.encode())


def ensure_user(client, name: str, password: str, role: str, prefix: str) -> None:
    """Idempotently: role ROLE with readwrite on PREFIX only, user NAME with PASSWORD and that role."""
    from pyetcd import etcdrpc
    from pyetcd.etcdrpc import auth_pb2

    _auth(client, "RoleAdd", etcdrpc.AuthRoleAddRequest(name=role))
    perm = auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=prefix.encode(),
                               range_end=prefix_range_end(prefix))
    _auth(client, "RoleGrantPermission", etcdrpc.AuthRoleGrantPermissionRequest(name=role, perm=perm))
    if _auth(client, "UserAdd", etcdrpc.AuthUserAddRequest(name=name, password=password)) is None:
        # The user existed (a re-provision, or a restored database): make the password ours.
        _auth(client, "UserChangePassword", etcdrpc.AuthUserChangePasswordRequest(name=name, password=password))
    _auth(client, "UserGrantRole", etcdrpc.AuthUserGrantRoleRequest(user=name, role=role))


def role_permissions(client, role: str) -> list[tuple[str, bytes, bytes]]:
    from pyetcd import etcdrpc

    resp = _auth(client, "RoleGet", etcdrpc.AuthRoleGetRequest(role=role))
    return [(p.permType, p.key, p.range_end) for p in resp.perm] if resp else []


def enable_auth(endpoints, username: str, password: str) -> bool:
    """Create the root user (and USERNAME with the root role), then turn auth on.

    Runs against an etcd without auth; on one that already has it, it is a no-op that returns False.
    """
    from pyetcd import etcdrpc

    plain = make_client(endpoints, timeout=SERVER_TIMEOUT, **tls_kwargs())
    try:
        try:
            for name in dict.fromkeys(["root", username]):
                if _auth(plain, "UserAdd", etcdrpc.AuthUserAddRequest(name=name, password=password)) is None:
                    _auth(plain, "UserChangePassword",
                          etcdrpc.AuthUserChangePasswordRequest(name=name, password=password))
                _auth(plain, "UserGrantRole", etcdrpc.AuthUserGrantRoleRequest(user=name, role="root"))
            _auth(plain, "AuthEnable", etcdrpc.AuthEnableRequest())
        except EtcdAdminError as exc:
            if "user name is empty" in str(exc) or "permission denied" in str(exc).lower() \
                    or "token" in str(exc).lower():
                return False  # auth is already on: the unauthenticated client may not do this
            raise
        return True
    finally:
        plain.close()


# ---------------------------------------------------------------------------------------------
# Per-host users (issue 9 §8): least privilege
# ---------------------------------------------------------------------------------------------

def host_permissions(host) -> list[tuple[int, bytes, bytes]]:
    """What a host's etcd role may touch: ``(permType, key, range_end)``.

    Read-write on its group's semaphore key only (locksmith's layout under the organization's
    prefix); read on the organization-level cluster-configuration keys (``config/`` without
    ``config/groups/``) and on its own group's (``config/groups/<slug>/``).  Nothing else: not
    another group's semaphore, not another group's configuration, not the organization's config
    for writing.
    """
    from pyetcd.etcdrpc import auth_pb2

    from agent.locksmith import group_key

    prefix = org_prefix(host.organization)
    config = f"{prefix}config/"
    groups = f"{config}groups/"
    read, readwrite = auth_pb2.Permission.READ, auth_pb2.Permission.READWRITE
    return [
        (readwrite, group_key(host.group.slug, prefix).encode(), b""),
        (read, config.encode(), groups.encode()),                       # org-level keys before groups/
        (read, prefix_range_end(groups), prefix_range_end(config)),     # org-level keys after groups/
        (read, f"{groups}{host.group.slug}/".encode(), prefix_range_end(f"{groups}{host.group.slug}/")),
    ]


def ensure_role_user(client, name: str, password: str, role: str, perms) -> None:
    """Idempotently: ROLE with exactly PERMS (a re-provision drops stale grants, e.g. after a group
    move), user NAME with PASSWORD holding that role only."""
    from pyetcd import etcdrpc
    from pyetcd.etcdrpc import auth_pb2

    if _role_exists(client, role):
        _auth(client, "RoleDelete", etcdrpc.AuthRoleDeleteRequest(role=role))
    _auth(client, "RoleAdd", etcdrpc.AuthRoleAddRequest(name=role))
    for perm_type, key, range_end in perms:
        perm = auth_pb2.Permission(permType=perm_type, key=key, range_end=range_end)
        _auth(client, "RoleGrantPermission", etcdrpc.AuthRoleGrantPermissionRequest(name=role, perm=perm))
    if _auth(client, "UserAdd", etcdrpc.AuthUserAddRequest(name=name, password=password)) is None:
        _auth(client, "UserChangePassword", etcdrpc.AuthUserChangePasswordRequest(name=name, password=password))
    _auth(client, "UserGrantRole", etcdrpc.AuthUserGrantRoleRequest(user=name, role=role))


def _role_exists(client, role: str) -> bool:
    from pyetcd import etcdrpc

    try:
        return _auth(client, "RoleGet", etcdrpc.AuthRoleGetRequest(role=role)) is not None
    except EtcdAdminError:
        return False


def delete_user(client, name: str, role: str) -> None:
    """Remove user NAME and ROLE; a user or role already gone is fine."""
    from pyetcd import etcdrpc

    for method, request in (("UserDelete", etcdrpc.AuthUserDeleteRequest(name=name)),
                            ("RoleDelete", etcdrpc.AuthRoleDeleteRequest(role=role))):
        try:
            _auth(client, method, request)
        except EtcdAdminError as exc:
            if "not found" not in str(exc):
                raise


def list_users(client) -> list[str]:
    from pyetcd import etcdrpc

    resp = _auth(client, "UserList", etcdrpc.AuthUserListRequest())
    return list(resp.users) if resp else []
