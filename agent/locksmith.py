"""The reboot semaphore in etcd, locksmith's layout and JSON (DESIGN §4), spoken over etcd v3.

The one implementation: the agent, ``agent lock …`` and the server (locks page/API, FleetLock,
set-max when a group's max changes) all use :class:`Locksmith`.  Dependency-light: it needs an
etcd v3 client with pyetcd's ``get``/``transaction``/``transactions`` API (a pyetcd client or
:class:`agent.etcd.EtcdClient`), nothing else.

Key: ``coreos.com/updateengine/rebootlock/semaphore``; per group
``coreos.com/updateengine/rebootlock/groups/<QueryEscape(group)>/semaphore``; an organization's
keys sit under its prefix ``fleet/<org slug>/``.  Value: ``{"semaphore": free, "max": N,
"holders": [ids]}`` (``holders`` may be ``null`` when read; written sorted).

Semantics (locksmith's, made idempotent the way an operator expects):

* lock: a holder that already holds it succeeds (recursive, also when no slot is free: a host that
  crashed after a write it never saw acknowledged must not lock itself out); otherwise fails with
  ``no_slots`` when ``semaphore <= 0``.
* unlock: a non-holder succeeds and nothing changes.
* set-max N: ``semaphore += N - max``; ``max = N`` (``semaphore`` may go negative when N drops
  below the number of holders; slots come back as they unlock).

Every write is a compare-and-swap transaction on the key's mod revision (create: version == 0);
a lost race re-reads (the failure branch of the transaction returns the current value) and tries
again.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from urllib.parse import quote_plus

GLOBAL_KEY = "coreos.com/updateengine/rebootlock/semaphore"
GROUPS_PREFIX = "coreos.com/updateengine/rebootlock/groups/"

NO_SLOTS = "no_slots"
ETCD_UNAVAILABLE = "etcd_unavailable"
CONFLICT = "conflict"
INVALID = "invalid"
CODES = (NO_SLOTS, ETCD_UNAVAILABLE, CONFLICT, INVALID)

MAX_CAS_ATTEMPTS = 64


def query_escape(text: str) -> str:
    """Go's ``url.QueryEscape``: keeps ``A-Za-z0-9-_.~``, space → ``+``, the rest ``%XX`` (upper hex)."""
    return quote_plus(text, safe="")


def group_key(group: str | None, prefix: str = "") -> str:
    """The semaphore key of GROUP (None or "": the global key), under PREFIX (e.g. ``fleet/acme/``)."""
    if not group:
        return prefix + GLOBAL_KEY
    return f"{prefix}{GROUPS_PREFIX}{query_escape(group)}/semaphore"


class LockError(Exception):
    """A semaphore operation that did not happen.  ``code`` is one of :data:`CODES`."""

    def __init__(self, code: str, message: str, semaphore: Semaphore | None = None):
        assert code in CODES, code
        super().__init__(message)
        self.code = code
        self.semaphore = semaphore

    @property
    def holders(self) -> list[str]:
        return list(self.semaphore.holders) if self.semaphore else []


@dataclass
class Semaphore:
    semaphore: int
    max: int
    holders: list[str] = field(default_factory=list)

    @classmethod
    def new(cls, n: int) -> Semaphore:
        return cls(semaphore=n, max=n, holders=[])

    @classmethod
    def from_json(cls, raw: bytes | str) -> Semaphore:
        """Read a semaphore value as locksmith's own reader (Go's encoding/json) does: keys match
        whatever their case, a missing ``semaphore`` or ``max`` is 0, a missing or null ``holders``
        is none, and ``null`` is an empty semaphore; a value of the wrong type is refused."""
        try:
            data = json.loads(raw)
            if data is None:
                data = {}
            if not isinstance(data, dict):
                raise ValueError("not an object")
            fields = {k.lower(): v for k, v in data.items()}
            sem, mx, holders = fields.get("semaphore", 0), fields.get("max", 0), fields.get("holders")
            if holders is None:
                holders = []
            if not (isinstance(sem, int) and isinstance(mx, int) and isinstance(holders, list)
                    and all(isinstance(h, str) for h in holders)) or isinstance(sem, bool) or isinstance(mx, bool):
                raise ValueError("wrong types")
        except (ValueError, TypeError) as exc:
            raise LockError(INVALID, f"the semaphore value is not locksmith JSON ({exc}): {raw[:200]!r}") from None
        return cls(semaphore=sem, max=mx, holders=list(holders))

    def to_json(self) -> str:
        return json.dumps({"semaphore": self.semaphore, "max": self.max, "holders": sorted(self.holders)},
                          separators=(",", ":"))

    @property
    def free(self) -> int:
        return max(self.semaphore, 0)

    # -- pure transitions (return a new Semaphore, or raise) --------------------------------------
    def locked(self, holder: str) -> Semaphore:
        if holder in self.holders:
            return self
        if self.semaphore <= 0:
            raise LockError(NO_SLOTS, f"semaphore is at {self.semaphore}: no free slot "
                                      f"(max {self.max}, held by {', '.join(sorted(self.holders)) or 'nobody'})",
                            self)
        return Semaphore(self.semaphore - 1, self.max, sorted([*self.holders, holder]))

    def unlocked(self, holder: str) -> Semaphore:
        if holder not in self.holders:
            return self
        return Semaphore(self.semaphore + 1, self.max, sorted(h for h in self.holders if h != holder))

    def with_max(self, n: int) -> Semaphore:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise LockError(INVALID, f"max must be an integer >= 0, not {n!r}")
        return Semaphore(self.semaphore + n - self.max, n, sorted(self.holders))


