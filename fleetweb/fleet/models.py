"""Groups, hosts, enrollment and the activity log: the rules live here, views stay thin."""
from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import NamedTuple

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.text import slugify

from agent import protocol, signing
from agent import window as reboot_window
from fleetweb.core import bulk, secrets

from . import policy as policy_extras
from .choices import EventKind, RebootStrategy

log = logging.getLogger(__name__)


class EnrollmentError(Exception):
    """A token that cannot enroll a host; ``code`` is what the agent maps to an exit code."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------

class EventManager(models.Manager):
    COLUMNS = ("organization_id", "kind", "message", "host_id", "group_id", "actor", "data", "created")

    def insert_rows(self, rows: list[dict]) -> list[int]:
        """Insert events given as dicts of ``COLUMNS`` (``actor`` may be left out) in one statement,
        without a model instance each (the writers record up to thousands per batch); returns their
        ids, in order."""
        return bulk.insert_rows(self.model, self.COLUMNS,
                                [[row.get(name, "") if name == "actor" else row[name] for name in self.COLUMNS]
                                 for row in rows])

    def insert_many(self, events: list["Event"]) -> list["Event"]:
        """``bulk_create`` for unsaved events, in one statement on PostgreSQL: sets their ids."""
        ids = self.insert_rows([{name: getattr(e, name) for name in self.COLUMNS} for e in events])
        for event, pk in zip(events, ids, strict=True):
            event.pk = pk
            event._state.adding = False
        return events

    def record(self, organization_id: int, kind: str, message: str, *, host=None, group=None,
               host_id=None, group_id=None, actor: str = "", data: dict | None = None,
               created=None) -> "Event":
        event = self.create(organization_id=organization_id, kind=kind, message=message,
                            created=created or timezone.now(),
                            host_id=host.pk if host is not None else host_id,
                            group_id=group.pk if group is not None else group_id,
                            actor=actor, data=data or {})
        transaction.on_commit(lambda: event.broadcast())
        return event


    def add_to_recorded_boot(self, host_id, data: dict) -> bool:
        """The agent's ``booted_new_version`` event for a boot its heartbeat already put in the activity
        log (the heartbeat is written first): what the agent adds (the previous version, the partition)
        goes into that entry instead of a second one.  False when there is no such entry."""
        rollout_id = data.get("rollout")
        if not isinstance(rollout_id, int) or isinstance(rollout_id, bool):
            return False
        event = self.filter(host_id=host_id, kind=EventKind.UPDATE_SUCCEEDED, data__rollout=rollout_id).first()
        if event is None:
            return False
        event.data = {k: v for k, v in {**event.data, **data}.items() if k != "reported_by"}
        event.save(update_fields=["data"])
        transaction.on_commit(lambda: event.broadcast())
        return True


class Event(models.Model):
    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32, choices=EventKind.choices)
    message = models.CharField(max_length=500)
    host = models.ForeignKey("fleet.Host", null=True, blank=True, on_delete=models.SET_NULL, related_name="events")
    group = models.ForeignKey("fleet.Group", null=True, blank=True, on_delete=models.SET_NULL, related_name="events")
    actor = models.CharField(max_length=150, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(default=timezone.now, db_index=True)

    objects = EventManager()

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["organization", "-created"], name="event_org_created")]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    @property
    def colour(self) -> str:
        return EventKind.colour(self.kind)

    def broadcast(self) -> None:
        from fleetweb.core import live

        live.to_ui(self.organization_id, {"kind": "event", "event": {
            "id": self.id, "kind": self.kind, "message": self.message,
            "host": str(self.host_id) if self.host_id else None, "group": self.group_id,
            "created": self.created.isoformat()}})


# ---------------------------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------------------------

class Group(models.Model):
    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="groups")
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100)
    channel = models.ForeignKey("updates.Channel", on_delete=models.PROTECT, related_name="groups")
    reboot_strategy = models.CharField(max_length=16, choices=RebootStrategy.choices,
                                       default=RebootStrategy.BEST_EFFORT)
    max_concurrent_reboots = models.PositiveIntegerField(default=1)
    lock_stuck_after = models.PositiveIntegerField(
        default=900, help_text="seconds a holder of the reboot lock may be offline before it is flagged stuck")
    reboot_window_start = models.CharField(max_length=16, blank=True)
    reboot_window_length = models.CharField(max_length=16, blank=True)
    policy_revision = models.PositiveIntegerField(default=1)
    # Rollout policy
    updates_enabled = models.BooleanField(default=True)
    max_updates_per_period = models.PositiveIntegerField(default=0, help_text="K updates per period; 0 = no limit")
    update_period = models.PositiveIntegerField(default=3600, help_text="P, seconds")
    max_in_flight = models.PositiveIntegerField(default=1, help_text="M hosts updating at once")
    update_timeout = models.PositiveIntegerField(default=3600, help_text="seconds before an update counts as failed")
    safe_mode = models.BooleanField(default=False, help_text="the first host updates alone; halt if it fails")
    failure_threshold = models.PositiveIntegerField(default=1, help_text="failures that halt the rollout")
    failure_threshold_percent = models.BooleanField(default=False, help_text="threshold is a percentage")
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["organization", "slug"], name="unique_group_slug")]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = {}
        if self.channel_id and self.organization_id and self.channel.organization_id != self.organization_id:
            errors["channel"] = ["Unknown channel."]
        try:
            reboot_window.parse_window(self.reboot_window_start or None, self.reboot_window_length or None)
        except ValueError as exc:
            errors["reboot_window_start"] = [str(exc)]
        if self.max_concurrent_reboots < 1:
            errors["max_concurrent_reboots"] = ["Must be at least 1."]
        if self.max_in_flight < 1:
            errors["max_in_flight"] = ["Must be at least 1."]
        if self.update_period < 1:
            errors["update_period"] = ["Must be at least 1 second."]
        if self.update_timeout < 10:
            errors["update_timeout"] = ["Must be at least 10 seconds."]
        if self.lock_stuck_after < 10:
            errors["lock_stuck_after"] = ["Must be at least 10 seconds."]
        if self.failure_threshold_percent and not 1 <= self.failure_threshold <= 100:
            errors["failure_threshold"] = ["A percentage must be between 1 and 100."]
        if errors:
            raise ValidationError(errors)

    def save(self, *args, **kwargs):
        if not self.slug:
            self.slug = slugify(self.name)[:100] or "group"
        super().save(*args, **kwargs)

    # The policy agents of this group follow -------------------------------------------------
    POLICY_FIELDS = ("channel", "reboot_strategy", "reboot_window_start", "reboot_window_length",
                     "max_concurrent_reboots", "updates_enabled")

    def policy(self) -> dict:
        from django.conf import settings

        return {
            "type": "policy",
            "revision": self.policy_revision,
            "group": self.slug,
            "channel": self.channel.name,
            "reboot_strategy": self.reboot_strategy,
            "reboot_window_start": self.reboot_window_start or None,
            "reboot_window_length": self.reboot_window_length or None,
            "etcd_endpoints": list(settings.ETCD_ENDPOINTS),
            "lock_group": self.slug,
            "heartbeat_interval": settings.FLEET_HEARTBEAT_INTERVAL,
            "updates_enabled": self.updates_enabled,
            **self.signing_key_fields(),
            **policy_extras.extra_fields(self),
        }

    def rotate_etcd_credentials(self, actor: str = "") -> int:
        """New etcd passwords for every host of the group, each pushed to its host; returns how many."""
        hosts = list(self.hosts.select_related("group", "organization"))
        with transaction.atomic():
            for host in hosts:
                host.rotate_etcd_credentials(actor)
        return len(hosts)

    def signing_key_fields(self) -> dict:
        from fleetweb.updates.models import SigningKey

        return SigningKey.objects.trust_fields(self.organization_id)

    @transaction.atomic
    def apply_changes(self, changes: dict, actor: str = "", force_push: bool = False) -> list[str]:
        """Change policy fields, bump the revision, log it and push the policy to connected agents.

        ``changes`` holds validated values.  Returns the names of the fields that changed.
        """
        locked = Group.objects.select_for_update().get(pk=self.pk)
        old = {f: getattr(locked, f) for f in self.POLICY_FIELDS}
        for field, value in changes.items():
            setattr(self, field, value)
        self.full_clean(exclude=["organization", "slug", "name"] if "name" not in changes else ["organization"])
        changed = [f for f in self.POLICY_FIELDS if getattr(self, f) != old[f]]
        other = [f for f in changes if f not in self.POLICY_FIELDS]
        if changed or force_push:
            self.policy_revision = locked.policy_revision + 1
        self.save()
        if "channel" in changed:
            Event.objects.record(self.organization_id, EventKind.CHANNEL_CHANGED,
                                 f"Group {self.name} switched from {old['channel'].name} to {self.channel.name}",
                                 group=self, actor=actor,
                                 data={"from": old["channel"].name, "to": self.channel.name,
                                       "revision": self.policy_revision})
        if "reboot_strategy" in changed:
            Event.objects.record(self.organization_id, EventKind.STRATEGY_CHANGED,
                                 f"Group {self.name} reboot strategy {old['reboot_strategy']} → {self.reboot_strategy}",
                                 group=self, actor=actor,
                                 data={"from": old["reboot_strategy"], "to": self.reboot_strategy})
        rest = [f for f in changed if f not in ("channel", "reboot_strategy")] + other
        if rest:
            Event.objects.record(self.organization_id, EventKind.GROUP_CHANGED,
                                 f"Group {self.name} changed: {', '.join(rest)}", group=self, actor=actor,
                                 data={"fields": rest})
        if changed or force_push:
            frame = self.policy()
            transaction.on_commit(lambda: self.push_policy(frame))
        return changed + other

    def push_policy(self, frame: dict | None = None) -> None:
        from fleetweb.core import hub, live

        hub.publish(f"group:{self.pk}", frame or self.policy())
        live.to_ui(self.organization_id, {"kind": "group", "group": self.pk})

    def hosts_applied(self) -> tuple[int, int]:
        """(hosts that acknowledged the current policy, hosts in the group)."""
        qs = self.hosts.all()
        return qs.filter(policy_revision__gte=self.policy_revision).count(), qs.count()


# ---------------------------------------------------------------------------------------------
# Enrollment
# ---------------------------------------------------------------------------------------------

class EnrollmentTokenManager(models.Manager):
    def issue(self, group: Group, *, name: str = "", expires_in: timedelta | None = None,
              max_uses: int | None = None, created_by=None,
              replace_existing: bool = False) -> tuple["EnrollmentToken", str]:
        new = secrets.new_secret("fwe")
        token = self.create(organization_id=group.organization_id, group=group, name=name, lookup=new.lookup,
                            digest=new.digest, max_uses=max_uses, created_by=created_by,
                            replace_existing=replace_existing,
                            expires_at=timezone.now() + expires_in if expires_in else None)
        Event.objects.record(group.organization_id, EventKind.TOKEN_CREATED,
                             f"Enrollment token {token.display} created for group {group.name}"
                             + (" (may replace existing hosts)" if replace_existing else ""),
                             group=group, actor=str(created_by or ""),
                             data={"replace_existing": replace_existing})
        return token, new.secret

    def redeem(self, secret: str) -> "EnrollmentToken":
        """Use up one enrollment of the token or raise EnrollmentError.  Call in a transaction."""
        [result] = self.redeem_many([secret])
        if isinstance(result, EnrollmentError):
            raise result
        return result

    def redeem_many(self, secrets_in: list[str]) -> list:
        """Claim one use per secret, in order; returns per secret its token or the EnrollmentError.

        Call in a transaction: the tokens stay locked until it ends.  A token with N uses left
        enrolls the first N of a batch and refuses the rest as used up; a refusal uses nothing."""
        lookups = [secrets.split(secret, "fwe") for secret in secrets_in]
        found = {t.lookup: t for t in self.select_for_update(of=("self",)).select_related("group__organization")
                 .filter(lookup__in={lk for lk in lookups if lk})}
        now = timezone.now()
        results, claimed = [], {}
        for secret, lookup in zip(secrets_in, lookups, strict=True):
            token = found.get(lookup) if lookup else None
            if token is None or not secrets.matches(secret, token.digest):
                results.append(EnrollmentError("token_invalid",
                                               "The enrollment token is not valid: check it was copied whole."))
            elif token.revoked_at:
                results.append(EnrollmentError("token_revoked", "The enrollment token was revoked: create a new one."))
            elif token.expires_at and token.expires_at <= now:
                results.append(EnrollmentError("token_expired", "The enrollment token has expired: create a new one."))
            elif token.max_uses is not None and token.uses + claimed.get(token.pk, 0) >= token.max_uses:
                results.append(self._used_up())
            else:
                claimed[token.pk] = claimed.get(token.pk, 0) + 1
                results.append(token)
        for token in found.values():
            n = claimed.get(token.pk)
            if not n:
                continue
            # Conditional, so two processes' batches cannot overshoot even where rows are not locked (SQLite).
            qs = self.filter(pk=token.pk, revoked_at__isnull=True)
            if token.max_uses is not None:
                qs = qs.filter(uses__lte=token.max_uses - n)
            if qs.update(uses=models.F("uses") + n, last_used=now) == 1:
                token.uses += n
            else:
                results = [self._used_up() if r is token else r for r in results]
        return results

    @staticmethod
    def _used_up() -> EnrollmentError:
        return EnrollmentError("token_exhausted", "The enrollment token has been used up: create a new one.")


class EnrollmentToken(models.Model):
    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="tokens")
    group = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="tokens")
    name = models.CharField(max_length=100, blank=True)
    lookup = models.CharField(max_length=12, unique=True)
    digest = models.CharField(max_length=64)
    expires_at = models.DateTimeField(null=True, blank=True)
    MAX_USES = 2**31 - 1  # the column's range: past it a token is as good as unlimited (None)
    max_uses = models.PositiveIntegerField(null=True, blank=True)
    uses = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey("auth.User", null=True, blank=True, on_delete=models.SET_NULL)
    created = models.DateTimeField(default=timezone.now)
    last_used = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    replace_existing = models.BooleanField(
        default=False, help_text="May re-enroll a machine id that already belongs to a host (set by an admin)")

    objects = EnrollmentTokenManager()

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return self.display

    @property
    def display(self) -> str:
        return self.name or f"fwe_{self.lookup}_…"

    @property
    def state(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= timezone.now():
            return "expired"
        if self.max_uses is not None and self.uses >= self.max_uses:
            return "used up"
        return "active"

    def enrollment_command(self, secret: str) -> str:
        """The ``agent register`` line for this token, pinning the organization's signing key by its
        fingerprint (like ``kubeadm join --discovery-token-ca-cert-hash``)."""
        from fleetweb.updates.models import SigningKey

        key = SigningKey.objects.ensure(self.organization)
        return (f"agent register --server {settings.FLEET_PUBLIC_URL} --token {secret} "
                f"--key-hash {signing.fingerprint(key.public_key)}")

    def revoke(self, actor: str = "") -> bool:
        done = EnrollmentToken.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        if done:
            Event.objects.record(self.organization_id, EventKind.TOKEN_REVOKED,
                                 f"Enrollment token {self.display} revoked", group=self.group, actor=actor)
        return done == 1


# ---------------------------------------------------------------------------------------------
# Hosts
# ---------------------------------------------------------------------------------------------

class HostManager(models.Manager):
    REGISTER_FIELDS = ("group", "hostname", "agent_version", "boot_id", "version", "partitions", "channel",
                       "reboot_strategy", "address", "policy_revision", "reenrollment_allowed_until")

    def register(self, token: str, **fields) -> tuple["Host", str]:
        """Enroll one host with a token (``register_many`` of one); raises EnrollmentError."""
        [result] = self.register_many([{"token": token, **fields}])
        if isinstance(result, BaseException):
            raise result
        return result

    def register_many(self, requests: list[dict]) -> list:
        """Enroll hosts: each request holds ``token``, ``machine_id``, ``hostname`` and optionally
        ``agent_version``, ``boot_id``, ``version``, ``partitions``, ``channel``, ``reboot_strategy``,
        ``address``.  Returns per request ``(host, credential)`` (the credential is shown once) or
        the EnrollmentError that refused it.

        A batch costs a handful of statements whatever its size (enrollment is hot when a fleet is
        provisioned).  A machine that registers again (re-imaged, new state dir, or twice in one
        batch) keeps its host record and only its newest credential is valid.  Should another
        process enroll one of the new machines first, the batch is redone one request at a time.
        """
        try:
            with transaction.atomic():
                return self._register_batch(requests)
        except IntegrityError:
            if len(requests) == 1:
                raise
        out = []
        for request in requests:
            try:
                with transaction.atomic():
                    out.extend(self._register_batch([request]))
            except IntegrityError as exc:
                out.append(exc)
        return out

    def omaha_managed(self, organization_id: int, machine_id: str):
        """The organization's host with this machine id, and whether an Omaha request may act on
        it: False for an agent-managed host (it holds or held an agent credential)."""
        host = (self.filter(organization_id=organization_id, machine_id=machine_id)
                .only("pk", "organization_id", "group_id", "hostname", "version", "boot_id").first())
        if host is None:
            return None, True
        return host, not HostCredential.objects.filter(host_id=host.pk).exists()

    def enroll_omaha(self, group, machine_id: str, *, version: str = "", boot_id: str = "",
                     channel: str = "") -> "Host":
        """Enroll an update_engine machine seen for the first time on its group's Omaha URL (no
        agent, no credential).  A machine id the organization already knows is returned as is:
        never moved to another group."""
        try:
            with transaction.atomic():
                host = self.create(organization_id=group.organization_id, group=group, machine_id=machine_id,
                                   hostname=f"omaha-{machine_id[:12]}", version=version, boot_id=boot_id,
                                   channel=channel)
                Event.objects.record(group.organization_id, EventKind.REGISTERED,
                                     f"Host {host.hostname} registered in group {group.name} (Omaha)",
                                     host=host, group=group, data={"machine_id": machine_id, "omaha": True})
        except IntegrityError:  # enrolled meanwhile by another request
            return self.get(organization_id=group.organization_id, machine_id=machine_id)
        return host

    def _register_batch(self, requests: list[dict]) -> list:
        tokens = EnrollmentToken.objects.redeem_many([r["token"] for r in requests])
        accepted = [(i, r, t) for i, (r, t) in enumerate(zip(requests, tokens, strict=True))
                    if isinstance(t, EnrollmentToken)]
        results: list = list(tokens)
        if not accepted:
            return results
        now = timezone.now()
        machines = {(t.organization_id, r["machine_id"]) for _, r, t in accepted}
        known = {(h.organization_id, h.machine_id): h for h in self.select_for_update().filter(
            organization_id__in={org for org, _ in machines}, machine_id__in={m for _, m in machines})}
        own = self._own_credentials(known.values(), [r.get("credential") for _, r, _ in accepted])
        created, updated, newest, credentials, events, refused = {}, {}, {}, [], [], {}
        for i, r, token in accepted:
            key = (token.organization_id, r["machine_id"])
            host = known.get(key)
            first = host is None
            if first:
                host = known[key] = created[key] = self.model(organization_id=token.organization_id,
                                                              machine_id=r["machine_id"], registered_at=now)
            elif key not in created:
                offered = r.get("credential")
                why = host.reenrollment_grant(token, bool(offered) and own.get(host.pk) == offered, now)
                if why is None:
                    results[i] = EnrollmentError(
                        "host_exists", f"Machine id {r['machine_id']} already belongs to host {host.hostname}: "
                        "re-register with its own credential, or ask an operator to allow re-enrollment "
                        "of that host (or to use a token that may replace existing hosts).")
                    refused[token.pk] = refused.get(token.pk, 0) + 1
                    events.append(Event(
                        organization_id=token.organization_id, kind=EventKind.REENROLLMENT_REFUSED, host=host,
                        group=host.group, created=now,
                        data={"token": token.lookup, "token_name": token.display, "machine_id": r["machine_id"]},
                        message=f"Re-enrollment of host {host.hostname} with token {token.display} refused: "
                                "the machine id is already enrolled"))
                    continue
                host.reenrollment_allowed_until = None  # the allowance is one-shot
                updated[host.pk] = host
            host.group = token.group
            host.hostname = r["hostname"]
            host.agent_version = r.get("agent_version") or ""
            host.boot_id = r.get("boot_id") or ""
            host.version = r.get("version") or ""
            host.partitions = r.get("partitions") or []
            host.channel = r.get("channel") or ""
            host.reboot_strategy = r.get("reboot_strategy") or ""
            host.address = r.get("address")
            host.policy_revision = 0
            if key in newest:  # registered twice in this batch: the earlier credential is void
                newest[key].revoked_at = now
            new = secrets.new_secret("fwh")
            newest[key] = HostCredential(host=host, lookup=new.lookup, digest=new.digest, created=now)
            credentials.append(newest[key])
            events.append(Event(
                organization_id=token.organization_id, kind=EventKind.REGISTERED, host=host, group=token.group,
                created=now, data={"token": token.lookup, "machine_id": r["machine_id"]},
                message=f"Host {host.hostname} {'registered' if first else 're-registered'} in group {token.group.name}"))
            results[i] = (host, new.secret)
        for token_id, n in refused.items():  # a refusal uses nothing up
            EnrollmentToken.objects.filter(pk=token_id).update(uses=models.F("uses") - n)
        self.bulk_create(created.values())
        for host in updated.values():  # re-registrations are rare: one UPDATE each
            host.save(update_fields=self.REGISTER_FIELDS)
        if updated:
            HostCredential.objects.filter(host_id__in=list(updated), revoked_at__isnull=True).update(revoked_at=now)
        HostCredential.objects.bulk_create(credentials)
        Event.objects.bulk_create(events)
        replaced = {pk: newest[(h.organization_id, h.machine_id)].lookup for pk, h in updated.items()}
        transaction.on_commit(lambda: [e.broadcast() for e in events])
        transaction.on_commit(lambda: [Host.close_sockets(pk, protocol.CLOSE_REVOKED, "re-enrolled", keep=lookup)
                                       for pk, lookup in replaced.items()])
        return results

    @staticmethod
    def _own_credentials(hosts, offered: list[str | None]) -> dict:
        """host pk -> the credential secret (of those offered) that is that host's current one."""
        by_lookup = {secrets.split(c, "fwh"): c for c in offered if c}
        by_lookup.pop(None, None)
        hosts = [h for h in hosts if h.pk]
        if not by_lookup or not hosts:
            return {}
        found = HostCredential.objects.filter(lookup__in=list(by_lookup), revoked_at__isnull=True,
                                              host_id__in=[h.pk for h in hosts])
        return {c.host_id: by_lookup[c.lookup] for c in found if secrets.matches(by_lookup[c.lookup], c.digest)}

    HELLO_FIELDS = ("hostname", "boot_id", "agent_version", "version", "partitions", "update_status", "channel",
                    "reboot_strategy", "policy_revision", "online", "connection_id", "last_seen")

    def connect_many(self, hellos: list[tuple]) -> list:
        """Record a batch of agent `hello`s (host_id, connection_id, message) in one transaction.

        Returns, per hello, ``(policy frame, update frame or None, host, the policy frame as JSON
        text)`` or the exception for that entry.  A batch costs a handful of statements whatever its size: a fleet reconnecting after
        a server restart is not a transaction per host.
        """
        from fleetweb.updates.models import RolloutHost

        now = timezone.now()
        with transaction.atomic():
            hosts = {h.pk: h for h in self.select_for_update(of=("self",)).filter(pk__in={e[0] for e in hellos})}
            events, results, rebooted_ids = [], [], set()
            for host_id, connection_id, msg in hellos:
                host = hosts.get(host_id)
                if host is None:
                    results.append(self.model.DoesNotExist(f"host {host_id} was deleted"))
                    continue
                rebooted = bool(host.boot_id) and host.boot_id != msg["boot_id"]
                if rebooted:
                    rebooted_ids.add(host_id)
                host.hostname = msg["hostname"][:255]
                host.boot_id = msg["boot_id"][:64]
                host.agent_version = msg["agent_version"][:32]
                host.version = (msg.get("version") or "")[:64]
                host.partitions = msg["partitions"]
                host.update_status = msg["update_status"]
                host.channel = (msg.get("group") or "")[:16]
                host.reboot_strategy = (msg.get("reboot_strategy") or "")[:16]
                if "policy_revision" in msg and host.policy_revision > msg["policy_revision"]:
                    host.policy_revision = msg["policy_revision"]  # the agent lost its state
                host.online, host.connection_id, host.last_seen = True, connection_id, now
                active = host.active_partition or {}
                events.append(Event(
                    organization_id=host.organization_id, kind=EventKind.CONNECTED, host_id=host.pk,
                    group_id=host.group_id, created=now,
                    message=f"Host {host.hostname} connected: version {host.version or '?'} on "
                            f"{active.get('label', '?')}" + (" (after a reboot)" if rebooted else ""),
                    data={"boot_id": host.boot_id, "rebooted": rebooted, "version": host.version}))
                results.append(host)
            saved = [h for h in results if isinstance(h, Host)]
            if saved:
                bulk.update_rows(self.model, self.HELLO_FIELDS, ("id",),
                                 [[getattr(h, name) for name in self.HELLO_FIELDS] + [h.pk]
                                  for h in {h.pk: h for h in saved}.values()])
                Event.objects.insert_many(events)

                def notify():
                    for e in events:
                        e.broadcast()
                    for h in saved:
                        _host_changed(h.organization_id, h.pk)
                transaction.on_commit(notify)
            groups = {g.pk: g for g in Group.objects.select_related("channel", "organization")
                      .filter(pk__in={h.group_id for h in saved})}
            policies = {gid: g.policy() for gid, g in groups.items()}
            encoded = {gid: protocol.dumps(policy) for gid, policy in policies.items()}
            grants = {}
            for rh in RolloutHost.objects.in_flight_for_hosts([h.pk for h in saved]):
                grants.setdefault(rh.host_id, rh)
            out = []
            for item in results:
                if not isinstance(item, Host):
                    out.append(item)
                    continue
                rh = grants.get(item.pk)
                if rh is not None and (item.pk in rebooted_ids or rh.rollout.release.version == item.version):
                    # Re-offer a grant only to an agent that restarted within the same boot (it resumes
                    # its download).  After a reboot the install happened: its report is on the way,
                    # possibly still queued on the old socket.
                    rh = None
                update = rh.update_frame() if rh is not None else None
                item.group = groups[item.group_id]
                extras = policy_extras.host_fields(item)
                policy = {**policies[item.group_id], **extras}
                # Encoded here, once per group when the host adds nothing of its own: not on the
                # event loop once per host (a quarter of the loop's time when 10,000 agents say hello).
                out.append((policy, update, item, protocol.dumps(policy) if extras else encoded[item.group_id]))
            return out

    def expected_state(self, host_ids) -> dict:
        """What the server expects of each host's agent, for reconciliation on heartbeats (issue 10
        §3): ``{host_id: {"revision": its group's policy revision, "grant": (rollout id, version) of
        an unfinished grant or None, "reported": {policy field: value} of the fields agents report
        back (the cloud-config revision)}}``.  A few queries for a whole batch of heartbeats: three,
        and one per group for the reported fields."""
        from fleetweb.updates.models import RolloutHost

        rows = list(self.filter(pk__any=list(host_ids)).order_by()
                    .values_list("pk", "group_id", "group__policy_revision"))
        reported = {group.pk: policy_extras.reported_fields(group)
                    for group in Group.objects.filter(pk__in={group_id for _pk, group_id, _rev in rows})}
        own = policy_extras.reported_host_fields([pk for pk, _group_id, _rev in rows])
        out = {pk: {"revision": revision, "grant": None,
                    "reported": {**reported.get(group_id, {}), **own.get(pk, {})}}
               for pk, group_id, revision in rows}
        for rh in RolloutHost.objects.in_flight_for_hosts(list(out)):
            if out[rh.host_id]["grant"] is None:  # newest first
                out[rh.host_id]["grant"] = (rh.rollout_id, rh.rollout.release.version)
        return out

    def resend_frames(self, requests: list[tuple]) -> list[list[dict]]:
        """The frames agents missed, for a batch of reconciliations ``(host_id, policy, rollout_id)``:
        per request its policy when ``policy`` is true, and the update frame of its unfinished grant in
        ``rollout_id``; nothing for a host that is gone or a grant that finished meanwhile.  A few
        queries for the whole batch and each group's policy built once: after Redis was down during a
        switch of a 10,000-host group, every heartbeat of the next interval asks for one."""
        from fleetweb.updates.models import RolloutHost

        ids = list({host_id for host_id, _policy, _rollout in requests})
        hosts = {h.pk: h for h in self.select_related("group__channel", "group__organization")
                 .filter(pk__any=ids)}
        policies: dict = {}
        grants = {(rh.host_id, rh.rollout_id): rh
                  for rh in RolloutHost.objects.in_flight_for_hosts(
                      [host_id for host_id, _policy, rollout in requests if rollout is not None and host_id in hosts])}
        out = []
        for host_id, policy, rollout_id in requests:
            host = hosts.get(host_id)
            frames = []
            if host is not None and policy:
                if host.group_id not in policies:
                    policies[host.group_id] = host.group.policy()
                frames.append({**policies[host.group_id], **policy_extras.host_fields(host)})
            rh = grants.get((host_id, rollout_id)) if host is not None and rollout_id is not None else None
            if rh is not None:
                frames.append(rh.update_frame())      # with what is left of its update timeout
            out.append(frames)
        return out

    def reap_offline(self, now=None) -> int:
        """Mark offline every host silent for too long: an agent's host (it holds a connection) after
        FLEET_OFFLINE_AFTER without a heartbeat, a host that only checks in over Omaha after
        FLEET_OMAHA_OFFLINE_AFTER without a check."""
        from django.conf import settings

        now = now or timezone.now()
        count = 0
        for silent, after, what in (
                (Q(connection_id__isnull=False), settings.FLEET_OFFLINE_AFTER, "heartbeat"),
                (Q(connection_id__isnull=True), settings.FLEET_OMAHA_OFFLINE_AFTER, "update check")):
            stale = self.filter(silent, online=True, last_seen__lt=now - timedelta(seconds=after))
            for pk, org_id, hostname, group_id in list(stale.values_list("pk", "organization_id", "hostname",
                                                                         "group_id")):
                with transaction.atomic():
                    if stale.filter(pk=pk).update(online=False, connection_id=None):
                        count += 1
                        Event.objects.record(org_id, EventKind.WENT_OFFLINE,
                                             f"Host {hostname} went offline: no {what} for {after} s",
                                             host_id=pk, group_id=group_id)
                        transaction.on_commit(lambda pk=pk, org_id=org_id: _host_changed(org_id, pk))
        return count


