"""Reboot coordination on the server: per-organization etcd accounts (isolation), the lock
administration of each group's semaphore (through ``agent.locksmith``, the one implementation),
when a holder was first seen, and the organization's FleetLock secret."""
from __future__ import annotations

import base64
import logging
import secrets as pysecrets
from datetime import timedelta

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from agent.locksmith import ETCD_UNAVAILABLE, LockError, Locksmith, Semaphore
from fleetweb.core import secrets

from . import etcd
from .choices import LockEventKind

log = logging.getLogger(__name__)


def _fernet():
    """Fernet key for etcd passwords at rest (same pattern as release signing keys, its own HKDF label)."""
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    secret = (settings.FLEET_ENCRYPTION_KEY or settings.SECRET_KEY).encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fleetweb-etcd-passwords").derive(secret)
    return Fernet(base64.urlsafe_b64encode(key))


def _record(organization_id: int, kind: str, message: str, **kw):
    from fleetweb.fleet.models import Event

    return Event.objects.record(organization_id, kind, message, **kw)


def _lock_changed(organization_id: int, group_id: int) -> None:
    from fleetweb.core import live

    live.to_ui(organization_id, {"kind": "lock", "group": group_id})


# ---------------------------------------------------------------------------------------------
# Isolation: one etcd user + role per organization
# ---------------------------------------------------------------------------------------------

class EtcdAccountManager(models.Manager):
    def ensure(self, organization) -> "EtcdAccount":
        """The organization's account row (a password is made once, then kept)."""
        account = self.filter(organization=organization).first()
        if account is None:
            name = f"fleet-{organization.slug}"
            account, _ = self.get_or_create(organization=organization, defaults={
                "username": name, "role": name,
                "password_encrypted": _fernet().encrypt(pysecrets.token_urlsafe(32).encode()).decode()})
        return account

    def for_policy(self, organization) -> "EtcdAccount":
        """The account, provisioned in the configured etcd if it is not yet (lazily, on first use)."""
        account = self.ensure(organization)
        if not account.is_provisioned:
            try:
                account.provision()
            except Exception as exc:  # etcd down: agents get the credentials; provisioning retries next time
                log.warning("etcd account for %s not provisioned: %s", organization.slug, exc)
        return account


class EtcdAccount(models.Model):
    organization = models.OneToOneField("tenancy.Organization", on_delete=models.CASCADE, related_name="etcd_account")
    username = models.CharField(max_length=100, unique=True)
    role = models.CharField(max_length=100)
    password_encrypted = models.TextField(help_text="Fernet-encrypted at rest")
    provisioned_at = models.DateTimeField(null=True, blank=True)
    provisioned_cluster = models.CharField(max_length=1000, blank=True,
                                           help_text="ETCD_ENDPOINTS the account was provisioned in")
    last_error = models.TextField(blank=True)

    objects = EtcdAccountManager()

    def __str__(self) -> str:
        return self.username

    @property
    def password(self) -> str:
        return _fernet().decrypt(self.password_encrypted.encode()).decode()

    @property
    def prefix(self) -> str:
        return etcd.org_prefix(self.organization)

    @staticmethod
    def current_cluster() -> str:
        return ",".join(sorted(settings.ETCD_ENDPOINTS))

    @property
    def is_provisioned(self) -> bool:
        return self.provisioned_at is not None and self.provisioned_cluster == self.current_cluster()

    def provision(self) -> None:
        """Create (or repair) the etcd role limited to the organization's prefix and the user; idempotent."""
        try:
            etcd.ensure_user(etcd.server_client(), self.username, self.password, self.role, self.prefix)
        except Exception as exc:
            EtcdAccount.objects.filter(pk=self.pk).update(last_error=str(exc)[:2000])
            raise
        first = self.provisioned_at is None
        self.provisioned_at = timezone.now()
        self.provisioned_cluster = self.current_cluster()
        self.last_error = ""
        self.save(update_fields=["provisioned_at", "provisioned_cluster", "last_error"])
        if first:
            _record(self.organization_id, LockEventKind.ETCD_PROVISIONED,
                    f"etcd user {self.username} provisioned with readwrite on {self.prefix} only")

    def policy_fields(self) -> dict:
        fields = {"etcd_prefix": self.prefix, "etcd_username": self.username, "etcd_password": self.password}
        ca = etcd.ca_pem()
        if ca:
            fields["etcd_ca"] = ca
        return fields


