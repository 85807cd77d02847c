"""Channels, releases, signing keys and rollouts: the update rules of the product.

A release goes onto a channel (publish, promote from the channel before it, or an explicit
rollback); that starts one rollout per group following the channel.  A rollout grants hosts in
waves under the group's policy (updates on/off, K per period, M in flight, timeout, safe mode,
failure threshold).  Grants are claimed with conditional UPDATEs under a row lock on the rollout,
so two workers never grant one host twice or exceed the policy.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import Count, DateTimeField, ExpressionWrapper, F, Q
from django.utils import timezone
from kombu.exceptions import OperationalError

from agent import signing
from fleetweb.core import secrets
from fleetweb.fleet.choices import EventKind
from fleetweb.fleet.models import Event

from .choices import ChannelAction, ChannelName, HostUpdateState, RolloutStatus

log = logging.getLogger(__name__)

# 2 to 4 numbers, then semver's pre-release and build parts: Flatcar's nightlies report
# 3815.0.0+nightly-20231222-2100 (nebraska takes any semver; ours refused the hyphens after "+").
VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+){1,3}(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
CHUNK = 1024 * 1024


class UpdateError(Exception):
    """A refused update action; ``field`` names the input to fix, ``status`` the HTTP status."""

    def __init__(self, message: str, field: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.field, self.status = message, field, status


# ---------------------------------------------------------------------------------------------
# Signing keys
# ---------------------------------------------------------------------------------------------

def _fernet():
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    secret = (settings.FLEET_ENCRYPTION_KEY or settings.SECRET_KEY).encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fleetweb-signing-keys").derive(secret)
    return Fernet(base64.urlsafe_b64encode(key))


class SigningKeyManager(models.Manager):
    def active(self, organization) -> "SigningKey | None":
        return self.filter(organization=organization, retired_at__isnull=True).order_by("-created").first()

    def trust_fields(self, organization) -> dict:
        """What an agent needs to pin and follow the key: the current key, its fingerprint and the
        chain of endorsements (oldest first, bounded) that leads to it. One query."""
        keys = list(self.filter(organization=organization).order_by("-created", "-pk")[:signing.MAX_KEY_CHAIN])
        current = next((k for k in keys if k.retired_at is None), None)
        if current is None:
            return {}
        chain = [{"public_key": k.public_key, "endorsement": k.endorsement} for k in reversed(keys)
                 if k.created <= current.created]
        fields = {"signing_key": current.public_key, "signing_key_id": current.key_id,
                  "signing_key_hash": signing.fingerprint(current.public_key), "signing_key_chain": chain}
        if current.endorsement:
            fields["signing_key_endorsement"] = current.endorsement
        return fields

    def ensure(self, organization) -> "SigningKey":
        return self.active(organization) or self.generate(organization)

    def generate(self, organization) -> "SigningKey":
        raw, public = signing.generate()
        return self.create(organization=organization, public_key=public, key_id=signing.key_id(public),
                           private_encrypted=_fernet().encrypt(raw).decode())

    @transaction.atomic
    def rotate(self, organization, actor: str = "") -> "SigningKey":
        """Retire the current key and make a new one; agents must be told explicitly (policy)."""
        from fleetweb.fleet.choices import EventKind
        from fleetweb.fleet.models import Event

        old = self.active(organization)
        self.filter(organization=organization, retired_at__isnull=True).update(retired_at=timezone.now())
        new = self.generate(organization)
        if old is not None:
            # The old key vouches for the new one: that is what lets agents that pinned it follow.
            new.endorsement = signing.endorse(_fernet().decrypt(old.private_encrypted.encode()), new.public_key)
            new.save(update_fields=["endorsement"])
        for group in organization.groups.all():
            group.apply_changes({}, actor=actor, force_push=True)
        Event.objects.record(organization.pk, EventKind.KEY_ROTATED,
                             f"Release signing key rotated: {old.key_id if old else 'none'} → {new.key_id}",
                             actor=actor, data={"old": old.key_id if old else None, "new": new.key_id})
        return new


class SigningKey(models.Model):
    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="signing_keys")
    key_id = models.CharField(max_length=16)
    public_key = models.CharField(max_length=64)
    private_encrypted = models.TextField(help_text="Ed25519 private key, Fernet-encrypted at rest")
    endorsement = models.TextField(blank=True, help_text="signature of this public key by the key it replaced")
    created = models.DateTimeField(default=timezone.now)
    retired_at = models.DateTimeField(null=True, blank=True)

    objects = SigningKeyManager()

    def __str__(self) -> str:
        return self.key_id

    def sign(self, version: str, size: int, sha256: str) -> str:
        raw = _fernet().decrypt(self.private_encrypted.encode())
        return signing.sign(raw, version, size, sha256)


# ---------------------------------------------------------------------------------------------
# Releases
# ---------------------------------------------------------------------------------------------

class ReleaseManager(models.Manager):
    def create_from_upload(self, organization, version: str, payload, *, size: int | None = None,
                           sha256: str | None = None, notes: str = "", actor: str = "") -> "Release":
        """Stream an uploaded payload to the store, check it against the declared size and hash,
        sign it and record it.  On any refusal nothing is stored (no row, no file)."""
        from fleetweb.fleet.choices import EventKind
        from fleetweb.fleet.models import Event

        version = (version or "").strip()
        if not VERSION_RE.match(version):
            raise UpdateError(f"'{version}' is not a version like 1234.5.6", "version")
        if self.filter(organization=organization, version=version).exists():
            raise UpdateError(f"release {version} already exists", "version", status=409)
        if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            raise UpdateError("sha256 must be 64 hexadecimal characters", "sha256")
        store = Path(settings.FLEET_MEDIA_ROOT) / "releases" / organization.slug
        store.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=store, prefix=".upload-")
        try:
            digest, written = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out:
                for chunk in (payload.chunks(CHUNK) if hasattr(payload, "chunks") else iter(
                        lambda: payload.read(CHUNK), b"")):
                    digest.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
            actual = digest.hexdigest()
            if written == 0:
                raise UpdateError("the payload is empty", "payload")
            if size is not None and size != written:
                raise UpdateError(f"declared size {size} does not match the payload ({written} bytes)", "size")
            if sha256 is not None and sha256.lower() != actual:
                raise UpdateError(f"declared sha256 {sha256[:12]}… does not match the payload ({actual[:12]}…)",
                                  "sha256")
            final = store / f"{actual}.usr"
            with transaction.atomic():
                key = SigningKey.objects.ensure(organization)
                release = self.create(organization=organization, version=version, size=written, sha256=actual,
                                      signature=key.sign(version, written, actual), signing_key=key,
                                      payload=str(final.relative_to(settings.FLEET_MEDIA_ROOT)), notes=notes,
                                      created_by=actor)
                Event.objects.record(organization.pk, EventKind.RELEASE_CREATED,
                                     f"Release {version} uploaded ({written} bytes, sha256 {actual[:12]}…, "
                                     f"key {key.key_id})", actor=actor,
                                     data={"release": version, "size": written, "sha256": actual})
                os.replace(tmp, final)
            return release
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


class Release(models.Model):
    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="releases")
    version = models.CharField(max_length=64)
    payload = models.CharField(max_length=255, help_text="path under FLEET_MEDIA_ROOT")
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    signature = models.CharField(max_length=128)
    signing_key = models.ForeignKey(SigningKey, on_delete=models.PROTECT, related_name="releases")
    notes = models.TextField(blank=True)
    created_by = models.CharField(max_length=150, blank=True)
    created = models.DateTimeField(default=timezone.now)

    objects = ReleaseManager()

    class Meta:
        ordering = ["-created", "-id"]
        constraints = [models.UniqueConstraint(fields=["organization", "version"], name="unique_release_version")]

    def __str__(self) -> str:
        return self.version

    @property
    def path(self) -> Path:
        return Path(settings.FLEET_MEDIA_ROOT) / self.payload

    @property
    def version_key(self) -> tuple:
        return signing.version_key(self.version)

    def download_url(self, host_id, ttl: int | None = None) -> str:
        """A per-host URL that expires; the signature binds release, host and expiry."""
        expires = int(time.time()) + (ttl or settings.FLEET_PAYLOAD_URL_TTL)
        sig = payload_signature(self.pk, str(host_id), expires)
        return f"{settings.FLEET_PUBLIC_URL}/payloads/{self.pk}/{host_id}/{expires}/{sig}"

    def is_update_for(self, version: str, allow_downgrade: bool = False) -> bool:
        """Whether a host running ``version`` would install this release: never the version it runs,
        never an older one unless the rollout allows downgrade (a host that reports no version may)."""
        if not version:
            return True
        running = signing.version_key(version)
        return running != self.version_key and (running < self.version_key or allow_downgrade)

    def update_frame(self, host_id, rollout_id: int | None = None, allow_downgrade: bool = False,
                     timeout: int | None = None) -> dict:
        """The ``update`` frame for one host.  ``timeout``: seconds the agent may keep retrying a broken
        download (what is left of the update timeout); the URL stays valid at least that long."""
        ttl = max(settings.FLEET_PAYLOAD_URL_TTL, timeout) if timeout else None
        frame = {"type": "update", "version": self.version, "url": self.download_url(host_id, ttl),
                 "size": self.size, "sha256": self.sha256, "signature": self.signature}
        if rollout_id is not None:
            frame["rollout"] = rollout_id
        if allow_downgrade:
            frame["allow_downgrade"] = True
        if timeout:
            frame["timeout"] = timeout
        return frame


def payload_signature(release_id: int, host_id: str, expires: int) -> str:
    key = hashlib.sha256(b"fleetweb-payload-url:" + settings.SECRET_KEY.encode()).digest()
    msg = f"{release_id}:{host_id}:{expires}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:32]


def payload_signature_ok(release_id: int, host_id: str, expires: int, sig: str) -> bool:
    return expires >= time.time() and hmac.compare_digest(payload_signature(release_id, host_id, expires), sig)


# ---------------------------------------------------------------------------------------------
# Channels
# ---------------------------------------------------------------------------------------------

class ChannelManager(models.Manager):
    def create_defaults(self, organization) -> list["Channel"]:
        return [self.get_or_create(organization=organization, name=c.value,
                                   defaults={"position": i})[0]
                for i, c in enumerate(ChannelName)]


class Channel(models.Model):
    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="channels")
    name = models.CharField(max_length=16, choices=ChannelName.choices)
    position = models.PositiveSmallIntegerField(default=0)
    current_release = models.ForeignKey(Release, null=True, blank=True, on_delete=models.PROTECT,
                                        related_name="current_on")
    created = models.DateTimeField(default=timezone.now)

    objects = ChannelManager()

    class Meta:
        ordering = ["position"]
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="unique_channel_name")]

    def __str__(self) -> str:
        return self.name

    @property
    def colour(self) -> str:
        return ChannelName.colour(self.name)

    @property
    def previous(self) -> "Channel | None":
        name = ChannelName.before(self.name)
        return Channel.objects.filter(organization_id=self.organization_id, name=name).first() if name else None

    @transaction.atomic
    def publish(self, release: Release, actor: str = "", *, action: str = ChannelAction.PUBLISH,
                override: bool = False) -> list["Rollout"]:
        """Put a release on this channel and start a rollout for every group following it."""
        from fleetweb.fleet.models import Event

        if release.organization_id != self.organization_id:
            raise UpdateError("Unknown release.", "release", status=404)
        channel = Channel.objects.select_for_update().get(pk=self.pk)
        current = channel.current_release
        if current is not None and current.pk == release.pk:
            raise UpdateError(f"{release.version} is already the current release of {self.name}", "release",
                              status=409)
        downgrade = current is not None and release.version_key < current.version_key
        if downgrade and action != ChannelAction.ROLLBACK:
            raise UpdateError(f"{release.version} is older than {current.version} on {self.name}: "
                              f"use an explicit rollback to go back", "release", status=409)
        self.current_release = release
        self.save(update_fields=["current_release"])
        ChannelRelease.objects.create(channel=self, release=release, action=action, actor=actor, override=override,
                                      previous=current)
        Event.objects.record(self.organization_id, f"release_{action}",
                             f"{ChannelAction(action).label} {release.version} on {self.name}"
                             + (f" (was {current.version})" if current else "")
                             + (" — override of a failed rollout" if override else ""),
                             actor=actor, data={"channel": self.name, "release": release.version,
                                                "previous": current.version if current else None,
                                                "override": override})
        return [Rollout.objects.start(group, release, actor=actor, allow_downgrade=downgrade)
                for group in self.groups.all()]

    def promote(self, actor: str = "", *, override: bool = False) -> list["Rollout"]:
        """Take the release of the channel before this one (alpha → beta → stable).

        Refused when that release's rollout failed or was halted on the source channel, unless an
        admin overrides explicitly (the override is logged)."""
        source = self.previous
        if source is None:
            raise UpdateError(f"{self.name} is the first channel: publish to it instead", "channel")
        release = source.current_release
        if release is None:
            raise UpdateError(f"{source.name} has no release to promote", "channel", status=409)
        bad = Rollout.objects.filter(release=release, channel=source,
                                     status__in=[RolloutStatus.HALTED, RolloutStatus.ABORTED]).first()
        if bad is not None and not override:
            raise UpdateError(f"{release.version} {bad.get_status_display().lower()} on {source.name} "
                              f"(group {bad.group.name}): an admin must override to promote it", "override",
                              status=409)
        return self.publish(release, actor, action=ChannelAction.PROMOTE, override=bad is not None)

    def rollback(self, release: Release, actor: str = "") -> list["Rollout"]:
        """Explicitly go back to a release this channel had before (hosts may downgrade)."""
        if not self.history.filter(release=release).exists():
            raise UpdateError(f"{release.version} was never on {self.name}", "release")
        return self.publish(release, actor, action=ChannelAction.ROLLBACK)


class ChannelRelease(models.Model):
    """The history of a channel: which release it pointed at, when, and who put it there."""
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="history")
    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="channel_history")
    previous = models.ForeignKey(Release, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    action = models.CharField(max_length=16, choices=ChannelAction.choices)
    override = models.BooleanField(default=False)
    actor = models.CharField(max_length=150, blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created", "-id"]


# ---------------------------------------------------------------------------------------------
# Rollouts
# ---------------------------------------------------------------------------------------------

class RolloutManager(models.Manager):
    def start(self, group, release: Release, *, actor: str = "", allow_downgrade: bool = False) -> "Rollout":
        """A new rollout of ``release`` to ``group``; older active rollouts of the group are superseded."""
        from fleetweb.fleet.models import Event

        self.filter(group=group, status__in=RolloutStatus.active()).update(
            status=RolloutStatus.SUPERSEDED, finished=timezone.now())
        rollout = self.create(organization_id=group.organization_id, group=group, release=release,
                              channel_id=group.channel_id, allow_downgrade=allow_downgrade, created_by=actor)
        rows = [RolloutHost(rollout=rollout, host_id=host_id, from_version=version or "")
                for host_id, version in group.hosts.values_list("pk", "version")
                if release.is_update_for(version, allow_downgrade)]
        RolloutHost.objects.bulk_create(rows)
        Event.objects.record(group.organization_id, "rollout_started",
                             f"Rollout of {release.version} to group {group.name} started ({len(rows)} hosts)",
                             group=group, actor=actor, data={"rollout": rollout.pk, "release": release.version})
        if not rows:
            rollout.finish_if_done()
        transaction.on_commit(lambda: _enqueue_advance(rollout.pk))
        return rollout


def _enqueue_advance(rollout_id: int) -> None:
    """Advance a rollout now (a Celery task).  Without a broker (Redis down) the change that asked
    for it still stands: beat advances every running rollout every few seconds once Redis is back."""
    from .tasks import advance_rollout

    try:
        advance_rollout.apply_async((rollout_id,), retry=False)
    except (OperationalError, OSError) as exc:
        log.warning("rollout %s: could not queue its next step (%s); the periodic advance will", rollout_id, exc)


class Rollout(models.Model):
    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="rollouts")
    group = models.ForeignKey("fleet.Group", on_delete=models.CASCADE, related_name="rollouts")
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="rollouts")
    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="rollouts")
    status = models.CharField(max_length=16, choices=RolloutStatus.choices, default=RolloutStatus.RUNNING)
    allow_downgrade = models.BooleanField(default=False)
    halted_reason = models.CharField(max_length=500, blank=True)
    created_by = models.CharField(max_length=150, blank=True)
    created = models.DateTimeField(default=timezone.now)
    finished = models.DateTimeField(null=True, blank=True)

    objects = RolloutManager()

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["status"], name="rollout_status")]

    def __str__(self) -> str:
        return f"{self.release} → {self.group}"

    @property
    def colour(self) -> str:
        return RolloutStatus.colour(self.status)

    def counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in HostUpdateState}
        for row in self.hosts.values("state").annotate(n=Count("id")):
            counts[row["state"]] = row["n"]
        counts["total"] = sum(counts[s.value] for s in HostUpdateState)
        counts["in_flight"] = sum(counts[s] for s in HostUpdateState.in_flight())
        counts["failed_total"] = sum(counts[s] for s in HostUpdateState.failed())
        counts["done"] = sum(counts[s] for s in HostUpdateState.done())
        return counts

    # -- named state changes (each refuses to run twice) -----------------------------------
    def _transition(self, to: str, allowed: tuple[str, ...], actor: str, reason: str = "") -> bool:
        from fleetweb.fleet.models import Event

        fields = {"status": to}
        if to in (RolloutStatus.ABORTED, RolloutStatus.HALTED, RolloutStatus.COMPLETED):
            fields["finished"] = timezone.now()
        if to == RolloutStatus.HALTED:
            fields["halted_reason"] = reason[:500]
        with transaction.atomic():
            if Rollout.objects.filter(pk=self.pk, status__in=allowed).update(**fields) != 1:
                return False
            for k, v in fields.items():
                setattr(self, k, v)
            Event.objects.record(self.organization_id, f"rollout_{to}",
                                 f"Rollout of {self.release.version} to group {self.group.name} {to}"
                                 + (f": {reason}" if reason else ""),
                                 group_id=self.group_id, actor=actor, data={"rollout": self.pk})
            transaction.on_commit(lambda: self.broadcast())
        return True

    def pause(self, actor: str = "") -> bool:
        return self._transition(RolloutStatus.PAUSED, (RolloutStatus.RUNNING,), actor)

    def resume(self, actor: str = "") -> bool:
        ok = self._transition(RolloutStatus.RUNNING, (RolloutStatus.PAUSED, RolloutStatus.HALTED), actor)
        if ok:
            transaction.on_commit(lambda: _enqueue_advance(self.pk))
        return ok

    def abort(self, actor: str = "") -> bool:
        return self._transition(RolloutStatus.ABORTED, RolloutStatus.active() + (RolloutStatus.HALTED,), actor)

    def halt(self, reason: str) -> bool:
        return self._transition(RolloutStatus.HALTED, (RolloutStatus.RUNNING,), "", reason)

    def finish_if_done(self) -> bool:
        if self.hosts.exclude(state__in=HostUpdateState.done()).exists():
            return False
        return self._transition(RolloutStatus.COMPLETED, (RolloutStatus.RUNNING,), "")

    def broadcast(self) -> None:
        from fleetweb.core import live

        live.to_ui(self.organization_id, {"kind": "rollout", "rollout": self.pk, "group": self.group_id})

    # -- the wave --------------------------------------------------------------------------
    def failure_threshold_reached(self, counts: dict) -> bool:
        group = self.group
        failed = counts["failed_total"]
        if failed == 0:
            return False
        if group.failure_threshold_percent:
            return counts["total"] > 0 and failed * 100 >= group.failure_threshold * counts["total"]
        return failed >= max(group.failure_threshold, 1)

    def advance(self, now=None, checking_host=None) -> list["RolloutHost"]:
        """Time out stuck hosts, halt on failures, grant the next wave.  Safe to run concurrently:
        the rollout row is locked, and each grant is a conditional UPDATE on the host's row.

        A wave grants hosts that can be told now: an agent's host while it is connected, and
        CHECKING_HOST, an Omaha host in the middle of its update check (between checks it counts as
        online but nothing can reach it, and a grant would hold a slot until its next check)."""
        from fleetweb.core import hub

        with transaction.atomic():
            rollout = Rollout.objects.select_for_update(of=("self",)).select_related("group", "release").get(pk=self.pk)
            if rollout.status != RolloutStatus.RUNNING:
                return []
            group = rollout.group
            for rh in rollout.hosts.timed_out(group.update_timeout, now or timezone.now()):
                rh.finish(HostUpdateState.FAILED, rh.timeout_error(group.update_timeout))
            counts = rollout.counts()
            # Grants are stamped by a clock read after the counts: a finish those counts saw had
            # committed, so its finished_at is earlier and a slot is never shown granted before it was
            # freed (the recorded timeline is how the policy is audited).
            now = now or timezone.now()
            if rollout.failure_threshold_reached(counts):
                rollout.halt(f"{counts['failed_total']} of {counts['total']} hosts failed "
                             f"(threshold {group.failure_threshold}{'%' if group.failure_threshold_percent else ''})")
                return []
            if counts["done"] == counts["total"]:
                rollout.finish_if_done()
                return []
            if not group.updates_enabled:
                return []
            slots = group.max_in_flight - counts["in_flight"]
            if group.safe_mode and counts["succeeded"] == 0:
                slots = 0 if counts["in_flight"] else 1  # the first host updates alone
            if group.max_updates_per_period:
                since = now - timedelta(seconds=group.update_period)
                recent = RolloutHost.objects.filter(rollout__group=group, granted_at__gte=since).count()
                slots = min(slots, group.max_updates_per_period - recent)
            if slots <= 0:
                return []
            reachable = Q(host__online=True, host__connection_id__isnull=False)
            if checking_host is not None:
                reachable |= Q(host_id=checking_host)
            candidates = list(rollout.hosts.filter(reachable, state=HostUpdateState.PENDING)
                              .order_by("host__hostname", "id").values_list("pk", flat=True)[:slots])
            granted = []
            for pk in candidates:
                if RolloutHost.objects.filter(pk=pk, state=HostUpdateState.PENDING).update(
                        state=HostUpdateState.GRANTED, granted_at=now, attempts=models.F("attempts") + 1) == 1:
                    granted.append(pk)
            rows = list(RolloutHost.objects.filter(pk__in=granted).select_related("host"))
            frames = [(rh.host_id, rollout.release.update_frame(rh.host_id, rollout.pk, rollout.allow_downgrade,
                                                                group.update_timeout)) for rh in rows]

            def send():
                for host_id, frame in frames:
                    hub.publish(f"host:{host_id}", frame)
                rollout.broadcast()
            transaction.on_commit(send)
            return rows


AGENT_EVENT_OUTCOMES = {
    # agent event kind → (final?, state)
    "update_installed": (False, HostUpdateState.NEED_REBOOT),
    "rebooting": (False, HostUpdateState.REBOOTING),
    "booted_new_version": (True, HostUpdateState.SUCCEEDED),
    "already_current": (True, HostUpdateState.SKIPPED),
    "rollback": (True, HostUpdateState.ROLLED_BACK),
    "update_error": (True, HostUpdateState.FAILED),
}


class RolloutHostQuerySet(models.QuerySet):
    def timed_out(self, update_timeout: int, now) -> models.QuerySet:
        """In-flight entries past the update timeout.  The clock runs from the grant but stops while
        the host waits for a reboot lock another host holds (``lock_wait_since``; earlier waits add up
        in ``lock_waited``): a waiting host is failed only when it is itself silent (no heartbeat)
        for the update timeout.  A stuck holder is the lock's business (GroupLock.is_stuck)."""
        limit = now - timedelta(seconds=update_timeout)
        return (self.filter(state__in=HostUpdateState.in_flight())
                .alias(clock_start=ExpressionWrapper(F("granted_at") + F("lock_waited"), output_field=DateTimeField()))
                .filter(Q(lock_wait_since__isnull=True, clock_start__lt=limit)
                        | Q(lock_wait_since__isnull=False, host__last_seen__lt=limit)))

    def end_lock_wait(self) -> int:
        """Stop the wait for the reboot lock of these entries: its length is added to ``lock_waited``."""
        return self.filter(lock_wait_since__isnull=False).update(
            lock_waited=F("lock_waited") + (timezone.now() - F("lock_wait_since")), lock_wait_since=None)