def _host_changed(organization_id: int, host_id) -> None:
    from fleetweb.core import live

    live.to_ui(organization_id, {"kind": "host", "host": str(host_id)})


class Host(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="hosts")
    group = models.ForeignKey(Group, on_delete=models.PROTECT, related_name="hosts")
    machine_id = models.CharField(max_length=64)
    hostname = models.CharField(max_length=255)
    boot_id = models.CharField(max_length=64, blank=True)
    agent_version = models.CharField(max_length=32, blank=True)
    address = models.GenericIPAddressField(null=True, blank=True)
    version = models.CharField(max_length=64, blank=True, db_index=True)
    channel = models.CharField(max_length=16, blank=True, help_text="GROUP= as reported from update.conf")
    reboot_strategy = models.CharField(max_length=16, blank=True, help_text="REBOOT_STRATEGY= as reported")
    update_status = models.CharField(max_length=32, default="IDLE")
    partitions = models.JSONField(default=list, blank=True)
    policy_revision = models.PositiveIntegerField(default=0, help_text="Policy revision the agent applied")
    status_seq = models.BigIntegerField(default=0, help_text="Sequence number of the last status persisted")
    online = models.BooleanField(default=False)
    connection_id = models.UUIDField(null=True, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    registered_at = models.DateTimeField(default=timezone.now)
    reenrollment_allowed_until = models.DateTimeField(
        null=True, blank=True, help_text="An operator allowed one re-enrollment of this machine id until then")

    objects = HostManager()

    class Meta:
        ordering = ["hostname", "id"]
        constraints = [models.UniqueConstraint(fields=["organization", "machine_id"], name="unique_machine")]
        indexes = [
            models.Index(fields=["organization", "hostname", "id"], name="host_org_hostname"),
            models.Index(fields=["organization", "online"], name="host_org_online"),
            models.Index(fields=["organization", "group"], name="host_org_group"),
            models.Index(fields=["machine_id"], name="host_machine_id"),  # Omaha check-ins
        ]

    def __str__(self) -> str:
        return self.hostname

    @property
    def policy_applied(self) -> bool:
        return self.policy_revision >= self.group.policy_revision

    @property
    def active_partition(self) -> dict | None:
        return next((p for p in self.partitions if p.get("active")), None)

    def move_to(self, group: Group, actor: str = "") -> bool:
        """Put the host in another group of its organization and push that group's policy to it.

        The group's revision is not bumped: only this host has to catch up, so its applied
        revision goes back to 0 until the agent acknowledges the new policy.
        """
        if group.organization_id != self.organization_id:
            raise ValidationError({"group": ["Unknown group."]})
        if group.pk == self.group_id:
            return False
        old_name = self.group.name
        self.group = group
        self.policy_revision = 0
        with transaction.atomic():
            self.save(update_fields=["group", "policy_revision"])
            Event.objects.record(self.organization_id, EventKind.GROUP_CHANGED,
                                 f"Host {self.hostname} moved from group {old_name} to {group.name}",
                                 host=self, group=group, actor=actor, data={"from": old_name, "to": group.name})
            frame = self.policy()
            transaction.on_commit(lambda: self._push(frame))
        return True

    def policy(self) -> dict:
        """The group's policy plus what only this host may see (its own etcd credentials)."""
        return {**self.group.policy(), **policy_extras.host_fields(self)}

    def rotate_etcd_credentials(self, actor: str = "") -> None:
        """New etcd password for this host, pushed to it; ``EtcdAuthDisabled`` without etcd auth."""
        from fleetweb.reboots.models import HostEtcdAccount

        HostEtcdAccount.objects.rotate(self, actor)

    def revoke_etcd_access(self, actor: str = "", reason: str = "") -> bool:
        """Delete the host's etcd user (its password stops working at once); logged.  Returns
        whether there was one."""
        from fleetweb.reboots.models import HostEtcdAccount

        account = HostEtcdAccount.objects.filter(host=self).first()
        if account is None:
            return False
        account.remove()
        Event.objects.record(self.organization_id, EventKind.ETCD_ACCESS_REVOKED,
                             f"etcd user {account.username} of host {self.hostname} deleted"
                             + (f": {reason}" if reason else ""),
                             group=self.group, actor=actor, data={"host": str(self.pk), "reason": reason})
        return True

    def _push(self, frame: dict) -> None:
        from fleetweb.core import hub

        hub.publish(f"host:{self.pk}", frame)
        _host_changed(self.organization_id, self.pk)

    def delete_with_event(self, actor: str = "") -> None:
        host_id = self.pk
        try:
            self.revoke_etcd_access(actor, "host deleted")
        except Exception as exc:  # etcd down: reconcile_etcd_accounts removes the user later
            log.warning("etcd user of host %s not deleted: %s", self.pk, exc)
        with transaction.atomic():
            Event.objects.record(self.organization_id, EventKind.HOST_DELETED, f"Host {self.hostname} deleted",
                                 group=self.group, actor=actor, data={"host": str(self.pk)})
            self.delete()
            transaction.on_commit(lambda: Host.close_sockets(host_id, protocol.CLOSE_REVOKED, "host deleted"))

    # -- enrollment and revocation -------------------------------------------------------------
    def reenrollment_grant(self, token: "EnrollmentToken", own_credential: bool, now) -> str | None:
        """Why this already-enrolled machine id may register again with ``token``, or None.

        A re-registration hands out a new credential and the host's configuration, so it needs
        more than any token of the organization."""
        if own_credential:
            return "own credential"
        if self.reenrollment_allowed_until and self.reenrollment_allowed_until > now:
            return "allowed by an operator"
        if token.replace_existing:
            return "token may replace existing hosts"
        return None

    def allow_reenrollment(self, actor: str = "", seconds: int | None = None) -> None:
        """One re-registration of this machine id with any token of the organization, within the window."""
        seconds = seconds or settings.FLEET_REENROLLMENT_WINDOW
        self.reenrollment_allowed_until = timezone.now() + timedelta(seconds=seconds)
        with transaction.atomic():
            self.save(update_fields=["reenrollment_allowed_until"])
            Event.objects.record(self.organization_id, EventKind.REENROLLMENT_ALLOWED,
                                 f"Re-enrollment of host {self.hostname} allowed for {seconds // 60} min",
                                 host=self, group_id=self.group_id, actor=actor,
                                 data={"until": self.reenrollment_allowed_until.isoformat()})

    def revoke_credentials(self, actor: str = "", reason: str = "credential revoked") -> int:
        """Void every credential of the host and close its live sockets (any web process)."""
        host_id = self.pk
        with transaction.atomic():
            n = HostCredential.objects.filter(host=self, revoked_at__isnull=True).update(revoked_at=timezone.now())
            Event.objects.record(self.organization_id, EventKind.CREDENTIAL_REVOKED,
                                 f"Credential of host {self.hostname} revoked", host=self,
                                 group_id=self.group_id, actor=actor, data={"revoked": n, "reason": reason})
            transaction.on_commit(lambda: Host.close_sockets(host_id, protocol.CLOSE_REVOKED, reason))
        try:  # its etcd password too (a re-enrolled host gets a fresh one with its next policy)
            self.revoke_etcd_access(actor, reason)
        except Exception as exc:  # etcd down: the user keeps working until rotated or the host deleted
            log.warning("etcd user of host %s not deleted: %s", self.pk, exc)
        return n

    @staticmethod
    def close_sockets(host_id, code: int, reason: str, keep: str | None = None) -> None:
        """Close the host's agent sockets in every web process, but one using credential ``keep``."""
        from fleetweb.core import hub

        hub.close(f"host:{host_id}", code, reason, keep=keep)


class AgentLogin(NamedTuple):
    """What an agent's socket needs of its host when it connects (no model instances: a reconnect
    storm checks 10,000 credentials in a few batches, and a host, group and channel instance per
    credential was most of that time)."""

    host_id: uuid.UUID
    organization_id: int
    group_id: int
    hostname: str
    update_status: str
    version: str
    status_seq: int


class HostCredentialManager(models.Manager):
    def authenticate(self, secret: str) -> Host | None:
        """The host of a presented credential (None: unknown, revoked or wrong), with its group."""
        lookup = secrets.split(secret, "fwh")
        if lookup is None:
            return None
        cred = (self.select_related("host", "host__group", "host__group__channel")
                .filter(lookup=lookup, revoked_at__isnull=True).first())
        return cred.host if cred is not None and secrets.matches(secret, cred.digest) else None

    def authenticate_many(self, presented: list[str]) -> list[AgentLogin | None]:
        """The host of each presented credential (None: unknown, revoked or wrong), in one query
        for a whole batch: a fleet reconnecting after a restart is not a query per agent."""
        lookups = [secrets.split(secret, "fwh") for secret in presented]
        rows = (self.filter(lookup__in={lk for lk in lookups if lk is not None}, revoked_at__isnull=True)
                .order_by().values_list("lookup", "digest", *(f"host__{name}" for name in LOGIN_FIELDS)))
        creds = {row[0]: row for row in rows}
        out = []
        for secret, lookup in zip(presented, lookups, strict=True):
            row = creds.get(lookup) if lookup is not None else None
            out.append(AgentLogin(*row[2:]) if row is not None and secrets.matches(secret, row[1]) else None)
        return out


LOGIN_FIELDS = ("id", "organization_id", "group_id", "hostname", "update_status", "version", "status_seq")


class HostCredential(models.Model):
    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="credentials")
    lookup = models.CharField(max_length=12, unique=True)
    digest = models.CharField(max_length=64)
    created = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = HostCredentialManager()