class HostEtcdAccountManager(models.Manager):
    def ensure(self, host) -> "HostEtcdAccount":
        """The host's account row; a password is made once, then kept until rotated."""
        account = self.filter(host=host).first()
        if account is None:
            name = f"fleet-{host.organization.slug}-host-{host.pk}"
            account, _ = self.get_or_create(host=host, defaults={
                "organization": host.organization, "username": name, "role": name,
                "password_encrypted": _fernet().encrypt(pysecrets.token_urlsafe(32).encode()).decode()})
        return account

    def for_policy(self, host) -> "HostEtcdAccount":
        """The account, (re)provisioned when never done, on another cluster or in another group."""
        account = self.ensure(host)
        if not account.is_provisioned or account.provisioned_group_id != host.group_id:
            try:
                account.provision(host)
            except Exception as exc:  # etcd down: the agent gets the credentials; provisioning retries
                log.warning("etcd account of host %s not provisioned: %s", host.pk, exc)
        return account


    def rotate(self, host, actor: str = "") -> None:
        """New etcd password for HOST (the old one stops working at once), logged and pushed."""
        if not etcd.auth_enabled():
            raise etcd.EtcdAuthDisabled()
        account = self.ensure(host)
        account.rotate_password(host)
        _record(host.organization_id, LockEventKind.ETCD_ROTATED,
                f"etcd password of host {host.hostname} rotated", host=host, group=host.group, actor=actor)
        frame = host.policy()
        transaction.on_commit(lambda: host._push(frame))

    def remove_orphans(self) -> int:
        """Delete the etcd users of hosts that are gone (their rows lost the host); returns how many."""
        count = 0
        for account in self.filter(host__isnull=True):
            try:
                account.remove()
                count += 1
            except Exception as exc:  # etcd down: next run
                log.warning("etcd user %s not removed: %s", account.username, exc)
        return count


class HostEtcdAccount(models.Model):
    """One etcd user per host (issue 9 §8) with ``etcd.host_permissions``: its group's semaphore
    and the configuration keys meant for it.  The organization's ``EtcdAccount`` is the server's own."""

    host = models.OneToOneField("fleet.Host", null=True, on_delete=models.SET_NULL, related_name="etcd_account")
    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE,
                                     related_name="host_etcd_accounts")
    username = models.CharField(max_length=100, unique=True)
    role = models.CharField(max_length=100)
    password_encrypted = models.TextField(help_text="Fernet-encrypted at rest (it is given to the host)")
    revision = models.PositiveIntegerField(
        default=1, help_text="Bumped by each rotation; the host's agent reports the one it applied")
    provisioned_at = models.DateTimeField(null=True, blank=True)
    provisioned_cluster = models.CharField(max_length=1000, blank=True)
    provisioned_group_id = models.BigIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    objects = HostEtcdAccountManager()

    def __str__(self) -> str:
        return self.username

    @property
    def password(self) -> str:
        return _fernet().decrypt(self.password_encrypted.encode()).decode()

    @property
    def is_provisioned(self) -> bool:
        return self.provisioned_at is not None and self.provisioned_cluster == EtcdAccount.current_cluster()

    def provision(self, host) -> None:
        try:
            etcd.ensure_role_user(etcd.server_client(), self.username, self.password, self.role,
                                  etcd.host_permissions(host))
        except Exception as exc:
            HostEtcdAccount.objects.filter(pk=self.pk).update(last_error=str(exc)[:2000])
            raise
        self.provisioned_at = timezone.now()
        self.provisioned_cluster = EtcdAccount.current_cluster()
        self.provisioned_group_id = host.group_id
        self.last_error = ""
        self.save(update_fields=["provisioned_at", "provisioned_cluster", "provisioned_group_id", "last_error"])

    def rotate_password(self, host) -> None:
        """A new password, provisioned at once (the old one stops working)."""
        self.password_encrypted = _fernet().encrypt(pysecrets.token_urlsafe(32).encode()).decode()
        self.revision += 1
        self.save(update_fields=["password_encrypted", "revision"])
        self.provision(host)

    def remove(self) -> None:
        """Delete the etcd user and role, then the row."""
        etcd.delete_user(etcd.server_client(), self.username, self.role)
        self.delete()

    def policy_fields(self) -> dict:
        return {"etcd_username": self.username, "etcd_password": self.password,
                "etcd_credentials_revision": self.revision}