class RolloutHostManager(models.Manager.from_queryset(RolloutHostQuerySet)):
    def in_flight_for_hosts(self, host_ids) -> list["RolloutHost"]:
        """Grants a host has not finished (newest first), for many hosts in one query."""
        return list(self.select_related("rollout__release", "rollout__group")
                    .filter(host__pk__any=list(host_ids), rollout__status=RolloutStatus.RUNNING,
                            state__in=(HostUpdateState.GRANTED, HostUpdateState.DOWNLOADING,
                                       HostUpdateState.VERIFYING))
                    .order_by("-granted_at"))

    def in_flight_for(self, host_id) -> "RolloutHost | None":
        grants = self.in_flight_for_hosts([host_id])
        return grants[0] if grants else None

    @staticmethod
    def _progress(state: str, progress: float | None) -> float | None:
        """Download progress to store with a state: past DOWNLOADING the download is complete (its last
        percentage may have been merged away with the frames of one heartbeat tick)."""
        return progress if state == HostUpdateState.DOWNLOADING else 1.0

    def report_status(self, host_id, rollout_id: int, update_status: str, progress: float | None) -> bool:
        from .choices import AGENT_STATUS_TO_STATE

        state = AGENT_STATUS_TO_STATE.get(update_status)
        rh = self.filter(host_id=host_id, rollout_id=rollout_id).first()
        if state is None or rh is None:
            return False
        moved = rh.move(state, self._progress(state, progress))
        if moved:
            transaction.on_commit(lambda: rh.rollout.broadcast())
        return moved

    def complete_booted(self, partitions_of: dict) -> list:
        """Hosts whose heartbeat shows the new version booted and marked good: their rollout entry
        succeeds, as if their ``booted_new_version`` event had come.  ``partitions_of`` maps a host id
        to the partitions its status frame reported.

        The agent sends that event right after the status that shows the partition marked good; a
        web process killed between the two (or a socket cut) lost it for good, and the rollout
        waited for the entry until its update timeout failed it (tests/faults).  A late event
        changes nothing more (``finish`` records a final state once).  Returns the entries finished."""
        booted = {}
        for host_id, parts in partitions_of.items():
            active = next((p for p in parts or () if p.get("active")), None)
            if active and active.get("successful") is True and isinstance(active.get("version"), str):
                booted[host_id] = active["version"]
        if not booted:
            return []
        waiting = (self.filter(host__pk__any=list(booted), rollout__status=RolloutStatus.RUNNING,
                               state__in=(HostUpdateState.NEED_REBOOT, HostUpdateState.REBOOTING))
                   .values_list("host_id", "rollout_id", "rollout__release__version", "host__hostname",
                                "host__organization_id", "host__group_id", "from_version"))
        finished = []
        for host_id, rollout_id, version, hostname, organization_id, group_id, from_version in waiting:
            if booted.get(host_id) == version:
                rh = self.report_event(host_id, "booted_new_version", {"rollout": rollout_id, "version": version})
                if rh is not None:
                    # The activity log shows the boot once, whichever of heartbeat and event came first.
                    Event.objects.record(organization_id, EventKind.UPDATE_SUCCEEDED,
                                         f"Host {hostname}: {EventKind.UPDATE_SUCCEEDED.label.lower()} {version}",
                                         host_id=host_id, group_id=group_id,
                                         data={"kind": "booted_new_version", "rollout": rollout_id, "version": version,
                                               "previous_version": from_version or None,
                                               "partition": next(p.get("label") for p in partitions_of[host_id]
                                                                 if p.get("active")),
                                               "reported_by": "heartbeat"})
                    finished.append(rh)
        return finished

    def report_statuses(self, reports: list[tuple]) -> None:
        """Update progress of many agents, ``(host_id, connection_id, rollout_id, agent status, progress)``,
        in one statement batch inside the caller's transaction (the heartbeat group commit).

        A report moves an entry that is still in flight, and only while it comes over the host's
        current connection: the queued frames of a socket a reboot replaced change nothing."""
        from django.db import connection

        from fleetweb.fleet.models import Host

        from .choices import AGENT_STATUS_TO_STATE

        rows, rollout_ids = [], set()
        pk, conn = Host._meta.pk, Host._meta.get_field("connection_id")
        in_flight = HostUpdateState.in_flight()
        for host_id, connection_id, rollout_id, update_status, progress in reports:
            state = AGENT_STATUS_TO_STATE.get(update_status)
            if state is None or not isinstance(rollout_id, int) or isinstance(rollout_id, bool):
                continue
            host = pk.get_db_prep_save(host_id, connection)
            rows.append([state, self._progress(state, progress), host, rollout_id, *in_flight, host,
                         conn.get_db_prep_save(connection_id, connection)])
            rollout_ids.add(rollout_id)
        if not rows:
            return
        q = connection.ops.quote_name
        col = {name: q(self.model._meta.get_field(name).column) for name in ("state", "progress", "host", "rollout")}
        sql = (f"UPDATE {q(self.model._meta.db_table)} SET {col['state']} = %s, "
               f"{col['progress']} = COALESCE(%s, {col['progress']}) "
               f"WHERE {col['host']} = %s AND {col['rollout']} = %s "
               f"AND {col['state']} IN ({', '.join(['%s'] * len(in_flight))}) "
               f"AND {col['host']} IN (SELECT {q(pk.column)} FROM {q(Host._meta.db_table)} "
               f"WHERE {q(pk.column)} = %s AND {q(conn.column)} = %s)")
        with connection.cursor() as cursor:
            cursor.executemany(sql, rows)
        rollouts = list(Rollout.objects.filter(pk__in=rollout_ids).only("pk", "organization_id", "group_id"))
        transaction.on_commit(lambda: [r.broadcast() for r in rollouts])

    def report_lock(self, host_id, kind: str, data: dict) -> int:
        """An agent's ``lock_waiting`` / ``lock_acquired`` for its installed update: waiting because
        another host holds the lock (reason ``no_slots``) stops the update's clock until this host takes
        the lock; another reason (window, etcd trouble) neither starts nor ends a wait.  Agents that do
        not name the rollout: their installed, in-flight entry.  Returns the rows changed."""
        entries = self.filter(host_id=host_id, state=HostUpdateState.NEED_REBOOT)
        rollout_id = data.get("rollout")
        if isinstance(rollout_id, int) and not isinstance(rollout_id, bool):
            entries = entries.filter(rollout_id=rollout_id)
        if kind == "lock_waiting" and data.get("reason") == "no_slots":
            return entries.filter(lock_wait_since__isnull=True).update(lock_wait_since=timezone.now())
        if kind == "lock_acquired":
            return entries.end_lock_wait()
        return 0

    def report_event(self, host_id, kind: str, data: dict) -> "RolloutHost | None":
        """Apply an agent's update event to its rollout entry; returns it when something changed."""
        if kind in ("lock_waiting", "lock_acquired"):
            self.report_lock(host_id, kind, data)
            return None
        outcome = AGENT_EVENT_OUTCOMES.get(kind)
        rollout_id = data.get("rollout")
        if outcome is None or not isinstance(rollout_id, int) or isinstance(rollout_id, bool):
            return None
        rh = self.select_related("rollout").filter(host_id=host_id, rollout_id=rollout_id).first()
        if rh is None:
            return None
        final, state = outcome
        if final:
            error = ""
            if state in HostUpdateState.failed():
                error = str(data.get("reason") or data.get("message") or data.get("code") or kind)
            changed = rh.finish(state, error)
        else:
            changed = rh.move(state)
            if state == HostUpdateState.REBOOTING:     # rebooting without a lock_acquired (strategy changed)
                RolloutHost.objects.filter(pk=rh.pk).end_lock_wait()
        if changed:
            transaction.on_commit(lambda: _enqueue_advance(rollout_id))
            transaction.on_commit(lambda: rh.rollout.broadcast())
            return rh
        return None


