"""Image builds: what to build, where the pipeline is, and the artifacts it produced.

The work itself is ``imagebuilder.build`` run by the Celery tasks of :mod:`fleetweb.builds.tasks`;
this module keeps the rules: the named state changes (each a conditional UPDATE that refuses to
run twice), the step bookkeeping (progress, timings, current step), the log (a capped tail on the
row, the whole log in ``FLEET_MEDIA_ROOT/builds/<id>/build.log``) and "build → channel" publishing.
"""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from fleetweb.updates.choices import ChannelName
from fleetweb.updates.models import VERSION_RE, UpdateError

from .choices import STEP_FINISH, STEP_PREPARE, BuildStatus, Platform

LOG_TAIL_BYTES = 64 * 1024      # the log kept on the row (the page's first paint); the file has it all
PAYLOAD_PLATFORM = "payload"    # imagebuilder's name for the update payload artifact
SUMS_PLATFORM = "sums"


class BuildRefused(UpdateError):
    """A refused build request or action: 400 for input to fix, 409 in the wrong state."""


def validate_request(version, channel, platforms) -> tuple[str, str, list[str]]:
    """The rules of a new build (the API serializer and the dashboard form both end here)."""
    version = (version or "").strip() if isinstance(version, str) else ""
    if not VERSION_RE.match(version):
        raise BuildRefused(f"'{version}' is not a version like 1234.5.6", "version")
    if channel not in ChannelName.values:
        raise BuildRefused(f"'{channel}' is not a channel: choose from {', '.join(ChannelName.values)}", "channel")
    if not isinstance(platforms, (list, tuple)) or not platforms:
        raise BuildRefused("choose at least one platform", "platforms")
    unknown = [str(p) for p in platforms if p not in Platform.values]
    if unknown:
        raise BuildRefused(f"unknown platform {', '.join(unknown)}: choose from {', '.join(Platform.values)}",
                           "platforms")
    dupes = sorted({p for p in platforms if list(platforms).count(p) > 1})
    if dupes:
        raise BuildRefused(f"platform {', '.join(dupes)} is listed twice", "platforms")
    return version, channel, list(platforms)


class ImageBuildManager(models.Manager):
    def request(self, organization, version, channel, platforms, actor: str = "") -> "ImageBuild":
        """Record a build and queue it once the transaction commits; refuses bad input, storing nothing."""
        version, channel, platforms = validate_request(version, channel, platforms)
        build = self.create(organization=organization, version=version, channel=channel,
                            platforms=[p for p in Platform.values if p in platforms], created_by=actor)
        from .tasks import start_build

        start_build.delay_on_commit(build.pk)
        transaction.on_commit(build.broadcast)
        return build


