"""Models of the cloudconfig domain: documents per organization, group and host, their revisions,
what each host applied, and the secret fetch URLs for hosts without the agent.

The rules live here: ``CloudConfig.save_content()`` validates (agent/cloudconfig.py, the same code
the agent runs) and refuses a document with errors; every accepted change is a new ``Revision``;
``restore()`` makes a new revision from an old one; ``effective_for_host()`` merges
organization → group → host.  The effective revision is the highest revision id of the documents
that make it up, so it only grows and any change to any level moves it.
"""
from __future__ import annotations

import difflib
import ipaddress

from django.conf import settings
from django.db import models, transaction
from django.db.models import Max, Q
from django.utils import timezone

from agent import cloudconfig as cc
from fleetweb.core import secrets
from fleetweb.fleet.choices import EventKind
from fleetweb.fleet.models import Event, Group, Host

from .choices import ApplyState, Level
from .discovery_models import DiscoveryMember, DiscoveryToken  # noqa: E402,F401  (etcd discovery, issue 6 §6)

URL_SECRET_KIND = "fwc"


class InvalidDocument(Exception):
    """The document has validation errors: nothing was saved."""

    def __init__(self, report: cc.Report):
        super().__init__(str(report))
        self.report = report

    @property
    def detail(self) -> str:
        first = self.report.errors[0]
        more = len(self.report.errors) - 1
        return f"The document has errors: {first}" + (f" (and {more} more)" if more else "")


def saving_report(content: str) -> cc.Report:
    """The report a document must pass to be saved: the validator's (``coreos-cloudinit --validate``'s
    rules), and an Ignition config refused.  The validator passes Ignition JSON as upstream does
    (Ignition, not cloudinit, reads it); the agent applies cloud-config only, so a saved one would
    silently do nothing."""
    report = cc.validate(content)
    if cc.is_ignition(content):
        report.add(1, cc.ERROR, "this is an Ignition config (JSON): Fleetweb serves cloud-config; "
                                "write it as a #cloud-config document")
    return report


class CloudConfigManager(models.Manager):
    def for_organization(self, organization) -> "CloudConfig":
        doc, _ = self.get_or_create(organization=organization, group=None, host=None)
        return doc

    def for_group(self, group) -> "CloudConfig":
        doc, _ = self.get_or_create(organization_id=group.organization_id, group=group, host=None)
        return doc

    def for_host(self, host) -> "CloudConfig":
        doc, _ = self.get_or_create(organization_id=host.organization_id, group=None, host=host)
        return doc

    def _org_q(self, organization_id) -> Q:
        return Q(organization_id=organization_id, group__isnull=True, host__isnull=True)

    def base_for_group(self, group) -> tuple[str, int]:
        """(organization ⊕ group document, its revision): what a host without its own document gets."""
        docs = {d.level: d for d in self.filter(self._org_q(group.organization_id) | Q(group=group))}
        org, grp = docs.get(Level.ORGANIZATION), docs.get(Level.GROUP)
        content = cc.merge(org.content if org else "", grp.content if grp else "")
        return content, max([d.current_revision_id or 0 for d in docs.values()] or [0])

    def base_for_organization(self, organization_id) -> str:
        """The organization's own document (what its fetch URL serves), merged alone so the budget
        of serving applies to it as well."""
        doc = self.filter(self._org_q(organization_id)).first()
        return cc.merge(doc.content if doc else "")

    def effective_for_host(self, host) -> tuple[str, int]:
        """(organization ⊕ group ⊕ host document, effective revision) — variables not substituted."""
        docs = {d.level: d for d in self.filter(self._org_q(host.organization_id) | Q(group_id=host.group_id)
                                                | Q(host=host))}
        parts = [docs[level].content if level in docs else "" for level in Level.values]
        return cc.merge(*parts), max([d.current_revision_id or 0 for d in docs.values()] or [0])

    def group_revision(self, group) -> int:
        """The revision agents of the group compare against: any document that reaches one of its
        hosts (organization, group, or a host of the group) moves it."""
        agg = self.filter(self._org_q(group.organization_id) | Q(group=group) | Q(host__group=group)) \
            .aggregate(rev=Max("current_revision_id"))
        return agg["rev"] or 0

    def host_revisions(self, group) -> tuple[int, dict]:
        """(revision of organization ⊕ group, {host id: revision of its own document}) in one query."""
        base, per_host = 0, {}
        rows = self.filter(self._org_q(group.organization_id) | Q(group=group) | Q(host__group=group)) \
            .values_list("host_id", "current_revision_id")
        for host_id, rev in rows:
            if host_id is None:
                base = max(base, rev or 0)
            else:
                per_host[host_id] = rev or 0
        return base, per_host