class RolloutHost(models.Model):
    objects = RolloutHostManager()

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="hosts")
    host = models.ForeignKey("fleet.Host", on_delete=models.CASCADE, related_name="rollout_entries")
    state = models.CharField(max_length=16, choices=HostUpdateState.choices, default=HostUpdateState.PENDING)
    from_version = models.CharField(max_length=64, blank=True)
    progress = models.FloatField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0)
    error = models.CharField(max_length=500, blank=True)
    granted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The update timeout's clock stops while the installed update waits for a reboot lock another
    # host holds: since when it waits now, and how long earlier waits took.
    lock_wait_since = models.DateTimeField(null=True, blank=True)
    lock_waited = models.DurationField(default=timedelta)

    class Meta:
        ordering = ["host__hostname", "id"]
        constraints = [models.UniqueConstraint(fields=["rollout", "host"], name="unique_rollout_host")]
        indexes = [models.Index(fields=["rollout", "state"], name="rollouthost_state")]

    @property
    def colour(self) -> str:
        return HostUpdateState.colour(self.state)

    def time_left(self, update_timeout: int, now=None) -> int:
        """Seconds until the update timeout fails this entry (at least 1), its lock waits not counted."""
        used = (now or timezone.now()) - self.granted_at - self.lock_waited
        return max(1, int(update_timeout - used.total_seconds()))

    def update_frame(self, now=None) -> dict:
        """The ``update`` frame of this grant (sent again to an agent that reconnects within its boot),
        with what is left of the group's update timeout."""
        rollout = self.rollout
        return rollout.release.update_frame(self.host_id, rollout.pk, rollout.allow_downgrade,
                                            self.time_left(rollout.group.update_timeout, now))

    def timeout_error(self, update_timeout: int) -> str:
        if self.lock_wait_since is not None:
            return (f"offline for longer than the update timeout ({update_timeout} s) while waiting for the "
                    f"reboot lock")
        return f"no result within the update timeout ({update_timeout} s)"

    def finish(self, state: str, error: str = "") -> bool:
        """Record a final state once (a late duplicate report changes nothing)."""
        return RolloutHost.objects.filter(pk=self.pk).exclude(state__in=HostUpdateState.done()).update(
            state=state, error=error[:500], finished_at=timezone.now()) == 1

    def move(self, state: str, progress: float | None = None) -> bool:
        fields = {"state": state}
        if progress is not None:
            fields["progress"] = progress
        return RolloutHost.objects.filter(pk=self.pk, state__in=HostUpdateState.in_flight()).update(**fields) == 1


