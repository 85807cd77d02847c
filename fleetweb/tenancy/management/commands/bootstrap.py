"""Idempotent set-up for automation: an organization, an admin user, a group, and fresh secrets.

Secrets are stored hashed, so a re-run cannot print the old ones: it revokes the previous
bootstrap API key and token and issues new ones (everything else is reused).
"""
import json

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils.text import slugify

from agent import signing
from fleetweb.fleet.models import EnrollmentToken, Group
from fleetweb.tenancy.choices import Role
from fleetweb.tenancy.models import ApiKey, Membership, Organization
from fleetweb.updates.models import Channel, SigningKey

BOOTSTRAP = "bootstrap"


class Command(BaseCommand):
    help = "Create (or reuse) an organization, an admin user and a group; print an API key and an enrollment token."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organization name (its slug is derived)")
        parser.add_argument("--user", required=True)
        parser.add_argument("--password", required=True)
        parser.add_argument("--group", default="default")
        parser.add_argument("--channel", default="stable", choices=["alpha", "beta", "stable"])
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    @transaction.atomic
    def handle(self, *args, **opts):
        slug = slugify(opts["org"])
        if not slug:
            raise CommandError("--org must contain letters or digits")
        User = get_user_model()
        try:  # Django's password validators (settings.AUTH_PASSWORD_VALIDATORS), before anything is stored
            validate_password(opts["password"], User(username=opts["user"]))
        except ValidationError as exc:
            raise CommandError("--password is too weak: " + " ".join(exc.messages)) from None
        org = Organization.objects.filter(slug=slug).first() or Organization.objects.create_with_defaults(
            opts["org"], slug)
        Channel.objects.create_defaults(org)
        key = SigningKey.objects.ensure(org)  # the release signing key (private half encrypted at rest)
        user, created = User.objects.get_or_create(username=opts["user"])
        if created or not user.check_password(opts["password"]):
            user.set_password(opts["password"])
            user.save()
        Membership.objects.update_or_create(organization=org, user=user, defaults={"role": Role.ADMIN})
        group_slug = slugify(opts["group"]) or "default"
        group = Group.objects.filter(organization=org, slug=group_slug).first()
        if group is None:
            group = Group(organization=org, name=opts["group"], slug=group_slug,
                          channel=Channel.objects.get(organization=org, name=opts["channel"]))
            group.full_clean()
            group.save()
        for key in ApiKey.objects.filter(organization=org, name=BOOTSTRAP, revoked_at__isnull=True):
            key.revoke()
        _, api_key = ApiKey.objects.issue(org, BOOTSTRAP, Role.ADMIN, created_by=user)
        for token in EnrollmentToken.objects.filter(group=group, name=BOOTSTRAP, revoked_at__isnull=True):
            token.revoke(actor=BOOTSTRAP)
        _, enrollment = EnrollmentToken.objects.issue(group, name=BOOTSTRAP, created_by=user)
        out = {"org": org.slug, "user": user.username, "api_key": api_key, "group": group.slug,
               "enrollment_token": enrollment, "key_hash": signing.fingerprint(key.public_key)}
        if opts["json"]:
            self.stdout.write(json.dumps(out))
        else:
            for k, v in out.items():
                self.stdout.write(f"{k}: {v}")