class CloudConfig(models.Model):
    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="cloud_configs")
    group = models.OneToOneField("fleet.Group", null=True, blank=True, on_delete=models.CASCADE,
                                 related_name="cloud_config")
    host = models.OneToOneField("fleet.Host", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="cloud_config")
    content = models.TextField(blank=True)
    current_revision = models.ForeignKey("cloudconfig.Revision", null=True, blank=True, on_delete=models.SET_NULL,
                                         related_name="+")
    updated = models.DateTimeField(default=timezone.now)

    objects = CloudConfigManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization"], condition=Q(group__isnull=True, host__isnull=True),
                                    name="one_org_cloud_config"),
            models.CheckConstraint(condition=Q(group__isnull=True) | Q(host__isnull=True),
                                   name="cloud_config_one_level"),
        ]

    def __str__(self) -> str:
        return f"cloud-config of {self.target}"

    @property
    def level(self) -> str:
        if self.host_id:
            return Level.HOST
        if self.group_id:
            return Level.GROUP
        return Level.ORGANIZATION

    @property
    def level_colour(self) -> str:
        return Level.colour(self.level)

    @property
    def target(self):
        return self.host or self.group or self.organization

    @property
    def revision_number(self) -> int:
        return self.current_revision.number if self.current_revision_id else 0

    # -- the rules ----------------------------------------------------------------------------
    def save_content(self, content: str, author=None) -> "Revision | None":
        """Validate and save as a new revision; returns it, or None when the content is unchanged.

        Raises InvalidDocument (nothing written) when the document has errors.  The agents that
        the document reaches get a new policy after the commit.
        """
        content = normalise(content)
        report = saving_report(content)
        if not report.valid:
            raise InvalidDocument(report)
        with transaction.atomic():
            locked = CloudConfig.objects.select_for_update().get(pk=self.pk)
            if locked.content == content and locked.current_revision_id:
                return None
            last = locked.revisions.aggregate(n=Max("number"))["n"] or 0
            revision = Revision.objects.create(
                document=self, number=last + 1, content=content,
                author=author if getattr(author, "pk", None) else None,
                author_name=str(getattr(author, "username", "") or author or "")[:150])
            self.content = content
            self.current_revision = revision
            self.updated = revision.created
            self.save(update_fields=["content", "current_revision", "updated"])
            transaction.on_commit(self.push)
        return revision

    def restore(self, revision: "Revision", author=None) -> "Revision":
        """Make a new revision with the content of ``revision`` (the history is never rewritten)."""
        if revision.document_id != self.pk:
            raise ValueError("that revision belongs to another document")
        new = self.save_content(revision.content, author)
        if new is None:  # already the current content: still record the restore as a revision
            with transaction.atomic():
                last = self.revisions.aggregate(n=Max("number"))["n"] or 0
                new = Revision.objects.create(document=self, number=last + 1, content=self.content,
                                              author=author if getattr(author, "pk", None) else None,
                                              author_name=str(getattr(author, "username", "") or "")[:150],
                                              restored_from=revision)
                CloudConfig.objects.filter(pk=self.pk).update(current_revision=new, updated=new.created)
                self.current_revision = new
                transaction.on_commit(self.push)
            return new
        Revision.objects.filter(pk=new.pk).update(restored_from=revision)
        new.restored_from = revision
        return new

    def push(self) -> None:
        """Send a fresh policy (with the new cloud_config_revision) to the agents this reaches."""
        from fleetweb.core import hub, live
        from fleetweb.fleet.models import Group, Host

        if self.host_id:
            host = Host.objects.select_related("group__channel").get(pk=self.host_id)
            hub.publish(f"host:{host.pk}", host.policy())
            live.to_ui(self.organization_id, {"kind": "host", "host": str(host.pk)})
            return
        groups = Group.objects.filter(pk=self.group_id) if self.group_id else \
            Group.objects.filter(organization_id=self.organization_id)
        for group in groups.select_related("channel"):
            group.push_policy()

    def diff(self, old: "Revision | None", new: "Revision | None") -> str:
        return unified_diff(old, new)


def normalise(content: str) -> str:
    content = (content or "").replace("\r\n", "\n")
    return content if not content or content.endswith("\n") else content + "\n"


def unified_diff(old: "Revision | None", new: "Revision | None") -> str:
    a = old.content if old else ""
    b = new.content if new else ""
    return "".join(difflib.unified_diff(
        a.splitlines(keepends=True), b.splitlines(keepends=True),
        fromfile=f"r{old.number}" if old else "empty", tofile=f"r{new.number}" if new else "empty"))