# ---------------------------------------------------------------------------------------------
# Omaha URLs
# ---------------------------------------------------------------------------------------------

class OmahaUrlManager(models.Manager):
    @transaction.atomic
    def rotate(self, group, actor: str = "") -> tuple["OmahaUrl", str]:
        """A new secret for the group's Omaha URL (update_engine's ``SERVER=``); the old URL
        stops working at once.  The secret is shown once."""
        new = secrets.new_secret("fwo")
        existed = self.filter(group=group).exists()
        obj, _ = self.update_or_create(group=group, defaults={
            "organization_id": group.organization_id, "lookup": new.lookup, "digest": new.digest,
            "created": timezone.now(), "created_by": actor})
        Event.objects.record(group.organization_id, EventKind.OMAHA_URL_ROTATED,
                             f"Omaha URL of group {group.name} {'rotated' if existed else 'created'} "
                             f"by {actor or 'the server'}", group=group, actor=actor)
        return obj, new.secret

    @transaction.atomic
    def revoke(self, group, actor: str = "") -> bool:
        deleted, _ = self.filter(group=group).delete()
        if deleted:
            Event.objects.record(group.organization_id, EventKind.OMAHA_URL_REVOKED,
                                 f"Omaha URL of group {group.name} revoked by {actor or 'the server'}",
                                 group=group, actor=actor)
        return bool(deleted)

    def authenticate(self, secret: str):
        """The group whose active Omaha URL carries this secret, or None."""
        lookup = secrets.split(secret, "fwo")
        if lookup is None:
            return None
        obj = self.select_related("group").filter(lookup=lookup).first()
        if obj is None or not secrets.matches(secret, obj.digest):
            return None
        return obj.group


