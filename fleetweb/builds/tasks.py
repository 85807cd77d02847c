"""The image build pipeline on Celery::

    start_build(id) ─► prepare_build(id) ─► group(build_platform_task(id, p) for p in platforms)
                                                  └─ the task that records the last platform ─► finish_build(id)

Tasks take the build id, re-fetch it, and are safe to run twice: ``start_build`` claims the build
(queued → running, a conditional UPDATE), a step whose artifacts are already recorded is skipped,
artifacts are recorded once, and the final state changes are conditional UPDATEs too.

No chord: the project runs Celery without a result backend, so instead of a chord's counter the
database says when every platform is recorded; each platform task queues ``finish_build`` when it
sees that, and ``finish_build`` does nothing unless it is true (two of them at once write the same
SHA256SUMS and record it once).

Cancellation: ``ImageBuild.cancel`` flips the status; the running tools see it through
``BuildContext.cancelled``, which re-reads the status at most once a second, and stop
(``imagebuilder`` kills the running tool).  A failure (a tool's stderr, a timeout) is written onto
the build and stops the other platform tasks the same way.  Artifacts recorded before a cancel or
a failure are kept (and downloadable); the intermediate ``_work`` directory is removed when a build
ends, or by the ``reap_builds`` beat task for builds that died with their worker.
"""
from __future__ import annotations

import logging
import shutil
import time
from datetime import timedelta

from celery import group, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.utils import timezone

from imagebuilder import build as ib

from .choices import STEP_FINISH, STEP_PREPARE, BuildStatus
from .models import PAYLOAD_PLATFORM, SUMS_PLATFORM, ImageBuild

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.3           # log lines are pushed to the row and the pages at most ~3 times a second
CANCEL_POLL_SECONDS = 1.0     # the status is re-read at most once a second while tools run
STALE_AFTER = timedelta(minutes=30)


class Runner:
    """The callbacks one task hands to imagebuilder: the log (file, row tail, live pages; batched)
    and cancellation (the build's status, polled)."""

    def __init__(self, build: ImageBuild):
        self.build = build
        self.pending: list[str] = []
        self.last_flush = 0.0
        self.last_poll = 0.0
        self.stopped = False

    def log(self, line: str) -> None:
        self.pending.append(str(line))
        if time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if self.pending:
            lines, self.pending = self.pending, []
            self.build.append_log(lines)

    def cancelled(self) -> bool:
        # Polled every half second while a tool runs: also the moment to push lines still waiting.
        now = time.monotonic()
        if self.pending and now - self.last_flush >= FLUSH_SECONDS:
            self.flush()
        if not self.stopped and now - self.last_poll >= CANCEL_POLL_SECONDS:
            self.last_poll = now
            status = ImageBuild.objects.filter(pk=self.build.pk).values_list("status", flat=True).first()
            self.stopped = status != BuildStatus.RUNNING
        return self.stopped

    def context(self) -> ib.BuildContext:
        b = self.build
        return ib.BuildContext(
            workdir=b.workdir, version=b.version, channel=b.channel, log=self.log, cancelled=self.cancelled,
            rootfs=getattr(settings, "FLEET_BUILD_ROOTFS", None) or None,
            kernel=getattr(settings, "FLEET_BUILD_KERNEL", None) or None,
            initrd=getattr(settings, "FLEET_BUILD_INITRD", None) or None,
            usr_size_mib=getattr(settings, "FLEET_BUILD_USR_SIZE_MIB", None) or None)


def _running(build_id: int) -> ImageBuild | None:
    return ImageBuild.objects.filter(pk=build_id, status=BuildStatus.RUNNING).first()


def _run_step(build: ImageBuild, step: str, work):
    """Run one step with its log, timings and failure handling.  Returns work's result, or None when
    the build stopped (cancelled, failed elsewhere) or this step failed (written onto the build)."""
    runner = Runner(build)
    build.step_started(step)
    try:
        result = work(runner.context())
    except ib.Cancelled as exc:
        runner.log(f"{step}: stopped ({exc})")
        runner.flush()
        _cleanup_if_over(build.pk)
        return None
    except ib.ToolError as exc:
        runner.log(f"{step}: {exc}")
        runner.flush()
        build.fail(f"{step}: {exc}\n{exc.stderr.rstrip()}")
        _cleanup_if_over(build.pk)
        return None
    except SoftTimeLimitExceeded:
        runner.log(f"{step}: timed out")
        runner.flush()
        build.fail(f"{step}: did not finish within its time limit")
        _cleanup_if_over(build.pk)
        return None
    except (ib.BuildError, OSError, ValueError) as exc:
        runner.log(f"{step}: {exc}")
        runner.flush()
        build.fail(f"{step}: {exc}")
        _cleanup_if_over(build.pk)
        return None
    runner.flush()
    build.step_finished(step)
    return result