def _validate_holder(holder: str) -> str:
    if not isinstance(holder, str) or not holder.strip():
        raise LockError(INVALID, "a holder id must be a non-empty string (the machine id)")
    return holder.strip()


def _transient_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError, OSError]
    try:
        import grpc
        errors.append(grpc.RpcError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from pyetcd import exceptions as pe
        errors.append(pe.Etcd3Exception)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


class Locksmith:
    """The semaphore of one group (or the global one) in one etcd."""

    def __init__(self, client, group: str | None = None, prefix: str = "", default_max: int = 1):
        if default_max < 0:
            raise LockError(INVALID, f"max must be >= 0, not {default_max}")
        self.client = client
        self.group = group or None
        self.prefix = prefix or ""
        self.default_max = default_max
        self.key = group_key(self.group, self.prefix)
        self._transient = _transient_errors()

    # -- etcd access ------------------------------------------------------------------------------
    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LockError:
            raise
        except self._transient as exc:
            detail = _describe(exc)
            raise LockError(ETCD_UNAVAILABLE, f"etcd did not answer for {self.key}: {detail}") from exc

    def _read(self) -> tuple[Semaphore | None, int]:
        value, meta = self._call(self.client.get, self.key)
        if value is None:
            return None, 0
        return Semaphore.from_json(value), meta.mod_revision

    def _create(self) -> tuple[bool, Semaphore | None, int]:
        """Create the key with max=default_max; returns (created, current, mod revision)."""
        tx = self.client.transactions
        sem = Semaphore.new(self.default_max)
        ok, responses = self._call(self.client.transaction,
                                   compare=[tx.version(self.key) == 0],
                                   success=[tx.put(self.key, sem.to_json())],
                                   failure=[tx.get(self.key)])
        if ok:
            return True, sem, responses[0].response_put.header.revision
        current, rev = _from_range(responses)
        return False, current, rev

    def _current(self) -> tuple[Semaphore, int]:
        sem, rev = self._read()
        while sem is None:
            created, sem, rev = self._create()
        return sem, rev

    def _update(self, change) -> tuple[Semaphore, Semaphore]:
        """Apply CHANGE (Semaphore -> Semaphore, may raise LockError) with CAS retries; returns the
        semaphore it changed and the one it wrote (the same one when nothing changed)."""
        sem, rev = self._current()
        tx = self.client.transactions
        for attempt in range(MAX_CAS_ATTEMPTS):
            new = change(sem)
            if new is sem or new == sem:
                return sem, sem
            ok, responses = self._call(self.client.transaction,
                                       compare=[tx.mod(self.key) == rev],
                                       success=[tx.put(self.key, new.to_json())],
                                       failure=[tx.get(self.key)])
            if ok:
                return sem, new
            current, rev = _from_range(responses)
            if current is None:            # deleted under us: recreate and go on
                sem, rev = self._current()
            else:
                sem = current
            if attempt >= 4:
                time.sleep(random.uniform(0, 0.002 * attempt))
        raise LockError(CONFLICT, f"gave up after {MAX_CAS_ATTEMPTS} conflicting writes to {self.key}")

    # -- the API ----------------------------------------------------------------------------------
    def get(self) -> Semaphore:
        """The semaphore (created with max=default_max when missing)."""
        return self._current()[0]

    def lock(self, holder: str) -> Semaphore:
        holder = _validate_holder(holder)
        return self._update(lambda s: s.locked(holder))[1]

    def unlock(self, holder: str) -> Semaphore:
        holder = _validate_holder(holder)
        return self._update(lambda s: s.unlocked(holder))[1]

    def set_max(self, n: int) -> tuple[Semaphore, Semaphore]:
        """locksmith's set-max; returns (the semaphore before, after), the old one read in the same
        compare-and-swap as the change (``locksmithctl set-max`` prints both maxima)."""
        Semaphore.new(0).with_max(n)  # refused before any read: not a count of hosts
        return self._update(lambda s: s.with_max(n))

    def holders(self) -> list[str]:
        return sorted(self.get().holders)


def _from_range(responses) -> tuple[Semaphore | None, int]:
    kvs = responses[0] if responses else []
    if not kvs:
        return None, 0
    value, meta = kvs[0]
    return Semaphore.from_json(value), meta.mod_revision


def _describe(exc: BaseException) -> str:
    """One line naming the cause.  pyetcd wraps gRPC errors in bare exceptions
    (``ConnectionFailedError()``): the detail (e.g. a TLS certificate failure) is on the cause."""
    seen: set[int] = set()
    outer = str(exc) or type(exc).__name__
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        details = getattr(exc, "details", None)
        if callable(details):
            try:
                text = details()
            except Exception:  # pragma: no cover
                text = None
            if text:
                return text if str(text) in outer else f"{outer}: {text}"
        exc = exc.__cause__ or exc.__context__
    return outer
