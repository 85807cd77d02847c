"""Group commit for agent heartbeats.

Every `status` frame is persisted, but one UPDATE per frame would cap a process at a few hundred
frames per second.  Frames that arrive within one tick (50 ms) are merged per connection and
written with one ``executemany`` UPDATE in one transaction (Django's ``bulk_update`` spends most of
its time building CASE expressions: measured 40x slower for 1,000 rows).  The update progress a
status frame carries (DOWNLOADING 40 %, VERIFYING, ...) moves the host's rollout entry in the same
transaction: during a rollout every agent reports progress several times a second.

Pending frames are keyed by (host, connection) and each row is conditioned on the host's current
connection id, so a frame from a socket that a reconnect replaced never overwrites fresher state,
not even while both wait in the same tick (a rebooting host's old socket can still be draining
queued frames when the new one has reported the boot).

``submit`` does not wait for the write: a consumer that awaited every write stopped reading its
socket while a large batch ran, and at 10,000 agents missed uvicorn's keepalive pings.  ``flush``
waits until one connection's frames are written (a disconnect flushes before it marks the host
offline; an event is applied only after the status the host sent before it).
"""
from __future__ import annotations

import asyncio
import logging
import time

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, close_old_connections, connection, transaction
from django.utils import timezone

from agent.protocol import POLICY_TIMEOUT
from fleetweb.core import bulk

log = logging.getLogger(__name__)

# The columns a submitted frame may set; each frame sets those it carries (a pong: last_seen, online).
FIELDS = ("last_seen", "update_status", "version", "partitions", "status_seq", "online")
# Keys of a submitted frame's fields that are not columns: ``rollout_report`` and ``reconcile``.


# How often the writers' thread checks its database connection (close_old_connections(): CONN_MAX_AGE,
# and a ``SELECT 1`` health check before the next statement).  Channels' database_sync_to_async does
# it twice per call: a round trip and an eighth of the thread's time per batch, at 20 batches a second.
HEALTH_CHECK_EVERY = 1.0
_checked_at = float("-inf")


def _write_with_a_live_connection(write, batch):
    """Run a batch write; a connection that died since the last check (PostgreSQL restarted, the
    backend terminated) fails it once, and it runs again on a new connection.  Each write is one
    transaction, rolled back when it fails, and writes the same values when it runs again."""
    global _checked_at
    now = time.monotonic()
    if now - _checked_at >= HEALTH_CHECK_EVERY:
        _checked_at = now
        close_old_connections()
    try:
        return write(batch)
    except (OperationalError, InterfaceError) as exc:
        log.warning("batch write failed (%s); once more on a new database connection", exc)
        connection.close()
        return write(batch)


def on_db_thread(write):
    """``write(batch)`` as a coroutine on the thread every database call of the agent sockets runs
    on (asgiref's shared thread: it keeps one connection)."""
    return lambda batch: _run_on_db_thread(write, batch)


_run_on_db_thread = sync_to_async(_write_with_a_live_connection, thread_sensitive=True)


