"""Cluster configuration in etcd (issue 6 §5): a small access layer kept inside the organization's prefix.

Keys live under ``fleet/<org slug>/config/`` (organization scope) and
``fleet/<org slug>/config/groups/<group slug>/`` (group scope), so a host reading them with its
organization's etcd credentials (the reboots app provisions a role on ``fleet/<org slug>/``) sees
exactly what the dashboard shows.  Callers name keys *relative* to the scope; anything that could
leave it (``..``, ``.``, absolute paths, empty segments, control characters, the reserved
``_meta/`` and, at organization level, ``groups/``) is refused before etcd is asked.

A key is *marked JSON* by a metadata key ``<scope>_meta/<key>`` holding ``{"type": "json"}``; the
value and its marker are written in one transaction, and a marked key only ever stores valid JSON.

The client comes from agent/etcd.py (one factory for agent and server, DESIGN §5 pitfalls
handled there: ``time_retry=0``, ``call_credentials = None`` over plain HTTP, re-login on
"invalid auth token").
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import asdict, dataclass

from django.conf import settings

log = logging.getLogger(__name__)

META = "_meta"
GROUPS = "groups"
MAX_KEY = 512
MAX_VALUE = 1024 * 1024  # etcd's default request limit is 1.5 MiB
HISTORY_LIMIT = 50
SEGMENT = re.compile(r"^[A-Za-z0-9_.:@=+,~-]+$")


class EtcdError(Exception):
    """Something a caller can show: ``status`` is the HTTP answer, ``field`` the input to fix."""

    status = 400

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class KeyRefused(EtcdError):
    status = 400


class InvalidJSON(EtcdError):
    status = 400


class KeyNotFound(EtcdError):
    status = 404


class EtcdUnavailable(EtcdError):
    status = 503


# ---------------------------------------------------------------------------------------------
# Client factory
# ---------------------------------------------------------------------------------------------

def configured() -> bool:
    return bool(getattr(settings, "ETCD_ENDPOINTS", None))


def make_client(endpoints: list[str] | None = None, *, timeout: float | None = 5.0):
    """The shared client factory (agent/etcd.py: failover, ``time_retry=0``, TLS, auth re-login)
    configured from settings: ETCD_ENDPOINTS, and when present ETCD_USERNAME/ETCD_PASSWORD and
    ETCD_CA_FILE/ETCD_CERT_FILE/ETCD_KEY_FILE."""
    from agent.etcd import EtcdClient

    endpoints = list(endpoints if endpoints is not None else getattr(settings, "ETCD_ENDPOINTS", []))
    if not endpoints:
        raise EtcdUnavailable("etcd is not configured (ETCD_ENDPOINTS is empty).")
    return EtcdClient(endpoints, user=getattr(settings, "ETCD_USERNAME", None),
                      password=getattr(settings, "ETCD_PASSWORD", None), ca=getattr(settings, "ETCD_CA_FILE", None),
                      cert=getattr(settings, "ETCD_CERT_FILE", None), key=getattr(settings, "ETCD_KEY_FILE", None),
                      timeout=timeout)


def _describe(exc: Exception) -> str:
    details = getattr(exc, "details", None)
    try:
        text = details() if callable(details) else None
    except Exception:  # pragma: no cover
        text = None
    return text or str(exc) or type(exc).__name__


def client():
    """The process's server client: the one the reboots app keeps (root credentials, rebuilt when
    the settings change), so the server holds one connection to etcd, not one per app."""
    if not configured():
        raise EtcdUnavailable("etcd is not configured (ETCD_ENDPOINTS is empty).")
    from fleetweb.reboots.etcd import server_client

    return server_client()


def reset_client() -> None:
    from fleetweb.reboots.etcd import reset_client as reset

    reset()


def call(fn, *, etcd=None):
    """Run ``fn(client)`` and turn "etcd is not there" into EtcdUnavailable."""
    import grpc
    import pyetcd.exceptions as pe

    try:
        return fn(etcd or client())
    except EtcdError:
        raise
    except (pe.ConnectionFailedError, pe.ConnectionTimeoutError, pe.NoServerAvailableError) as exc:
        raise EtcdUnavailable(f"etcd is not reachable: {_describe(exc)}") from None
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise EtcdUnavailable(f"etcd is not reachable: {_describe(exc)}") from None
        raise


# ---------------------------------------------------------------------------------------------
# Scopes and keys
# ---------------------------------------------------------------------------------------------

def org_prefix(org_slug: str) -> str:
    return f"fleet/{org_slug}/"


def check_key(key: str, *, org_scope: bool) -> str:
    """The relative key, or KeyRefused saying why it could leave its scope."""
    if not isinstance(key, str) or not key:
        raise KeyRefused("A key is required.", "key")
    if len(key) > MAX_KEY:
        raise KeyRefused(f"Keys are at most {MAX_KEY} characters.", "key")
    if key.startswith("/"):
        raise KeyRefused("Keys are relative to the configuration prefix: no leading '/'.", "key")
    if key.endswith("/"):
        raise KeyRefused("A key cannot end with '/'.", "key")
    segments = key.split("/")
    for seg in segments:
        if seg in ("", ".", ".."):
            raise KeyRefused("Keys cannot contain empty, '.' or '..' segments.", "key")
        if not SEGMENT.match(seg):
            raise KeyRefused("Keys use letters, digits and _ . : @ = + , ~ - separated by '/'.", "key")
    if segments[0] == META:
        raise KeyRefused(f"'{META}/' is reserved for key metadata.", "key")
    if org_scope and segments[0] == GROUPS:
        raise KeyRefused("'groups/' holds the group configurations: edit them in the group's scope.", "key")
    return key


@dataclass
class Entry:
    key: str
    value: str
    json: bool
    create_revision: int
    mod_revision: int
    version: int
    etcd_key: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Revision:
    value: str | None
    mod_revision: int
    create_revision: int
    version: int

    def as_dict(self) -> dict:
        return asdict(self)


def _text(raw) -> str:
    return raw.decode("utf-8", errors="replace") if isinstance(raw, (bytes, bytearray)) else (raw or "")


class ConfigStore:
    """The configuration keys of one organization, or of one group inside it."""

    def __init__(self, org_slug: str, group_slug: str | None = None, *, etcd=None):
        if not org_slug or "/" in org_slug or not SEGMENT.match(org_slug):
            raise KeyRefused(f"Organization slug {org_slug!r} cannot name an etcd prefix.")
        if group_slug is not None and ("/" in group_slug or not SEGMENT.match(group_slug)):
            raise KeyRefused(f"Group slug {group_slug!r} cannot name an etcd prefix.")
        self.org_slug = org_slug
        self.group_slug = group_slug
        self._etcd = etcd

    @property
    def scope(self) -> str:
        return "group" if self.group_slug else "org"

    @property
    def base(self) -> str:
        root = f"{org_prefix(self.org_slug)}config/"
        return f"{root}{GROUPS}/{self.group_slug}/" if self.group_slug else root

    def etcd_key(self, key: str) -> str:
        full = self.base + check_key(key, org_scope=self.group_slug is None)
        assert full.startswith(self.base)  # check_key guarantees it; kept as the invariant
        return full

    def meta_key(self, key: str) -> str:
        return f"{self.base}{META}/{check_key(key, org_scope=self.group_slug is None)}"

    def _call(self, fn):
        return call(fn, etcd=self._etcd)

    # ---- reads

    def _marked(self, etcd) -> set[str]:
        meta = f"{self.base}{META}/"
        marked = set()
        for raw, m in etcd.call("get_prefix", meta):
            try:
                if json.loads(_text(raw)).get("type") == "json":
                    marked.add(_text(m.key)[len(meta):])
            except (ValueError, AttributeError):
                continue
        return marked

    def list(self) -> list[Entry]:
        def run(etcd):
            marked = self._marked(etcd)
            out = []
            for raw, m in etcd.call("get_prefix", self.base, sort_order="ascend"):
                rel = _text(m.key)[len(self.base):]
                first = rel.split("/", 1)[0]
                if first == META or (self.group_slug is None and first == GROUPS):
                    continue
                out.append(Entry(rel, _text(raw), rel in marked, m.create_revision, m.mod_revision, m.version,
                                 _text(m.key)))
            return out
        return self._call(run)

    def get(self, key: str) -> Entry:
        full, meta = self.etcd_key(key), self.meta_key(key)

        def run(etcd):
            raw, m = etcd.get(full)
            if m is None:
                raise KeyNotFound(f"No key {key!r} in this scope.", "key")
            mraw, _ = etcd.get(meta)
            return Entry(key, _text(raw), _is_json_marker(mraw), m.create_revision, m.mod_revision, m.version, full)
        return self._call(run)

    def is_json(self, key: str) -> bool:
        meta = self.meta_key(key)
        return self._call(lambda etcd: _is_json_marker(etcd.get(meta)[0]))

    # ---- writes

    def put(self, key: str, value: str, *, as_json: bool | None = None) -> Entry:
        """Write VALUE; AS_JSON marks (True), unmarks (False) or keeps (None) the JSON marker.
        A value that a JSON-marked key cannot hold raises InvalidJSON and writes nothing."""
        full, meta = self.etcd_key(key), self.meta_key(key)
        if not isinstance(value, str):
            raise EtcdError("The value must be a string.", "value")
        if len(value.encode()) > MAX_VALUE:
            raise EtcdError(f"Values are at most {MAX_VALUE} bytes.", "value")

        def run(etcd):
            marked = _is_json_marker(etcd.get(meta)[0]) if as_json is None else as_json
            if marked:
                validate_json(value)
            ops = [etcd.transactions.put(full, value)]
            if as_json is True:
                ops.append(etcd.transactions.put(meta, json.dumps({"type": "json"})))
            elif as_json is False:
                ops.append(etcd.transactions.delete(meta))
            etcd.transaction(compare=[], success=ops, failure=[])
            return self.get(key)
        return self._call(run)

    def delete(self, key: str) -> bool:
        full, meta = self.etcd_key(key), self.meta_key(key)

        def run(etcd):
            _, m = etcd.get(full)
            if m is None:
                raise KeyNotFound(f"No key {key!r} in this scope.", "key")
            etcd.transaction(compare=[], success=[etcd.transactions.delete(full), etcd.transactions.delete(meta)],
                             failure=[])
            return True
        return self._call(run)

    def history(self, key: str, limit: int = HISTORY_LIMIT) -> dict:
        """The key's revisions, newest first, walking ``mod_revision - 1`` until its creation or the
        compaction point.  ``compacted`` says older revisions were there but etcd dropped them."""
        full = self.etcd_key(key)

        def run(etcd):
            import grpc

            raw, m = etcd.get(full)
            if m is None:
                raise KeyNotFound(f"No key {key!r} in this scope.", "key")
            revisions = [Revision(_text(raw), m.mod_revision, m.create_revision, m.version)]
            compacted = False
            while len(revisions) < limit and revisions[-1].version > 1:
                try:
                    raw, m = etcd.get(full, revision=revisions[-1].mod_revision - 1)
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.OUT_OF_RANGE:  # "required revision has been compacted"
                        compacted = True
                        break
                    raise
                if m is None:
                    break
                revisions.append(Revision(_text(raw), m.mod_revision, m.create_revision, m.version))
            return {"key": key, "etcd_key": full, "revisions": [r.as_dict() for r in revisions],
                    "compacted": compacted, "truncated": len(revisions) >= limit and revisions[-1].version > 1}
        return self._call(run)


def _is_json_marker(raw) -> bool:
    if raw is None:
        return False
    try:
        return json.loads(_text(raw)).get("type") == "json"
    except (ValueError, AttributeError):
        return False


def validate_json(value: str) -> None:
    try:
        json.loads(value)
    except ValueError as exc:
        raise InvalidJSON(f"The key is marked JSON and the value is not valid JSON: {exc}.", "value") from None


# ---------------------------------------------------------------------------------------------
# Live: one watch per organization prefix and process, telling open dashboards what changed
# ---------------------------------------------------------------------------------------------

class ConfigWatch(threading.Thread):
    """Watches ``fleet/<org>/config/`` and sends ``{"kind": "etcd", ...}`` notices through
    fleetweb.core.live.to_ui.  Reconnects with capped backoff when etcd goes away."""

    def __init__(self, org_id: int, org_slug: str, *, notify=None, endpoints: list[str] | None = None):
        super().__init__(name=f"etcd-watch-{org_slug}", daemon=True)
        self.org_id = org_id
        self.org_slug = org_slug
        self.prefix = f"{org_prefix(org_slug)}config/"
        self.endpoints = endpoints
        self._notify = notify
        self._halt = threading.Event()
        self._cancel = None
        self.ready = threading.Event()

    def notify(self, payload: dict) -> None:
        if self._notify is not None:
            self._notify(self.org_id, payload)
        else:
            from fleetweb.core.live import to_ui

            to_ui(self.org_id, payload)

    def notice(self, etcd_key: str, kind: str, revision: int) -> dict:
        rel = etcd_key[len(self.prefix):]
        payload = {"kind": "etcd", "event": kind, "key": rel, "revision": revision, "scope": "org"}
        if rel.startswith(f"{GROUPS}/"):
            parts = rel.split("/", 2)
            payload.update(scope="group", group_slug=parts[1], key=parts[2] if len(parts) > 2 else "")
        return payload

    def run(self) -> None:
        delay = 1.0
        while not self._halt.is_set():
            etcd = None
            try:
                etcd = make_client(self.endpoints, timeout=None)
                events, self._cancel = etcd.client.watch_prefix(self.prefix)
                self.ready.set()
                delay = 1.0
                for response in events:
                    for event in getattr(response, "events", [response]):
                        kind = "delete" if type(event).__name__ == "DeleteEvent" else "put"
                        self.notify(self.notice(_text(event.key), kind, event.mod_revision))
                    if self._halt.is_set():
                        break
            except Exception as exc:
                if self._halt.is_set():
                    break
                log.warning("etcd watch on %s failed (%s); retrying in %.0f s", self.prefix, _describe(exc), delay)
            finally:
                if etcd is not None:
                    try:
                        etcd.close()
                    except Exception:
                        pass
            self._halt.wait(delay)
            delay = min(delay * 2, 30.0)

    def stop(self) -> None:
        self._halt.set()
        if self._cancel is not None:
            try:
                self._cancel()
            except Exception:
                pass


_watches: dict[int, ConfigWatch] = {}
_watches_lock = threading.Lock()


def ensure_watch(org_id: int, org_slug: str) -> ConfigWatch | None:
    """Start this process's watch on the organization's configuration (once); None without etcd."""
    if not configured():
        return None
    with _watches_lock:
        w = _watches.get(org_id)
        if w is None or not w.is_alive() or w.org_slug != org_slug:
            if w is not None:
                w.stop()
            w = _watches[org_id] = ConfigWatch(org_id, org_slug)
            w.start()
        return w


def stop_watches() -> None:
    with _watches_lock:
        for w in _watches.values():
            w.stop()
        _watches.clear()


def wait_until(predicate, timeout: float = 5.0) -> bool:  # small helper for tests and callers
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False
