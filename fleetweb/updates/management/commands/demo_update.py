"""Demo scenarios for `make run`: publish a release and watch it roll through the demo hosts.

  good         a real USR payload (imagebuilder payload) with the next version: every host
               installs it into its inactive partition, reboots into it and marks it good
  bad-payload  a real payload whose stored bytes are damaged after signing (a failing disk or a
               tampering proxy): agents refuse it before touching the disk; the rollout halts
  bad-boot     a signed payload that is not a bootable /usr: hosts install it, the boot health
               check fails, gptprio falls back to the old partition; the rollout halts
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from agent.signing import version_key
from fleetweb.tenancy.models import Organization
from fleetweb.updates.models import Release, UpdateError


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("scenario", choices=["good", "bad-payload", "bad-boot"])
        parser.add_argument("--org", default="demo")
        parser.add_argument("--channel", default=None, help="default: the channel of the org's first group")
        parser.add_argument("--release-version", dest="release_version", default=None,
                            help="default: the next major version")

    def handle(self, *args, scenario, org, channel, release_version, **opts):
        version = release_version
        organization = Organization.objects.filter(slug=org).first()
        if organization is None:
            raise CommandError(f"no organization '{org}' (run make run first)")
        group = organization.groups.select_related("channel").order_by("id").first()
        if group is None:
            raise CommandError(f"organization '{org}' has no group")
        channel_obj = organization.channels.get(name=channel) if channel else group.channel
        version = version or self.next_version(organization)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "usr.img"
            if scenario == "bad-boot":
                path.write_bytes(os.urandom(4 * 1024 * 1024))
            else:
                imagebuilder = Path(sys.executable).with_name("imagebuilder")
                subprocess.run([str(imagebuilder), "payload", "--version", version, "--output", str(path),
                                "--size-mib", "16"], check=True, capture_output=True)
            try:
                with open(path, "rb") as f:
                    release = Release.objects.create_from_upload(organization, version, f, actor="demo",
                                                                 notes=f"demo scenario: {scenario}")
            except UpdateError as exc:
                raise CommandError(exc.message) from None
        if scenario == "bad-payload":
            data = bytearray(release.path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            release.path.write_bytes(bytes(data))
        rollouts = channel_obj.publish(release, actor="demo")
        self.stdout.write(f"published {release.version} ({scenario}) on {channel_obj.name}: "
                          f"{len(rollouts)} rollout(s); watch /rollouts/")

    @staticmethod
    def next_version(organization) -> str:
        versions = [v for v in Release.objects.filter(organization=organization).values_list("version", flat=True)]
        versions += [v for v in organization.hosts.values_list("version", flat=True) if v]
        top = max(versions, key=version_key, default="100.0.0")
        parts = [int(p) if p.isdigit() else 0 for p in top.split(".")[:3]] + [0, 0]
        return f"{parts[0] + 1}.0.0"