class ImageBuild(models.Model):
    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="builds")
    version = models.CharField(max_length=64)
    channel = models.CharField(max_length=16, choices=ChannelName.choices)
    platforms = models.JSONField(default=list, help_text="Platforms to build, in imagebuilder's order")
    status = models.CharField(max_length=16, choices=BuildStatus.choices, default=BuildStatus.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0, help_text="Finished steps / total steps, in %")
    current_step = models.CharField(max_length=300, blank=True)
    log = models.TextField(blank=True, help_text=f"The last {LOG_TAIL_BYTES // 1024} KiB of the log")
    timings = models.JSONField(default=dict, help_text="Per step: started, finished (ISO), seconds")
    last_error = models.TextField(blank=True, help_text="Why the build failed: the failing tool's stderr")
    release = models.ForeignKey("updates.Release", null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="builds")
    created_by = models.CharField(max_length=150, blank=True)
    created = models.DateTimeField(default=timezone.now)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    updated = models.DateTimeField(default=timezone.now, help_text="Last sign of life (reaper)")

    objects = ImageBuildManager()

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["status"], name="imagebuild_status")]

    def __str__(self) -> str:
        return f"build #{self.pk} ({self.version})"

    @property
    def colour(self) -> str:
        return BuildStatus.colour(self.status)

    @property
    def is_active(self) -> bool:
        return self.status in BuildStatus.active()

    # -- files ------------------------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        return Path(settings.FLEET_MEDIA_ROOT) / "builds" / str(self.pk)

    @property
    def log_path(self) -> Path:
        return self.workdir / "build.log"

    def read_log(self, offset: int = 0) -> tuple[str, int]:
        """The log file from ``offset`` (bytes) and its size; the row's tail when there is no file."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(offset, 0))
                data = f.read()
                return data.decode(errors="replace"), f.tell()
        except FileNotFoundError:
            return (self.log if offset <= 0 else ""), 0

    # -- steps --------------------------------------------------------------------------------
    @property
    def steps(self) -> list[str]:
        return [STEP_PREPARE, *self.platforms, STEP_FINISH]

    def step_rows(self) -> list[dict]:
        """Each step with its state and timing, in order (the build page's table)."""
        rows = []
        for name in self.steps:
            t = self.timings.get(name, {})
            state = "done" if t.get("finished") else ("running" if t.get("started") else "waiting")
            rows.append({"name": name, "state": state, "seconds": t.get("seconds"), "started": t.get("started")})
        return rows

    def _touch_steps(self, name: str, finished: bool) -> None:
        now = timezone.now()
        with transaction.atomic():
            build = ImageBuild.objects.select_for_update().only("timings", "platforms").get(pk=self.pk)
            timings = dict(build.timings)
            t = dict(timings.get(name, {}))
            if finished:
                t["finished"] = now.isoformat()
                if t.get("started"):
                    t["seconds"] = round((now - datetime.fromisoformat(t["started"])).total_seconds(), 2)
            else:
                t = {"started": now.isoformat()}
            timings[name] = t
            done = sum(1 for s in build.steps if timings.get(s, {}).get("finished"))
            fields = {"timings": timings, "progress": int(100 * done / len(build.steps)), "updated": now}
            if not finished:
                fields["current_step"] = name
            ImageBuild.objects.filter(pk=self.pk).update(**fields)
        for k, v in fields.items():
            setattr(self, k, v)
        transaction.on_commit(self.broadcast)

    def step_started(self, name: str) -> None:
        self._touch_steps(name, finished=False)

    def step_finished(self, name: str) -> None:
        self._touch_steps(name, finished=True)

    def step_done(self, name: str) -> bool:
        return bool(self.timings.get(name, {}).get("finished"))

    # -- log ----------------------------------------------------------------------------------
    def append_log(self, lines: list[str]) -> tuple[int, int]:
        """Append lines to the log file (one O_APPEND write), the row's tail and the open pages.
        Returns the byte range the lines took in the file."""
        text = "".join(line.rstrip("\n") + "\n" for line in lines)
        data = text.encode()
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            end = os.lseek(fd, 0, os.SEEK_CUR)
        finally:
            os.close(fd)
        start = end - len(data)
        step = next((line[3:].strip() for line in reversed(lines) if line.startswith("== ")), None)
        with transaction.atomic():
            build = ImageBuild.objects.select_for_update().only("log").get(pk=self.pk)
            tail = (build.log + text)[-LOG_TAIL_BYTES:]
            fields = {"log": tail, "updated": timezone.now()}
            if step:
                fields["current_step"] = step[:300]
            ImageBuild.objects.filter(pk=self.pk).update(**fields)
        from fleetweb.core import live

        live.to_ui(self.organization_id, {"kind": "build-log", "build": self.pk, "lines": [ln.rstrip("\n") for ln in lines],
                                          "start": start, "end": end})
        return start, end

    # -- named state changes (each a conditional UPDATE; False when it did not apply) -----------
    def _transition(self, to: str, allowed: tuple[str, ...], **extra) -> bool:
        fields = {"status": to, "updated": timezone.now(), **extra}
        if to in BuildStatus.final():
            fields["finished"] = timezone.now()
        if ImageBuild.objects.filter(pk=self.pk, status__in=allowed).update(**fields) != 1:
            return False
        for k, v in fields.items():
            setattr(self, k, v)
        transaction.on_commit(self.broadcast)
        return True

    def claim(self) -> bool:
        """queued → running: the one worker that gets True runs the build."""
        return self._transition(BuildStatus.RUNNING, (BuildStatus.QUEUED,), started=timezone.now())

    def cancel(self) -> bool:
        """queued/running → cancelled; running tasks notice within a second and stop."""
        return self._transition(BuildStatus.CANCELLED, BuildStatus.active(), current_step="cancelled")

    def fail(self, error: str) -> bool:
        return self._transition(BuildStatus.FAILED, BuildStatus.active(), last_error=error[-20000:])

    def succeed(self) -> bool:
        return self._transition(BuildStatus.SUCCEEDED, (BuildStatus.RUNNING,), progress=100, current_step="done")

    def broadcast(self) -> None:
        from fleetweb.core import live

        live.to_ui(self.organization_id, {"kind": "build", "build": self.pk, "status": self.status})

    # -- artifacts ----------------------------------------------------------------------------
    def record_artifacts(self, artifacts, platform: str) -> bool:
        """Record one step's artifacts once (a second run of the step records nothing)."""
        with transaction.atomic():
            ImageBuild.objects.select_for_update().only("pk").get(pk=self.pk)
            if self.artifacts.filter(platform=platform).exists():
                return False
            root = Path(settings.FLEET_MEDIA_ROOT)
            BuildArtifact.objects.bulk_create([
                BuildArtifact(build=self, platform=a.platform, name=a.name, size=a.size, sha256=a.sha256,
                              path=str(Path(a.path).resolve().relative_to(root.resolve())))
                for a in artifacts])
        return True

    def platforms_done(self) -> bool:
        done = set(self.artifacts.values_list("platform", flat=True))
        return PAYLOAD_PLATFORM in done and all(p in done for p in self.platforms)

    # -- build → channel -------------------------------------------------------------------------
    def publish(self, channel_name: str, actor: str = ""):
        """Make the build's update payload a release and put it on a channel (starts rollouts).
        Returns (release, rollouts)."""
        from fleetweb.updates.models import Channel, Release

        with transaction.atomic():
            build = ImageBuild.objects.select_for_update(of=("self",)).select_related("release").get(pk=self.pk)
            if build.status != BuildStatus.SUCCEEDED:
                raise BuildRefused(f"build is {build.status}: only a succeeded build can be published", status=409)
            if build.release_id is not None:
                raise BuildRefused(f"build already published as release {build.release.version}", status=409)
            channel = Channel.objects.filter(organization_id=build.organization_id, name=channel_name).first()
            if channel is None:
                raise BuildRefused(f"'{channel_name}' is not a channel: choose from "
                                   f"{', '.join(ChannelName.values)}", "channel")
            payload = build.artifacts.filter(platform=PAYLOAD_PLATFORM).first()
            if payload is None or not payload.abspath.exists():
                raise BuildRefused("the build's update payload is missing", status=409)
            with open(payload.abspath, "rb") as f:
                release = Release.objects.create_from_upload(
                    build.organization, build.version, f, size=payload.size, sha256=payload.sha256,
                    notes=f"Image build #{build.pk} ({', '.join(build.platforms)})", actor=actor)
            rollouts = channel.publish(release, actor)
            ImageBuild.objects.filter(pk=build.pk).update(release=release)
            self.release = release
            transaction.on_commit(self.broadcast)
        return release, rollouts


class BuildArtifact(models.Model):
    build = models.ForeignKey(ImageBuild, on_delete=models.CASCADE, related_name="artifacts")
    platform = models.CharField(max_length=16, help_text="A platform, 'payload' or 'sums'")
    name = models.CharField(max_length=200)
    path = models.CharField(max_length=500, help_text="path under FLEET_MEDIA_ROOT")
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)

    class Meta:
        ordering = ["build", "id"]
        constraints = [models.UniqueConstraint(fields=["build", "name"], name="unique_build_artifact")]

    def __str__(self) -> str:
        return self.name

    @property
    def abspath(self) -> Path:
        return Path(settings.FLEET_MEDIA_ROOT) / self.path