class Revision(models.Model):
    document = models.ForeignKey(CloudConfig, on_delete=models.CASCADE, related_name="revisions")
    number = models.PositiveIntegerField()
    content = models.TextField(blank=True)
    author = models.ForeignKey("auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    author_name = models.CharField(max_length=150, blank=True)
    restored_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-number"]
        constraints = [models.UniqueConstraint(fields=["document", "number"], name="unique_revision_number")]

    def __str__(self) -> str:
        return f"r{self.number}"

    def previous(self) -> "Revision | None":
        return self.document.revisions.filter(number__lt=self.number).order_by("-number").first()


# ---------------------------------------------------------------------------------------------
# What the host applied, and where it is
# ---------------------------------------------------------------------------------------------

class HostStateManager(models.Manager):
    def record_applied(self, host_id, revision, errors) -> bool:
        """The agent's ``cloud_config_applied`` report; True when it changed something."""
        if not isinstance(revision, int) or isinstance(revision, bool):
            return False
        errors = [str(e)[:500] for e in errors][:50] if isinstance(errors, list) else []
        state, _ = self.get_or_create(host_id=host_id)
        if state.applied_revision == revision and state.errors == errors:
            return False
        state.applied_revision = revision
        state.errors = errors
        state.applied_at = timezone.now()
        state.save(update_fields=["applied_revision", "errors", "applied_at"])
        return True

    def record_addresses(self, host_id, addresses: dict) -> None:
        clean = {k: str(v)[:64] for k, v in (addresses or {}).items() if k in cc.VARIABLES and _is_ip(v)}
        state, _ = self.get_or_create(host_id=host_id)
        if clean and state.addresses != clean:
            state.addresses = clean
            state.save(update_fields=["addresses"])


def _is_ip(value) -> bool:
    try:
        ipaddress.ip_address(str(value))
        return True
    except ValueError:
        return False


class HostCloudConfigState(models.Model):
    host = models.OneToOneField("fleet.Host", primary_key=True, on_delete=models.CASCADE,
                                related_name="cloud_config_state")
    applied_revision = models.PositiveBigIntegerField(null=True, blank=True)
    errors = models.JSONField(default=list, blank=True)
    applied_at = models.DateTimeField(null=True, blank=True)
    addresses = models.JSONField(default=dict, blank=True, help_text="public_ipv4, private_ipv4, … as reported")

    objects = HostStateManager()

    def __str__(self) -> str:
        return f"{self.host_id}: r{self.applied_revision}"


def host_addresses(host) -> dict:
    """Addresses for ``$public_ipv4`` & co.: those the agent reported, else the registration address."""
    state = HostCloudConfigState.objects.filter(host=host).first()
    found = dict(state.addresses) if state else {}
    if host.address:
        ip = ipaddress.ip_address(host.address)
        key = ("private_" if ip.is_private else "public_") + ("ipv4" if ip.version == 4 else "ipv6")
        found.setdefault(key, str(ip))
    return found


def apply_state(effective_revision: int, applied: int | None, errors: list | None) -> str:
    if not effective_revision:
        return ApplyState.NONE
    if applied is None or applied < effective_revision:
        return ApplyState.BEHIND
    return ApplyState.FAILED if errors else ApplyState.CURRENT


def hosts_with_state(group) -> list:
    """The group's hosts, each with ``cc_revision`` (effective), ``cc_applied`` and ``cc_state``;
    three queries whatever the number of hosts."""
    base, per_host = CloudConfig.objects.host_revisions(group)
    hosts = list(group.hosts.select_related("cloud_config_state").order_by("hostname", "id"))
    for h in hosts:
        st = _state(h)
        h.cc_revision = max(base, per_host.get(h.pk, 0))
        h.cc_applied = st.applied_revision if st else None
        h.cc_errors = st.errors if st else []
        h.cc_state = apply_state(h.cc_revision, h.cc_applied, h.cc_errors)
        h.cc_colour = ApplyState.colour(h.cc_state)
        h.cc_label = ApplyState(h.cc_state).label
    return hosts


def _state(host) -> HostCloudConfigState | None:
    try:
        return host.cloud_config_state
    except HostCloudConfigState.DoesNotExist:
        return None


# ---------------------------------------------------------------------------------------------
# Secret fetch URLs (the ``cloud-config-url=`` kernel argument)
# ---------------------------------------------------------------------------------------------

class FetchUrlManager(models.Manager):
    """One active fetch URL per target (the organization, a group or a host): ``rotate`` issues a
    new one and revokes the previous at once, ``revoke_for`` revokes it; both are logged."""

    @staticmethod
    def _scope(target) -> tuple[dict, int, dict]:
        """(filter of the target's URLs, its organization id, the event's group/host)."""
        if isinstance(target, Host):
            return {"host": target}, target.organization_id, {"host": target, "group_id": target.group_id}
        if isinstance(target, Group):
            return {"group": target, "host__isnull": True}, target.organization_id, {"group": target}
        return {"organization": target, "group__isnull": True, "host__isnull": True}, target.pk, {}

    def active_for(self, target) -> "FetchUrl | None":
        scope, _, _ = self._scope(target)
        return self.filter(revoked_at__isnull=True, **scope).order_by("-created", "-pk").first()

    def issue(self, *, group=None, host=None, created_by=None) -> tuple["FetchUrl", str]:
        """A new URL for a group or a host, next to the ones it already has (``rotate`` is what
        the API and the dashboard use)."""
        target = host or group
        new = secrets.new_secret(URL_SECRET_KIND)
        url = self.create(organization_id=target.organization_id, group=group, host=host, lookup=new.lookup,
                          digest=new.digest, created_by=created_by if getattr(created_by, "pk", None) else None)
        return url, new.secret

    @transaction.atomic
    def rotate(self, target, created_by=None) -> tuple["FetchUrl", str]:
        """A new secret URL for the target; every earlier one of the target stops working at once.
        The secret is shown once."""
        scope, org_id, where = self._scope(target)
        existed = self.filter(revoked_at__isnull=True, **scope).update(revoked_at=timezone.now())
        new = secrets.new_secret(URL_SECRET_KIND)
        fields = {k: v for k, v in scope.items() if "__" not in k}
        url = self.create(organization_id=org_id, lookup=new.lookup, digest=new.digest,
                          created_by=created_by if getattr(created_by, "pk", None) else None,
                          **{k: v for k, v in fields.items() if k != "organization"})
        actor = _actor(created_by)
        Event.objects.record(org_id, EventKind.CLOUD_CONFIG_URL_ROTATED,
                             f"cloud-config URL of {_describe(target)} {'rotated' if existed else 'created'} "
                             f"by {actor or 'the server'}", actor=actor, **where)
        return url, new.secret

    @transaction.atomic
    def revoke_for(self, target, actor=None) -> int:
        """Revoke the target's URL(s); they answer 404 from now on.  How many were active."""
        scope, org_id, where = self._scope(target)
        revoked = self.filter(revoked_at__isnull=True, **scope).update(revoked_at=timezone.now())
        if revoked:
            name = _actor(actor)
            Event.objects.record(org_id, EventKind.CLOUD_CONFIG_URL_REVOKED,
                                 f"cloud-config URL of {_describe(target)} revoked by {name or 'the server'}",
                                 actor=name, **where)
        return revoked

    def resolve(self, secret: str) -> "FetchUrl | None":
        lookup = secrets.split(secret, URL_SECRET_KIND)
        if lookup is None:
            return None
        url = self.select_related("organization", "group", "host", "host__group").filter(
            lookup=lookup, revoked_at__isnull=True).first()
        if url is None or not secrets.matches(secret, url.digest):
            return None
        return url


def _actor(user) -> str:
    if isinstance(user, str):
        return user
    return user.get_username() if getattr(user, "pk", None) else ""


def _describe(target) -> str:
    if isinstance(target, Host):
        return f"host {target.hostname}"
    if isinstance(target, Group):
        return f"group {target.name}"
    return "the organization"


class FetchUrl(models.Model):
    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="+")
    group = models.ForeignKey("fleet.Group", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    host = models.ForeignKey("fleet.Host", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    lookup = models.CharField(max_length=12, unique=True)
    digest = models.CharField(max_length=64)
    created_by = models.ForeignKey("auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created = models.DateTimeField(default=timezone.now)
    last_used = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = FetchUrlManager()

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return self.masked

    @property
    def masked(self) -> str:
        return f"fwc_{self.lookup}_…"

    @property
    def level(self) -> str:
        return Level.HOST if self.host_id else Level.GROUP if self.group_id else Level.ORGANIZATION

    @staticmethod
    def url_for(secret: str) -> str:
        return f"{settings.FLEET_PUBLIC_URL}/cloud-config/{secret}"

    def document(self) -> str:
        """What the URL serves: the host's effective document with its addresses substituted, or
        the group's (organization ⊕ group, variables left for the host's own cloudinit), or the
        organization's own document."""
        FetchUrl.objects.filter(pk=self.pk).update(last_used=timezone.now())
        if self.host_id:
            content, _ = CloudConfig.objects.effective_for_host(self.host)
            return cc.substitute(content, host_addresses(self.host))
        if self.group_id:
            content, _ = CloudConfig.objects.base_for_group(self.group)
            return content
        return CloudConfig.objects.base_for_organization(self.organization_id)

    def revoke(self) -> bool:
        return FetchUrl.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()) == 1