class OmahaUrl(models.Model):
    """The per-group Omaha URL (one active per group): only requests on it can enroll and move
    Omaha-managed hosts; the anonymous ``/v1/update/`` writes nothing."""

    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="omaha_urls")
    group = models.OneToOneField("fleet.Group", on_delete=models.CASCADE, related_name="omaha_url")
    lookup = models.CharField(max_length=12, unique=True)
    digest = models.CharField(max_length=64)
    created = models.DateTimeField(default=timezone.now)
    created_by = models.CharField(max_length=150, blank=True)

    objects = OmahaUrlManager()

    def __str__(self) -> str:
        return self.masked

    @property
    def masked(self) -> str:
        return f"fwo_{self.lookup}_…"

    @staticmethod
    def url(secret: str) -> str:
        return f"{settings.FLEET_PUBLIC_URL}/v1/update/{secret}/"

    @staticmethod
    def update_conf(secret: str, group) -> str:
        """The lines to paste into ``/etc/flatcar/update.conf`` (or ``/etc/coreos/update.conf``)."""
        return f"SERVER={OmahaUrl.url(secret)}\nGROUP={group.channel.name}\n"


# ---------------------------------------------------------------------------------------------
# Omaha application ids
# ---------------------------------------------------------------------------------------------

# The operating system's own Omaha application id (CoreOS Container Linux, Flatcar): every
# organization serves it.  update_engine sends it in braces.
OS_APPID = "e96281a6-d1af-4bde-9a0a-97b76e56dc57"
APPID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def normalize_appid(value: str | None) -> str:
    """An Omaha appid as nebraska compares them: spaces trimmed, one balanced ``{…}`` pair taken
    off, lower case.  A lone brace stays, so ``{e96281a6-…`` matches nothing."""
    value = (value or "").strip()
    if len(value) > 2 and value[0] == "{" and value[-1] == "}":
        value = value[1:-1].strip()
    return value.lower()


