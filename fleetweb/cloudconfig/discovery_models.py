"""etcd discovery tokens (issue 6 §6), compatible with discovery.etcd.io.

A token is a public secret: whoever has its URL can register members, exactly as with
discovery.etcd.io, so it is 128 random bits (32 hex digits).  Each token keeps its own v2-style
index: the size key is index 1 and every registered member takes the next one, which is what
etcd's discovery client waits on (``?wait=true&waitIndex=N``).
"""
from __future__ import annotations

import secrets
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import F
from django.utils import timezone

from fleetweb.core.hub import hub

# discovery.etcd.io takes any size (its own tests go to 100).  Ours stops at 255: an etcd cluster has
# a handful of voting members, and every listing and every woken watch reads all of a token's members
# (with anonymous creation on, whoever holds a token URL may register size + EXTRA_MEMBERS of them).
MAX_SIZE = 255
DEFAULT_SIZE = 3
# Registrations a token stores beyond its size.  discovery.etcd.io stores every one, and etcd's client
# tells those past the size that the cluster is full (so ``--discovery-fallback=proxy`` works for a
# member that raced the others); the bound keeps whoever holds the URL from growing it for ever.
EXTRA_MEMBERS = 16


class DiscoveryError(Exception):
    """A v2 keys API error: ``code`` is etcd's errorCode, ``status`` the HTTP status."""

    def __init__(self, code: int, message: str, cause: str, index: int, status: int):
        super().__init__(message)
        self.code, self.message, self.cause, self.index, self.status = code, message, cause, index, status

    def as_dict(self) -> dict:
        return {"errorCode": self.code, "message": self.message, "cause": self.cause, "index": self.index}


def expiry_cutoff():
    """Tokens last used before this instant have expired (FLEET_DISCOVERY_TOKEN_TTL)."""
    return timezone.now() - timedelta(seconds=settings.FLEET_DISCOVERY_TOKEN_TTL)


class DiscoveryTokenQuerySet(models.QuerySet):
    def live(self):
        return self.filter(last_used__gte=expiry_cutoff())

    def expired(self):
        return self.filter(last_used__lt=expiry_cutoff())


class DiscoveryTokenManager(models.Manager.from_queryset(DiscoveryTokenQuerySet)):
    def issue(self, size: int = DEFAULT_SIZE, *, organization=None, created_by=None, name: str = ""):
        if not isinstance(size, int) or not 1 <= size <= MAX_SIZE:
            raise ValueError(f"size must be between 1 and {MAX_SIZE}")
        return self.create(token=secrets.token_hex(16), size=size, organization=organization,
                           created_by=created_by, name=name[:100])


class DiscoveryToken(models.Model):
    token = models.CharField(max_length=32, unique=True)
    size = models.PositiveSmallIntegerField(default=DEFAULT_SIZE)
    name = models.CharField(max_length=100, blank=True)
    organization = models.ForeignKey("tenancy.Organization", null=True, blank=True, on_delete=models.CASCADE,
                                     related_name="discovery_tokens")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created = models.DateTimeField(auto_now_add=True)
    # The v2 index of the last change under this token (1: the _config/size key).
    index = models.PositiveBigIntegerField(default=1)
    # The last read, registration or watch; unused for FLEET_DISCOVERY_TOKEN_TTL: expired (404, deleted).
    last_used = models.DateTimeField(default=timezone.now, db_index=True)

    objects = DiscoveryTokenManager()

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self) -> str:
        return self.token

    def touch(self) -> None:
        """Record a use, at most once a minute (one UPDATE, not one per request)."""
        now = timezone.now()
        if (now - self.last_used).total_seconds() > 60:
            DiscoveryToken.objects.filter(pk=self.pk).update(last_used=now)
            self.last_used = now

    @property
    def full(self) -> bool:
        return self.members.count() >= self.size

    def register(self, member_id: str, value: str) -> DiscoveryMember:
        """Put-if-absent of MEMBER_ID (``PUT <token>/<id>?prevExist=false``).

        105 "Key already exists" for a known id.  Members past the size are stored, as upstream
        does: etcd's client checks the listing after registering and reports the cluster full to
        every member whose index is past the size.  Past ``size + EXTRA_MEMBERS`` registrations are
        refused (412, "cluster is full").  The index is taken with a conditional UPDATE in the same
        transaction, so two registrations never share one."""
        with transaction.atomic():
            token = DiscoveryToken.objects.select_for_update().get(pk=self.pk)
            if token.members.filter(member_id=member_id).exists():
                raise DiscoveryError(105, "Key already exists", f"/{token.token}/{member_id}", token.index, 412)
            if token.members.count() >= token.size + EXTRA_MEMBERS:
                raise DiscoveryError(101, "cluster is full", f"/{token.token} (size {token.size}, "
                                     f"{token.size + EXTRA_MEMBERS} registrations at most)", token.index, 412)
            DiscoveryToken.objects.filter(pk=token.pk).update(index=F("index") + 1)
            token.refresh_from_db(fields=["index"])
            try:
                member = token.members.create(member_id=member_id, value=value, created_index=token.index)
            except IntegrityError:  # a concurrent registration of the same id won
                raise DiscoveryError(105, "Key already exists", f"/{token.token}/{member_id}", token.index,
                                     412) from None
            transaction.on_commit(self.wake_watches)
        self.index = token.index
        return member

    def remove(self, member_id: str) -> bool:
        with transaction.atomic():
            deleted, _ = self.members.filter(member_id=member_id).delete()
            if deleted:
                DiscoveryToken.objects.filter(pk=self.pk).update(index=F("index") + 1)
                transaction.on_commit(self.wake_watches)
        return bool(deleted)

    @property
    def watch_key(self) -> str:
        return f"discovery:{self.token}"

    def wake_watches(self) -> None:
        """Tell this token's open watches, in every web process, that it changed."""
        hub.publish(self.watch_key, {"type": "changed"})


class DiscoveryMember(models.Model):
    token = models.ForeignKey(DiscoveryToken, on_delete=models.CASCADE, related_name="members")
    member_id = models.CharField(max_length=32)
    value = models.TextField()
    created_index = models.PositiveBigIntegerField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_index"]
        constraints = [models.UniqueConstraint(fields=["token", "member_id"], name="discovery_member_unique")]

    def __str__(self) -> str:
        return f"{self.member_id}={self.value}"

    @property
    def name(self) -> str:
        return self.value.split("=", 1)[0] if "=" in self.value else ""

    @property
    def peer_urls(self) -> list[str]:
        return self.value.split("=", 1)[1].split(",") if "=" in self.value else [self.value]