# ---------------------------------------------------------------------------------------------
# Lock administration
# ---------------------------------------------------------------------------------------------

class LockHolder(models.Model):
    """A holder of a group's semaphore as the server saw it: ``first_seen`` is the "since"."""

    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="+")
    group = models.ForeignKey("fleet.Group", on_delete=models.CASCADE, related_name="lock_holders")
    holder = models.CharField(max_length=255)
    first_seen = models.DateTimeField(default=timezone.now)
    stuck_reported_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["first_seen", "holder"]
        constraints = [models.UniqueConstraint(fields=["group", "holder"], name="unique_lock_holder")]

    def __str__(self) -> str:
        return self.holder


class GroupLock:
    """The reboot semaphore of one fleet group: read, unlock, set-max, with bookkeeping and events.

    The key is the agents' (``lock_group`` = the group's slug) under the organization's prefix.
    """

    def __init__(self, group):
        self.group = group
        self.organization = group.organization

    @classmethod
    def locksmith_for(cls, organization, lock_group: str, default_max: int = 1) -> Locksmith:
        return Locksmith(etcd.server_client(), group=lock_group, prefix=etcd.org_prefix(organization),
                         default_max=default_max)

    @property
    def locksmith(self) -> Locksmith:
        return self.locksmith_for(self.organization, self.group.slug, self.group.max_concurrent_reboots)

    @property
    def key(self) -> str:
        from agent.locksmith import group_key

        return group_key(self.group.slug, etcd.org_prefix(self.organization))

    # -- reading ------------------------------------------------------------------------------
    def state(self, hosts: dict | None = None) -> dict:
        """``{group, max, free, holders: [{id, host, host_id, since, stuck}], key, error}``.

        Never raises for etcd trouble: ``error`` says what is wrong (pages show it; API writes 503).
        """
        base = {"group": self.group.pk, "group_name": self.group.name, "key": self.key,
                "max": self.group.max_concurrent_reboots, "free": None, "holders": [], "error": None}
        if not etcd.configured():
            return {**base, "error": str(etcd.EtcdNotConfigured())}
        try:
            sem = self.locksmith.get()
        except LockError as exc:
            return {**base, "error": str(exc)}
        except etcd.EtcdNotConfigured as exc:
            return {**base, "error": str(exc)}
        return self.describe(sem, hosts)

    def describe(self, sem: Semaphore, hosts: dict | None = None) -> dict:
        seen = self.observe(sem.holders)
        if hosts is None:
            hosts = self.hosts_by_machine_id(sem.holders)
        now = timezone.now()
        timeout = timedelta(seconds=self.group.lock_stuck_after)
        holders = []
        for holder in sorted(sem.holders):
            host = hosts.get(holder)
            since = seen.get(holder)
            holders.append({"id": holder, "host": host.hostname if host else None,
                            "host_id": str(host.pk) if host else None, "since": since,
                            "online": host.online if host else None,
                            "stuck": self.is_stuck(host, since, now, timeout)})
        return {"group": self.group.pk, "group_name": self.group.name, "key": self.key, "max": sem.max,
                "free": sem.free, "semaphore": sem.semaphore, "holders": holders, "error": None}

    @staticmethod
    def is_stuck(host, since, now, timeout) -> bool:
        """Offline for longer than the group's ``lock_stuck_after`` while holding the lock (an unknown
        holder, e.g. a FleetLock client, counts from when the server first saw it hold the lock).
        Its own setting, not the update timeout: a stuck holder is flagged long before the hosts
        waiting behind it would time out, and those do not time out while they wait (Rollout.advance)."""
        if host is not None:
            if host.online:
                return False
            last = host.last_seen or since
            return last is not None and now - last > timeout
        return since is not None and now - since > timeout

    def hosts_by_machine_id(self, holders) -> dict:
        from fleetweb.fleet.models import Host

        if not holders:
            return {}
        return {h.machine_id: h for h in Host.objects.filter(organization=self.organization,
                                                             machine_id__in=list(holders))}

    def observe(self, holders, actor: str = "") -> dict:
        """Bring LockHolder rows in line with the holders etcd reports; log what changed."""
        holders = set(holders)
        rows = {r.holder: r for r in LockHolder.objects.filter(group=self.group)}
        gone = [h for h in rows if h not in holders]
        new = [h for h in holders if h not in rows]
        if not gone and not new:
            return {h: r.first_seen for h, r in rows.items()}
        hosts = self.hosts_by_machine_id(list(holders | set(gone)))
        now = timezone.now()
        with transaction.atomic():
            if gone:
                LockHolder.objects.filter(group=self.group, holder__in=gone).delete()
            for h in new:
                _, created = LockHolder.objects.get_or_create(group=self.group, holder=h, defaults={
                    "organization": self.organization, "first_seen": now})
                if created:
                    host = hosts.get(h)
                    _record(self.organization.pk, LockEventKind.LOCK_TAKEN,
                            f"{host.hostname if host else h} holds the reboot lock of group {self.group.name}",
                            group=self.group, host=host, actor=actor, data={"holder": h})
            for h in gone:
                host = hosts.get(h)
                _record(self.organization.pk, LockEventKind.LOCK_RELEASED,
                        f"{host.hostname if host else h} released the reboot lock of group {self.group.name}",
                        group=self.group, host=host, actor=actor, data={"holder": h})
            transaction.on_commit(lambda: _lock_changed(self.organization.pk, self.group.pk))
        return {r.holder: r.first_seen for r in LockHolder.objects.filter(group=self.group)}

    def report_stuck(self) -> int:
        """Log once per holding that a holder is stuck (run by the periodic sync)."""
        state = self.state()
        stuck = [h for h in state["holders"] if h["stuck"]]
        count = 0
        for h in stuck:
            if LockHolder.objects.filter(group=self.group, holder=h["id"], stuck_reported_at__isnull=True).update(
                    stuck_reported_at=timezone.now()):
                count += 1
                _record(self.organization.pk, LockEventKind.LOCK_STUCK,
                        f"{h['host'] or h['id']} is offline and has held the reboot lock of group "
                        f"{self.group.name} longer than {self.group.lock_stuck_after} s",
                        group=self.group, host_id=h["host_id"], data={"holder": h["id"]})
                transaction.on_commit(lambda: _lock_changed(self.organization.pk, self.group.pk))
        return count

    # -- admin actions ------------------------------------------------------------------------
    def unlock(self, holder: str, actor: str = "") -> dict:
        before = self.locksmith.get()
        sem = self.locksmith.unlock(holder)
        if holder in before.holders:
            hosts = self.hosts_by_machine_id([holder])
            host = hosts.get(holder)
            with transaction.atomic():
                LockHolder.objects.filter(group=self.group, holder=holder).delete()
                _record(self.organization.pk, LockEventKind.LOCK_UNLOCKED,
                        f"{actor or 'An admin'} released the reboot lock of group {self.group.name} "
                        f"held by {host.hostname if host else holder}",
                        group=self.group, host=host, actor=actor, data={"holder": holder})
                transaction.on_commit(lambda: _lock_changed(self.organization.pk, self.group.pk))
        return self.describe(sem)

    def set_max(self, n: int, actor: str = "", *, from_group: bool = False) -> dict:
        """Locksmith's set-max (semaphore += n - max).  Also makes it the group's max concurrent
        reboots (pushed to agents) unless the call comes from that change."""
        before, sem = self.locksmith.set_max(n)
        if before.max != sem.max:
            _record(self.organization.pk, LockEventKind.LOCK_SET_MAX,
                    f"Reboot lock of group {self.group.name}: max {before.max} → {sem.max} "
                    f"({sem.free} free)", group=self.group, actor=actor,
                    data={"from": before.max, "to": sem.max, "semaphore": sem.semaphore})
            transaction.on_commit(lambda: _lock_changed(self.organization.pk, self.group.pk))
        if not from_group and self.group.max_concurrent_reboots != n and n >= 1:
            self.group._reboots_syncing = True
            try:
                self.group.apply_changes({"max_concurrent_reboots": n}, actor=actor)
            finally:
                self.group._reboots_syncing = False
        return self.describe(sem)