class OmahaApplicationManager(models.Manager):
    def serves(self, organization_id: int | None, appid: str | None) -> bool:
        """Whether the organization answers Omaha requests for this appid (as sent): the OS's own
        id always, other ids once configured.  Without an organization (the anonymous
        ``/v1/update/``) only the OS's id."""
        key = normalize_appid(appid)
        if key == OS_APPID:
            return True
        if organization_id is None or not APPID_RE.fullmatch(key):
            return False
        return self.filter(organization_id=organization_id, appid=key).exists()

    def add(self, organization, appid: str, label: str = "", actor: str = "") -> "OmahaApplication":
        """Serve another appid (an alias that gets the same OS updates); refused with a clear
        reason when it is not a GUID (400), is the OS's own id or is already configured (409)."""
        key = normalize_appid(appid)
        if not APPID_RE.fullmatch(key):
            shown = (appid or "")[:50]
            raise UpdateError(f"'{shown}' is not an application id: expected a GUID such as {OS_APPID}, "
                              f"with or without a pair of braces", "appid")
        if key == OS_APPID:
            raise UpdateError(f"{key} is the operating system's own application id: every organization serves it",
                              "appid", status=409)
        try:
            with transaction.atomic():
                app = self.create(organization=organization, appid=key, label=label, created_by=actor)
                Event.objects.record(organization.pk, EventKind.OMAHA_APP_ADDED,
                                     f"Omaha application id {{{key}}} added" + (f" ({label})" if label else ""),
                                     actor=actor, data={"appid": key, "label": label})
                return app
        except IntegrityError:
            raise UpdateError(f"{key} is already served by the organization", "appid", status=409) from None

    def remove(self, app: "OmahaApplication", actor: str = "") -> None:
        """Stop serving an appid: its hosts' requests are answered ``error-unknownApplication`` from now on."""
        with transaction.atomic():
            app.delete()
            Event.objects.record(app.organization_id, EventKind.OMAHA_APP_REMOVED,
                                 f"Omaha application id {{{app.appid}}} removed: its requests are refused",
                                 actor=actor, data={"appid": app.appid, "label": app.label})


class OmahaApplication(models.Model):
    """An Omaha application id the organization serves besides the OS's own (``OS_APPID``): its
    requests get the same OS updates.  A request for an id the organization does not serve is
    answered ``error-unknownApplication`` and changes nothing."""

    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE,
                                     related_name="omaha_applications")
    appid = models.CharField(max_length=36, help_text="lower case, without braces")
    label = models.CharField(max_length=100, blank=True)
    created = models.DateTimeField(default=timezone.now)
    created_by = models.CharField(max_length=150, blank=True)

    objects = OmahaApplicationManager()

    class Meta:
        ordering = ["appid"]
        constraints = [models.UniqueConstraint(fields=["organization", "appid"], name="unique_omaha_appid")]

    def __str__(self) -> str:
        return self.appid
