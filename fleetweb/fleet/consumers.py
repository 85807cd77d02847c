"""The agent websocket `/ws/agent/`.

Authenticates the bearer credential in `connect()`, validates every frame with the shared
protocol module, persists host state, and relays policy/commands from the per-process hub.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from channels.db import database_sync_to_async
from django.db import transaction
from django.utils import timezone

from agent import protocol
from fleetweb.core import live, secrets
from fleetweb.core.hub import CLOSE_FRAME, hub
from fleetweb.core.websocket import PlainWebsocket

from . import sweeper
from .choices import EventKind
from .ratelimit import FrameLimiter
from .writer import Overloaded, acks, hellos, logins, offline, resends, writer

log = logging.getLogger(__name__)

MAX_PROTOCOL_ERRORS = 50
# A frame this socket carried counts as lost when the agent still reports itself behind this many
# status frames and at least this many seconds later (a status frame may cross the frame on the
# wire; an agent reports several a second while it downloads).
RESEND_AFTER_HEARTBEATS = 2
RESEND_AFTER_SECONDS = 1.0
# A heartbeat asks for reconciliation (what the server expects of this host, read after the write)
# at most this often per socket: an agent reports several status frames a second while it
# downloads, and one read per second says all a resend needs (it waits RESEND_AFTER_SECONDS anyway).
RECONCILE_EVERY = RESEND_AFTER_SECONDS
# Only ever in frames meant for one host: its etcd credentials, and their revision.
HOST_SECRET_FIELDS = ("etcd_username", "etcd_password", "etcd_credentials_revision")
REPORTED = protocol.REPORTED_POLICY_FIELDS
# A socket that connects while the hellos already queued would take longer than this to answer is
# closed at once with 1013 (try again later): the agent reconnects after its jittered backoff instead
# of waiting out its policy timeout in a queue it makes longer (issue 10 §5).
HELLO_BACKLOG_LIMIT = protocol.POLICY_TIMEOUT - 5.0


def _bearer(scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            text = value.decode("latin-1")
            if text.startswith("Bearer "):
                return text[7:].strip()
    return None


def _event_time(at):
    """The agent's own time for an event it could only send after a reconnect, trusted within
    a day in the past and never in the future (clocks drift; the order of a host's steps matters)."""
    now = timezone.now()
    if not isinstance(at, (int, float)) or isinstance(at, bool):
        return now
    try:
        when = datetime.fromtimestamp(at, tz=dt_timezone.utc)
    except (OverflowError, OSError, ValueError):
        return now
    return when if now - timedelta(days=1) <= when <= now else now


@functools.lru_cache(maxsize=16)
def _broadcast_frame(text: str) -> dict:
    """A group broadcast, parsed once for all the sockets of the group it reaches, not once per
    socket (a switch of a 10,000-host group).  Read only: callers must not change it."""
    return json.loads(text)


class AgentConsumer(PlainWebsocket):
    """One agent's socket.  A plain ASGI endpoint, not a channels consumer: agents join no
    channel-layer group (the hub fans frames out per process), and channels' dispatch cost a task,
    an ``asyncio.wait`` and a hop to the sync thread per frame.  Every database call here goes
    through ``database_sync_to_async`` or a batch writer, which close obsolete connections."""

    async def connect(self):
        self.host_id = None
        self.ready = False
        self.errors = 0
        self.host_secrets: dict = {}
        self.heartbeats = 0          # status frames received on this socket
        self.sent: dict = {}         # "policy" / "update" -> (what, heartbeats, time) of the last one sent
        self.reported_fields: dict = {}  # REPORTED fields the agent's status frames carried (what it applied)
        self.reported_revision = None
        self.reported_rollout = None
        self.reconciled_at = float("-inf")  # loop time of the last heartbeat that asked for reconciliation
        if hellos.backlog() > HELLO_BACKLOG_LIMIT:
            await self.accept()
            await self.close(code=protocol.CLOSE_TRY_AGAIN_LATER)
            return
        secret = _bearer(self.scope)
        host = await logins.authenticate(secret) if secret else None
        await self.accept()
        if host is None:
            await self.send(text_data=protocol.error_frame("unauthorized", "invalid or revoked credential"))
            await self.close(code=protocol.CLOSE_UNAUTHORIZED)
            return
        self.host_id = host.host_id
        self.credential_lookup = secrets.split(secret, "fwh")
        self.organization_id = host.organization_id
        self.group_id = host.group_id
        self.hostname = host.hostname
        self.connection_id = uuid.uuid4()
        self.limiter = FrameLimiter()
        self.state = {"update_status": host.update_status, "version": host.version, "status_seq": host.status_seq}
        await hub.join(f"host:{self.host_id}", self._from_host_key)
        await hub.join(f"group:{self.group_id}", self._send_text)
        writer.listen(self.host_id, self.connection_id, self._reconcile)
        sweeper.track(self.credential_lookup, self._close_with)
        live.bind_loop()
        # One socket per host: this one replaces any other, in whichever web process holds it.
        hub.close(f"host:{self.host_id}", protocol.CLOSE_REPLACED, "a newer connection took over",
                  keep=str(self.connection_id))

    async def disconnect(self, code):
        if self.host_id is None:
            return
        hub.leave(f"host:{self.host_id}", self._from_host_key)
        hub.leave(f"group:{self.group_id}", self._send_text)
        writer.unlisten(self.host_id, self.connection_id)
        self.limiter.forget()
        sweeper.untrack(self.credential_lookup, self._close_with)
        if self.ready:
            await writer.flush(self.host_id, self.connection_id)  # this socket's last frames first, then offline
            await acks.flush(self.host_id, self.connection_id)
            await offline.submit(self.host_id, self.connection_id, {
                "code": code, "organization_id": self.organization_id, "group_id": self.group_id,
                "hostname": self.hostname})
            await offline.flush(self.host_id, self.connection_id)

    @staticmethod
    def _now() -> float:
        """The clock of reconciliation's timings (the event loop's; tests drive a fake one)."""
        return asyncio.get_running_loop().time()

    async def _close_with(self, code: int) -> None:
        await self.close(code=code)

    # -- frames from the hub ---------------------------------------------------------------
    async def _send_text(self, text: str) -> None:
        """A group broadcast: a policy frame gets this host's own etcd credentials added (a group's
        frame never carries any, issue 9 §8)."""
        frame = _broadcast_frame(text)
        if frame.get("type") == "policy":
            if self.host_secrets:
                frame = {**frame, **self.host_secrets}
                text = json.dumps(frame, separators=(",", ":"))
            self._sending(frame)
        await self.send(text_data=text)

    def _sending(self, frame: dict) -> None:
        """Remember which policy revision / grant this socket carried (for reconciliation)."""
        now = self._now()
        if frame.get("type") == "policy":
            self.sent["policy"] = ((frame.get("revision"), tuple(frame.get(k) for k in REPORTED)), self.heartbeats, now)
        elif frame.get("type") == "update":
            self.sent["update"] = (frame.get("rollout"), self.heartbeats, now)

    def _missed(self, kind: str, carried) -> bool:
        """Did this socket not carry ``carried`` (of the last ``kind`` frame it sent: "policy" →
        (revision, the REPORTED fields' values), "update" → rollout), or carry it long enough ago that
        the agent should have reported it?  Only the last frame of each kind is remembered: a
        socket open for months keeps two entries."""
        last = self.sent.get(kind)
        if last is None or last[0] != carried:
            return True
        _carried, heartbeats, at = last
        return (self.heartbeats - heartbeats >= RESEND_AFTER_HEARTBEATS
                and self._now() - at >= RESEND_AFTER_SECONDS)

    def _reconcile(self, expected: dict) -> None:
        """After a heartbeat is written: resend what the agent missed (issue 10 §3).  Pushes travel
        through Redis pub/sub, which drops them while Redis or a subscription is down; the database
        says what the agent should have, the heartbeat says what it has, and the resend goes
        straight to this socket, whatever Redis does.  Called on the event loop for every heartbeat
        of a batch: the comparison is plain code, and only a resend starts a task."""
        if self.host_id is None or not self.ready:
            return
        revision = expected["revision"]
        should = expected["reported"]
        # A field counts when both sides know it (an older agent reports none; a server without
        # etcd authentication has no credentials' revision).
        behind = self.reported_revision != revision or any(
            should.get(k) is not None and self.reported_fields.get(k) is not None
            and self.reported_fields[k] != should[k] for k in REPORTED)
        policy = behind and self._missed("policy", (revision, tuple(should.get(k) for k in REPORTED)))
        rollout = None
        grant = expected.get("grant")
        if grant is not None:
            rollout_id, version = grant
            idle = self.state["update_status"] == "IDLE" and self.reported_rollout is None
            if idle and self.state["version"] != version and self._missed("update", rollout_id):
                rollout = rollout_id
        if policy or rollout is not None:
            asyncio.ensure_future(self._resend(policy, rollout))

    async def _resend(self, policy: bool, rollout: int | None) -> None:
        frames = await resends.frames(self.host_id, policy, rollout)
        for frame in frames:
            log.info("host %s: resending its %s frame (%s)", self.host_id, frame["type"],
                     f"revision {frame.get('revision')}" if frame["type"] == "policy" else f"rollout {rollout}")
            await self._from_host_key(json.dumps(frame, separators=(",", ":")))

    def _remember_secrets(self, frame: dict) -> None:
        self.host_secrets = {k: frame[k] for k in HOST_SECRET_FIELDS if k in frame}

    async def _from_host_key(self, text: str) -> None:
        frame = json.loads(text)
        if frame.get("type") == CLOSE_FRAME:
            if frame.get("keep") not in (self.credential_lookup, str(self.connection_id)):
                log.info("closing the socket of host %s: %s", self.host_id, frame.get("reason"))
                await self.close(code=frame["code"])
            return
        self._sending(frame)
        if frame.get("type") == "policy":  # the host may have moved to another group
            self._remember_secrets(frame)
            group_id = await self._current_group_id()
            if group_id != self.group_id:
                hub.leave(f"group:{self.group_id}", self._send_text)
                self.group_id = group_id
                await hub.join(f"group:{self.group_id}", self._send_text)
        await self.send(text_data=text)

    @database_sync_to_async
    def _current_group_id(self):
        from .models import Host

        return Host.objects.filter(pk=self.host_id).values_list("group_id", flat=True).first()

    # -- frames from the agent -------------------------------------------------------------
    async def receive(self, text_data=None, bytes_data=None):
        if self.host_id is None:
            return
        try:
            if text_data is None:
                raise protocol.ProtocolError(protocol.ERR_MALFORMED, "frames must be JSON text, not binary")
            msg = protocol.decode(text_data, "agent")
            if msg["type"] != "hello" and not self.ready:
                raise protocol.ProtocolError(protocol.ERR_NOT_READY, f"send hello before {msg['type']}")
        except protocol.ProtocolError as exc:
            self.errors += 1
            await self.send(text_data=protocol.error_frame(exc.code, exc.message))
            if self.errors >= MAX_PROTOCOL_ERRORS:
                await self.close(code=protocol.CLOSE_PROTOCOL)
            return
        if not await self._within_budget(msg["type"]):
            return
        await getattr(self, f"on_{msg['type']}")(msg)

    async def _within_budget(self, frame_type: str) -> bool:
        """Per-connection frame budgets (issue 9 §12): over budget the frame is dropped, the first
        time with a warning; a host that keeps flooding is closed with 4429."""
        verdict = await self.limiter.check(frame_type)
        if verdict == "ok":
            return True
        if verdict == "warn":
            log.warning("host %s: %s frames over budget", self.host_id, frame_type)
            await self.send(text_data=protocol.error_frame(
                protocol.ERR_RATE_LIMITED, f"too many {frame_type} frames; slow down or be disconnected"))
        elif verdict == "close":
            log.warning("host %s: closed for flooding %s frames", self.host_id, frame_type)
            await self.close(code=protocol.CLOSE_RATE_LIMITED)
        return False

    async def _refuse_kind(self, kind: str) -> None:
        """An event kind agents may not record (a forged server event): refused, nothing stored."""
        log.warning("host %s: refused event kind %r", self.host_id, kind[:64])
        self.errors += 1
        await self.send(text_data=protocol.error_frame(
            protocol.ERR_FORBIDDEN_KIND, f"agents may not record {kind[:64]!r} events"))
        if self.errors >= MAX_PROTOCOL_ERRORS:
            await self.close(code=protocol.CLOSE_PROTOCOL)

    async def on_hello(self, msg):
        try:
            policy, update, host, policy_text = await hellos.connect(self.host_id, self.connection_id, msg)
        except Overloaded:  # the agent stopped waiting for this answer
            await self.close(code=protocol.CLOSE_TRY_AGAIN_LATER)
            return
        self.hostname = host.hostname
        self.state = {"update_status": host.update_status, "version": host.version, "status_seq": host.status_seq}
        self.ready = True
        self._remember_secrets(policy)
        self.reported_revision = msg.get("policy_revision")
        self._sending(policy)
        await self.send(text_data=policy_text)
        if update is not None:  # a grant the host had not finished before it went away
            self._sending(update)
            await self.send(text_data=json.dumps(update, separators=(",", ":")))

    async def on_status(self, msg):
        st = self.state
        st["update_status"] = msg["update_status"]
        if "version" in msg:
            st["version"] = (msg["version"] or "")[:64]
        st["status_seq"] = msg.get("seq", st["status_seq"] + 1)
        self.heartbeats += 1
        self.reported_rollout = msg.get("rollout")
        if "policy_revision" in msg:
            self.reported_revision = msg["policy_revision"]
        for k in REPORTED:
            if k in msg:
                self.reported_fields[k] = msg[k]
        fields = {**st, "last_seen": timezone.now(), "online": True}
        now = self._now()
        if now - self.reconciled_at >= RECONCILE_EVERY:
            self.reconciled_at = now
            fields["reconcile"] = True
        if "partitions" in msg:  # written, not kept: the socket holds only what reconciliation reads
            fields["partitions"] = msg["partitions"]
        if "rollout" in msg:  # update progress: moves the rollout entry in the same group commit
            fields["rollout_report"] = (msg["rollout"], msg["update_status"], msg.get("progress"))
        await writer.submit(self.host_id, self.connection_id, fields)

    async def on_pong(self, msg):
        await writer.submit(self.host_id, self.connection_id, {"last_seen": timezone.now(), "online": True})

    async def on_event(self, msg):
        if msg["kind"] not in protocol.AGENT_EVENT_KINDS:
            await self._refuse_kind(msg["kind"])
            return
        if msg["kind"] == "policy_applied":
            data = msg.get("data") or {}
            revision = data.get("revision")
            if not isinstance(revision, int) or isinstance(revision, bool):
                return
            self.reported_revision = revision
            channel, strategy = data.get("channel"), data.get("reboot_strategy")
            await acks.submit(self.host_id, self.connection_id, {
                "revision": revision, "organization_id": self.organization_id, "group_id": self.group_id,
                "hostname": self.hostname, "data": data, "created": _event_time(msg.get("at")),
                "channel": channel[:16] if isinstance(channel, str) else "",
                "reboot_strategy": strategy[:16] if isinstance(strategy, str) else ""})
            return
        # A host's frames take effect in the order it sent them: its queued status is stored before the event.
        await writer.flush(self.host_id, self.connection_id)
        await self._event(msg)

    @database_sync_to_async
    def _event(self, msg):
        from fleetweb.updates.models import RolloutHost

        from .models import Event, _host_changed

        data = msg.get("data") or {}
        with transaction.atomic():
            moved = RolloutHost.objects.report_event(self.host_id, msg["kind"], data)
            if (moved is None and msg["kind"] == EventKind.UPDATE_SUCCEEDED
                    and Event.objects.add_to_recorded_boot(self.host_id, {"kind": msg["kind"], **data})):
                return  # its heartbeat finished the entry and recorded the boot: one entry per boot
            kind = msg["kind"] if msg["kind"] in EventKind.values else EventKind.AGENT_EVENT
            detail = msg.get("message") or data.get("reason") or data.get("message") or ""
            version = data.get("version")
            Event.objects.record(self.organization_id, kind, created=_event_time(msg.get("at")),
                                 message=f"Host {self.hostname}: {EventKind(kind).label.lower() if kind != EventKind.AGENT_EVENT else msg['kind']}"
                                 + (f" {version}" if isinstance(version, str) else "")
                                 + (f": {str(detail)[:300]}" if detail else ""),
                                 host_id=self.host_id, group_id=self.group_id,
                                 data={"kind": msg["kind"], **data})
            transaction.on_commit(lambda: _host_changed(self.organization_id, self.host_id))