# ---------------------------------------------------------------------------------------------
# FleetLock
# ---------------------------------------------------------------------------------------------

class FleetLockSecretManager(models.Manager):
    @transaction.atomic
    def rotate(self, organization, actor: str = "") -> tuple["FleetLockSecret", str]:
        """A new secret for the organization's FleetLock URL; the old URL stops working at once."""
        new = secrets.new_secret("fwl")
        existed = self.filter(organization=organization).exists()
        obj, _ = self.update_or_create(organization=organization, defaults={
            "lookup": new.lookup, "digest": new.digest, "created": timezone.now(), "created_by": actor})
        _record(organization.pk, LockEventKind.FLEETLOCK_ROTATED,
                f"FleetLock URL {'rotated' if existed else 'created'} by {actor or 'the server'}", actor=actor)
        return obj, new.secret

    @transaction.atomic
    def revoke(self, organization, actor: str = "") -> bool:
        """Delete the organization's FleetLock URL: it answers 404 ``not_found`` from now on."""
        deleted, _ = self.filter(organization=organization).delete()
        if deleted:
            _record(organization.pk, LockEventKind.FLEETLOCK_REVOKED,
                    f"FleetLock URL revoked by {actor or 'the server'}", actor=actor)
        return bool(deleted)

    def authenticate(self, secret: str):
        lookup = secrets.split(secret, "fwl")
        if lookup is None:
            return None
        obj = self.select_related("organization").filter(lookup=lookup).first()
        if obj is None or not secrets.matches(secret, obj.digest):
            return None
        return obj.organization