def _cleanup_if_over(build_id: int) -> None:
    build = ImageBuild.objects.filter(pk=build_id).first()
    if build is not None and build.status in BuildStatus.final():
        shutil.rmtree(build.workdir / ib.WORK, ignore_errors=True)


@shared_task(soft_time_limit=30)
def start_build(build_id: int) -> bool:
    """Claim a queued build (queued → running) and queue its first step."""
    build = ImageBuild.objects.filter(pk=build_id).first()
    if build is None or not build.claim():
        return False
    build.append_log([f"build #{build.pk}: version {build.version}, channel {build.channel}, "
                      f"platforms {', '.join(build.platforms)}"])
    prepare_build.delay(build_id)
    return True


@shared_task(soft_time_limit=900)
def prepare_build(build_id: int) -> bool:
    """USR image, update payload and the GPT disk; then one task per platform."""
    build = _running(build_id)
    if build is None:
        return False
    if not build.step_done(STEP_PREPARE):
        def work(ctx):
            prepared = ib.prepare(ctx)
            return prepared.payload_artifact()

        payload = _run_step(build, STEP_PREPARE, work)
        if payload is None:
            return False
        build.record_artifacts([payload], PAYLOAD_PLATFORM)
    build.refresh_from_db()
    todo = [p for p in build.platforms if not build.artifacts.filter(platform=p).exists()]
    if todo:
        group(build_platform_task.si(build_id, p) for p in todo).apply_async()
    else:
        finish_build.delay(build_id)
    return True


@shared_task(soft_time_limit=1800)
def build_platform_task(build_id: int, platform: str) -> bool:
    """One platform's artifacts (skipped when already recorded); the last one queues finish_build."""
    build = _running(build_id)
    if build is None:
        return False
    if not build.artifacts.filter(platform=platform).exists():
        def work(ctx):
            return ib.build_platform(ctx, ib.Prepared.load(build.workdir), platform)

        artifacts = _run_step(build, platform, work)
        if artifacts is None:
            return False
        build.record_artifacts(artifacts, platform)
    if build.platforms_done():
        finish_build.delay(build_id)
    return True


@shared_task(soft_time_limit=600)
def finish_build(build_id: int) -> bool:
    """SHA256SUMS over every artifact, signed with the organization's key; the build succeeds."""
    from .signing import sign_bytes

    build = _running(build_id)
    if build is None or not build.platforms_done():
        return False
    if not build.artifacts.filter(platform=SUMS_PLATFORM).exists():
        org = build.organization
        artifacts = [ib.Artifact(a.platform, a.name, a.abspath, a.size, a.sha256)
                     for a in build.artifacts.exclude(platform=SUMS_PLATFORM)]

        def work(ctx):
            return ib.write_sums(ctx, artifacts, sign=lambda data: sign_bytes(org, data))

        sums = _run_step(build, STEP_FINISH, work)
        if sums is None:
            return False
        build.record_artifacts(sums, SUMS_PLATFORM)
    if build.succeed():
        shutil.rmtree(build.workdir / ib.WORK, ignore_errors=True)
        build.append_log([f"build #{build.pk} succeeded: {build.artifacts.count()} artifacts"])
    return True


@shared_task(soft_time_limit=60)
def reap_builds() -> int:
    """Beat: fail builds whose worker died (no sign of life for STALE_AFTER) and clean their work dir."""
    cutoff = timezone.now() - STALE_AFTER
    reaped = 0
    for build in ImageBuild.objects.filter(status__in=BuildStatus.active(), updated__lt=cutoff):
        if build.fail(f"no progress for {int(STALE_AFTER.total_seconds() // 60)} minutes: the worker was lost"):
            shutil.rmtree(build.workdir / ib.WORK, ignore_errors=True)
            reaped += 1
    return reaped
