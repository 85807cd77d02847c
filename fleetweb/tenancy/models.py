from __future__ import annotations

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone
from django.utils.text import slugify

from fleetweb.core import secrets

from .choices import Role


class OrganizationManager(models.Manager):
    @transaction.atomic
    def create_with_defaults(self, name: str, slug: str | None = None) -> "Organization":
        """An organization always has the three channels."""
        from fleetweb.updates.models import Channel, SigningKey

        org = self.create(name=name, slug=slug or slugify(name))
        Channel.objects.create_defaults(org)
        SigningKey.objects.ensure(org)
        return org


class Organization(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=64, unique=True)
    created = models.DateTimeField(default=timezone.now)

    objects = OrganizationManager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def role_of(self, user) -> str | None:
        if user is None or not user.is_authenticated:
            return None
        m = self.memberships.filter(user=user).only("role").first()
        return m.role if m else None


class Membership(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "user"], name="unique_membership")]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"


class ApiKeyManager(models.Manager):
    def issue(self, organization: Organization, name: str, role: str, created_by=None) -> tuple["ApiKey", str]:
        """Create a key; the secret is returned once and only its digest is kept."""
        new = secrets.new_secret("fwk")
        key = self.create(organization=organization, name=name, role=role, lookup=new.lookup,
                          digest=new.digest, created_by=created_by)
        return key, new.secret

    def authenticate(self, secret: str) -> "ApiKey | None":
        lookup = secrets.split(secret, "fwk")
        if lookup is None:
            return None
        key = self.select_related("organization").filter(lookup=lookup, revoked_at__isnull=True).first()
        if key is None or not secrets.matches(secret, key.digest):
            return None
        return key


class ApiKey(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    lookup = models.CharField(max_length=12, unique=True)
    digest = models.CharField(max_length=64)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created = models.DateTimeField(default=timezone.now)
    last_used = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyManager()

    def __str__(self) -> str:
        return f"{self.name} ({self.role})"

    def revoke(self) -> bool:
        return ApiKey.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()) == 1