class TickWriter:
    """Merge what arrives within one tick per connection and write it in one transaction.

    ``_write`` gets ``{(host_id, connection_id): fields}``; a later frame's fields update an earlier
    one's within the tick (so a key only some frames carry survives a frame without it)."""

    def __init__(self, tick: float = 0.05):
        self.tick = tick
        self._pending: dict = {}
        self._writing: dict = {}
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._written: asyncio.Event | None = None
        self.errors = 0

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use in this process (or a new loop in tests)
            self._loop, self._task, self._pending, self._writing = loop, None, {}, {}
            self._written = asyncio.Event()
        return loop

    async def submit(self, host_id, connection_id, fields: dict) -> None:
        loop = self._bind()
        key = (host_id, connection_id)
        earlier = self._pending.get(key)
        self._pending[key] = {**earlier, **fields} if earlier else fields
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())

    async def flush(self, host_id=None, connection_id=None) -> None:
        """Wait until what one connection submitted so far is written (everything, without arguments)."""
        self._bind()
        key = (host_id, connection_id)

        def waiting() -> bool:
            if host_id is not None:  # other hosts may keep the writer busy for ever: wait for this one only
                return key in self._pending or key in self._writing
            return bool(self._pending) or (self._task is not None and not self._task.done())

        while waiting():
            self._written.clear()
            await self._written.wait()

    async def _run(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(self.tick)
                batch, self._pending = self._pending, {}
                self._writing = batch
                try:
                    results = await on_db_thread(self._write)(batch)
                except Exception:  # keep the sockets; the next frame of each host retries
                    self.errors += 1
                    log.exception("status write of %d hosts failed", len(batch))
                else:
                    self._deliver(results or {})
                self._writing = {}
                self._written.set()
        finally:
            self._writing = {}
            self._written.set()

    def _deliver(self, results: dict) -> None:
        """What ``_write`` returned for some connections, handed to their listeners (in the loop)."""

    @staticmethod
    def _write(batch: dict) -> dict | None:
        raise NotImplementedError


class StatusWriter(TickWriter):
    """Status frames and pongs: the host's fields, plus ``rollout_report`` (rollout id, agent update
    status, progress) when the frame reports an update in progress.

    A heartbeat that asks for reconciliation (``reconcile`` in its fields) gets, after the write,
    what the server expects of that host (``Host.objects.expected_state``) handed to the listener
    its connection registered (``listen``, a plain function called on the event loop): the consumer compares it with what the agent reported
    and resends what the agent missed."""

    def __init__(self, tick: float = 0.05):
        super().__init__(tick)
        self._listeners: dict = {}

    def listen(self, host_id, connection_id, callback) -> None:
        self._listeners[(host_id, connection_id)] = callback

    def unlisten(self, host_id, connection_id) -> None:
        self._listeners.pop((host_id, connection_id), None)

    def _deliver(self, results: dict) -> None:
        for key, expected in results.items():
            callback = self._listeners.get(key)
            if callback is not None:
                try:
                    callback(expected)
                except Exception:  # one socket's bug must not stop the others' reconciliation
                    log.exception("reconciliation of host %s failed", key[0])

    @staticmethod
    def _write(batch: dict) -> dict:
        from fleetweb.updates.models import RolloutHost

        from .models import Host

        by_columns: dict[tuple, list] = {}  # a pong carries two columns, a status frame four or five
        for (host_id, conn_id), values in batch.items():
            columns = tuple(name for name in FIELDS if name in values)
            by_columns.setdefault(columns, []).append([values[name] for name in columns] + [host_id, conn_id])
        reports = [(host_id, conn_id, *values["rollout_report"])
                   for (host_id, conn_id), values in batch.items() if "rollout_report" in values]
        with transaction.atomic():
            for columns, rows in by_columns.items():
                bulk.update_rows(Host, columns, ("id", "connection_id"), rows)
            if reports:
                RolloutHost.objects.report_statuses(reports)
            booted = {host_id: values["partitions"] for (host_id, _conn), values in batch.items()
                      if "partitions" in values}
            if booted:
                RolloutHost.objects.complete_booted(booted)
        asking = {key for key, values in batch.items() if values.get("reconcile")}
        if not asking:
            return {}
        expected = Host.objects.expected_state({host_id for host_id, _conn in asking})
        return {key: expected[key[0]] for key in asking if key[0] in expected}


class AckWriter(TickWriter):
    """Policy acknowledgements (`event policy_applied`): after a channel switch every agent of the
    group acks within a second; one UPDATE and one bulk INSERT of activity events per tick instead
    of a transaction per host.  ``fields`` holds revision, channel, reboot_strategy, organization,
    group, hostname, data and the agent's time."""

    @staticmethod
    def _write(batch: dict) -> None:
        from fleetweb.core import live

        from .choices import EventKind
        from .models import Event, Host

        with transaction.atomic():
            latest = {host_id: f for (host_id, _conn), f in batch.items()}  # a reconnect's ack comes last
            # Only hosts whose revision changes are written and get an event (one statement: no
            # SELECT ... FOR UPDATE of 10,000 ids before it, which was half of a switch's writes).
            moved = bulk.update_rows(Host, ("policy_revision", "channel", "reboot_strategy"), ("id",),
                                     [[f["revision"], f["channel"], f["reboot_strategy"], host_id]
                                      for host_id, f in latest.items()], changing="policy_revision")
            changed = {pk: latest[pk] for pk in moved}
            if not changed:
                return
            Event.objects.insert_rows([
                {"organization_id": f["organization_id"], "kind": EventKind.POLICY_APPLIED, "host_id": host_id,
                 "group_id": f["group_id"], "data": f["data"], "created": f["created"],
                 "message": f"Host {f['hostname']} applied policy revision {f['revision']}: channel "
                            f"{f['channel'] or '?'}, strategy {f['reboot_strategy'] or '?'}"}
                for host_id, f in changed.items()])
            by_organization: dict = {}
            for host_id, f in changed.items():
                by_organization.setdefault(f["organization_id"], []).append({"kind": "host", "host": str(host_id)})
            transaction.on_commit(lambda: [live.to_ui_many(org, notices) for org, notices in by_organization.items()])


class OfflineWriter(TickWriter):
    """Closed sockets: each host is marked offline, if the closing socket is still its current one
    (a newer connection may have taken over), with a ``disconnected`` event.  A network cut or a
    load balancer restart closes thousands of sockets at once: one UPDATE and one INSERT per tick,
    not a transaction per socket on the agents' thread.  ``fields`` holds code, organization,
    group and hostname."""

    @staticmethod
    def _write(batch: dict) -> None:
        from .choices import EventKind
        from .models import Event, Host, _host_changed

        now = timezone.now()
        with transaction.atomic():
            # connection_id is set to NULL only where it is still the closing socket's: every row
            # that matches changes, and the rows returned are the hosts marked offline.
            gone = set(bulk.update_rows(Host, ("online", "connection_id", "last_seen"), ("id", "connection_id"),
                                        [[False, None, now, host_id, conn_id] for host_id, conn_id in batch],
                                        changing="connection_id"))
            closed = [(host_id, f) for (host_id, _conn), f in batch.items() if host_id in gone]
            events = Event.objects.insert_many([
                Event(organization_id=f["organization_id"], kind=EventKind.DISCONNECTED, host_id=host_id,
                      group_id=f["group_id"], created=now, data={"code": f["code"]},
                      message=f"Host {f['hostname']} disconnected (code {f['code']})")
                for host_id, f in closed])

            def notify():
                for event in events:
                    event.broadcast()
                for host_id, f in closed:
                    _host_changed(f["organization_id"], host_id)
            transaction.on_commit(notify)


class Overloaded(Exception):
    """A request waited in a batcher's queue longer than its caller waits for the answer."""


class Batcher:
    """Requests that arrive together are handled in one transaction and each caller awaits its own
    answer (unlike the writers above, whose callers do not wait).  With ``tick`` 0 a batch starts
    at once and whatever arrives while it runs forms the next one: no added latency when idle,
    large batches under load.

    ``max_wait``: a request queued longer than that is not handled but answered with ``Overloaded``
    (its caller has given up by then: in a reconnect storm, answering abandoned hellos is what
    kept the queue long).  ``backlog()`` estimates how long a request queued now would wait, from
    the queue's length and the rate the last batches were handled at."""

    tick = 0.0
    limit = 1000
    max_wait: float | None = None

    def __init__(self):
        self._pending: list = []
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rate: float | None = None  # requests handled per second, smoothed over recent batches
        self.overloaded = 0              # requests answered with Overloaded

    async def submit(self, item):
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._task, self._pending, self._rate = loop, None, [], None
        fut = loop.create_future()
        self._pending.append((item, fut, self._now()))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        return await fut

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def backlog(self) -> float:
        """Seconds a request queued now would wait (0 until a batch has been measured)."""
        if not self._pending or not self._rate:
            return 0.0
        return len(self._pending) / self._rate

    async def _run(self) -> None:
        while self._pending:
            await asyncio.sleep(self.tick)
            if self.max_wait is not None:
                now = self._now()
                stale = [entry for entry in self._pending if now - entry[2] > self.max_wait]
                if stale:
                    self._pending = [entry for entry in self._pending if now - entry[2] <= self.max_wait]
                    self.overloaded += len(stale)
                    for _item, fut, _at in stale:
                        if not fut.done():
                            fut.set_exception(Overloaded(f"waited over {self.max_wait:.0f} s for the server"))
            if not self._pending:
                break
            batch, self._pending = self._pending[:self.limit], self._pending[self.limit:]
            started = self._now()
            try:
                results = await on_db_thread(self._write)([item for item, _fut, _at in batch])
            except Exception as exc:
                log.exception("%s: a batch of %d failed", type(self).__name__, len(batch))
                results = [exc] * len(batch)
            else:
                rate = len(batch) / max(self._now() - started, 1e-3)
                self._rate = rate if self._rate is None else 0.5 * self._rate + 0.5 * rate
            for (_item, fut, _at), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    @staticmethod
    def _write(items: list) -> list:
        raise NotImplementedError


class HelloBatcher(Batcher):
    """Hellos within one short tick are recorded together (``Host.objects.connect_many``); the
    answer each consumer waits for is its policy.  An agent gives up on a hello after its
    ``POLICY_TIMEOUT`` (15 s) and reconnects: a hello queued longer than ``max_wait`` is dropped."""

    tick = 0.01
    max_wait = POLICY_TIMEOUT - 3.0

    async def connect(self, host_id, connection_id, msg: dict):
        return await self.submit((host_id, connection_id, msg))

    @staticmethod
    def _write(hellos: list) -> list:
        from .models import Host

        return Host.objects.connect_many(hellos)


class AuthBatcher(Batcher):
    """Credentials of sockets that connect together, checked in one query
    (``HostCredential.objects.authenticate_many``); the answer is the host or None."""

    tick = 0.01

    async def authenticate(self, secret: str):
        return await self.submit(secret)

    @staticmethod
    def _write(presented: list) -> list:
        from .models import HostCredential

        return HostCredential.objects.authenticate_many(presented)


class ResendBatcher(Batcher):
    """Reconciliations that found an agent behind (``Host.objects.resend_frames``): the answer is
    the list of frames to send it again.  A read per host on the agents' thread cost every status
    write behind it when a lost switch of a large group was made good."""

    tick = 0.01

    async def frames(self, host_id, policy: bool, rollout_id: int | None) -> list[dict]:
        return await self.submit((host_id, policy, rollout_id))

    @staticmethod
    def _write(requests: list) -> list:
        from .models import Host

        return Host.objects.resend_frames(requests)


class RegistrationBatcher(Batcher):
    """Enrollments (``Host.objects.register_many``): the answer is ``(host, credential, trust)`` or
    the EnrollmentError; 32 agents enrolling at once cost one transaction, not 32, and the trust
    material (the organization's signing key and its chain) is read once per organization per batch."""

    @staticmethod
    def _write(requests: list) -> list:
        from .models import Host

        trust: dict = {}
        out = []
        for result in Host.objects.register_many(requests):
            if isinstance(result, tuple):
                host, credential = result
                if host.organization_id not in trust:
                    trust[host.organization_id] = host.group.signing_key_fields()
                result = (host, credential, trust[host.organization_id])
            out.append(result)
        return out


writer = StatusWriter()
acks = AckWriter()
offline = OfflineWriter()
hellos = HelloBatcher()
logins = AuthBatcher()
resends = ResendBatcher()
registrations = RegistrationBatcher()
