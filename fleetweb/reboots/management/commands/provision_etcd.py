"""Provision every organization's etcd user and role (idempotent; also done lazily on first policy).

``--enable-auth`` first creates the root user from ETCD_USERNAME/ETCD_PASSWORD and turns etcd's
authentication on (a no-op when it is already on)."""
from __future__ import annotations

import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from fleetweb.reboots import etcd
from fleetweb.reboots.models import EtcdAccount
from fleetweb.tenancy.models import Organization


class Command(BaseCommand):
    help = "Create or repair one etcd user + role per organization, limited to fleet/<org slug>/."

    def add_arguments(self, parser):
        parser.add_argument("--org", help="only this organization (slug)")
        parser.add_argument("--enable-auth", action="store_true",
                            help="create the root user (ETCD_USERNAME/ETCD_PASSWORD) and enable etcd auth first")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, org=None, enable_auth=False, **options):
        if not etcd.configured():
            raise CommandError("ETCD_ENDPOINTS is not set: there is no etcd to provision.")
        enabled = None
        if enable_auth:
            if not settings.ETCD_USERNAME:
                raise CommandError("--enable-auth needs ETCD_USERNAME and ETCD_PASSWORD (the root credentials).")
            enabled = etcd.enable_auth(settings.ETCD_ENDPOINTS, settings.ETCD_USERNAME, settings.ETCD_PASSWORD)
            etcd.reset_client()
        orgs = Organization.objects.all()
        if org:
            orgs = orgs.filter(slug=org)
            if not orgs.exists():
                raise CommandError(f"No organization with slug {org!r}.")
        done = []
        for organization in orgs:
            account = EtcdAccount.objects.ensure(organization)
            try:
                account.provision()
            except Exception as exc:
                raise CommandError(f"{organization.slug}: {exc}") from None
            done.append({"org": organization.slug, "user": account.username, "prefix": account.prefix})
        if options["json"]:
            self.stdout.write(_dumps({"auth_enabled_now": enabled, "accounts": done}))
        else:
            if enabled is not None:
                self.stdout.write("etcd auth enabled" if enabled else "etcd auth was already enabled")
            for d in done:
                self.stdout.write(f"{d['org']}: user {d['user']}, readwrite on {d['prefix']} only")


def _dumps(obj) -> str:
    return json.dumps(obj)