class FleetLockSecret(models.Model):
    organization = models.OneToOneField("tenancy.Organization", on_delete=models.CASCADE,
                                        related_name="fleetlock_secret")
    lookup = models.CharField(max_length=12, unique=True)
    digest = models.CharField(max_length=64)
    created = models.DateTimeField(default=timezone.now)
    created_by = models.CharField(max_length=150, blank=True)

    objects = FleetLockSecretManager()

    def __str__(self) -> str:
        return self.masked

    @property
    def masked(self) -> str:
        return f"fwl_{self.lookup}_…"

    @staticmethod
    def base_url(secret: str) -> str:
        """What Zincati's ``fleet_lock.base_url`` takes (it appends ``v1/pre-reboot``)."""
        return f"{settings.FLEET_PUBLIC_URL}/fleetlock/{secret}/"

    @staticmethod
    def zincati_config(secret: str) -> str:
        """A Zincati drop-in (``/etc/zincati/config.d/55-updates-strategy.toml``) using the URL."""
        return (f'[updates]\nstrategy = "fleet_lock"\n\n[updates.fleet_lock]\n'
                f'base_url = "{FleetLockSecret.base_url(secret)}"\n')


def lock_error_status(exc: LockError) -> int:
    return {ETCD_UNAVAILABLE: 503, "no_slots": 409, "conflict": 409, "invalid": 400}.get(exc.code, 400)
