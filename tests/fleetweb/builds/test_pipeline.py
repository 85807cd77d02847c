"""The pipeline with the real imagebuilder: one full 8-platform build for the session, smaller
single-platform builds for failure, cancellation and running a step twice."""
from __future__ import annotations

import hashlib

import pytest

from agent import signing
from fleetweb.builds import tasks
from fleetweb.builds.choices import BuildStatus
from fleetweb.builds.models import BuildArtifact, ImageBuild
from imagebuilder.build import PLATFORMS

pytestmark = pytest.mark.django_db


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_it_builds_every_platform_signs_the_sums_and_publishes_to_alpha(acme, alice, alpha_group, make_host,
                                                                          run_build, django_capture_on_commit_callbacks):
    from fleetweb.updates.models import Release, Rollout, SigningKey

    build = run_build(acme, list(PLATFORMS))
    assert build.status == BuildStatus.SUCCEEDED, build.last_error
    assert build.progress == 100 and build.current_step == "done"
    assert build.started and build.finished
    assert set(build.timings) == {"prepare", *PLATFORMS, "sums"}
    assert all(t["seconds"] >= 0 for t in build.timings.values())

    arts = {a.name: a for a in build.artifacts.all()}
    assert {a.platform for a in arts.values()} == {"payload", "sums", *PLATFORMS}
    for name in ("fleetweb_production_qemu_image.qcow2", "fleetweb_production_gce.tar.gz",
                 "fleetweb_production_vagrant.box", "fleetweb_production_update.bin", "SHA256SUMS"):
        assert name in arts, name
    for a in arts.values():
        assert a.abspath.stat().st_size == a.size and sha256_of(a.abspath) == a.sha256, a.name
    assert not (build.workdir / "_work").exists(), "the intermediate images are removed"

    # SHA256SUMS lists every artifact and is signed with the organization's key
    sums = arts["SHA256SUMS"].abspath.read_bytes()
    listed = dict(reversed(line.split("  ")) for line in sums.decode().splitlines())
    assert set(listed) == set(arts) - {"SHA256SUMS", "SHA256SUMS.sig"}
    key = SigningKey.objects.active(acme)
    signing.verify_bytes(key.public_key, arts["SHA256SUMS.sig"].abspath.read_text(), sums)

    # the log: whole in the file, its tail on the row
    text = build.log_path.read_text()
    assert "$ " in text and "qemu: " in text and "succeeded" in text
    assert build.log and text.endswith(build.log[-200:])

    # running a platform step again records nothing new
    n = BuildArtifact.objects.filter(build=build).count()
    ImageBuild.objects.filter(pk=build.pk).update(status=BuildStatus.RUNNING)
    assert tasks.build_platform_task(build.pk, "qemu") is True   # and it queues finish_build again
    assert BuildArtifact.objects.filter(build=build).count() == n
    build.refresh_from_db()
    assert build.status == BuildStatus.SUCCEEDED
    assert tasks.finish_build(build.pk) is False                 # over: nothing to do

    # build → alpha through the API
    make_host(alpha_group, version="4.1.0")
    with django_capture_on_commit_callbacks(execute=True):
        r = alice.post(f"/api/v1/builds/{build.pk}/publish", {"channel": "alpha"}, format="json")
    assert r.status_code == 200, r.content
    release = Release.objects.get(pk=r.json()["release"])
    payload = arts["fleetweb_production_update.bin"]
    assert (release.version, release.size, release.sha256) == ("4.2.0", payload.size, payload.sha256)
    signing.verify(key.public_key, release.signature, release.version, release.size, release.sha256)
    assert acme.channels.get(name="alpha").current_release == release
    assert Rollout.objects.filter(release=release, group=alpha_group).exists()
    assert r.json()["build"]["release_version"] == "4.2.0"
    again = alice.post(f"/api/v1/builds/{build.pk}/publish", {"channel": "alpha"}, format="json")
    assert again.status_code == 409 and "already published" in again.json()["detail"]


def test_a_failing_tool_writes_its_stderr_onto_the_build(acme, run_build, settings, tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "usr" / "lib").mkdir(parents=True)
    (rootfs / "usr" / "lib" / "big.bin").write_bytes(b"\x01" * (24 * 1024 * 1024))
    settings.FLEET_BUILD_ROOTFS = str(rootfs)
    settings.FLEET_BUILD_USR_SIZE_MIB = 8        # too small for the tree: mkfs fails
    build = run_build(acme, ["qemu"])
    assert build.status == BuildStatus.FAILED
    assert build.last_error.startswith("prepare: mkfs")
    assert "\n" in build.last_error.strip(), "the tool's stderr follows the summary"
    assert build.finished is not None
    assert not build.artifacts.exists()
    assert "prepare: mkfs" in build.log_path.read_text()


def test_a_cancelled_build_stops_its_tools(acme, run_build, monkeypatch):
    monkeypatch.setattr(tasks, "CANCEL_POLL_SECONDS", 0)
    original = ImageBuild.append_log

    def cancel_at_usr(self, lines):
        result = original(self, lines)
        if any(line.startswith("== USR image") for line in lines):
            ImageBuild.objects.get(pk=self.pk).cancel()
        return result

    monkeypatch.setattr(ImageBuild, "append_log", cancel_at_usr)
    monkeypatch.setattr(tasks, "FLUSH_SECONDS", 0)
    build = run_build(acme, ["qemu", "gce"])
    assert build.status == BuildStatus.CANCELLED
    assert "stopped (build cancelled" in build.log_path.read_text()
    assert not build.artifacts.exists()
    assert not (build.workdir / "_work").exists()
    assert build.cancel() is False, "a second cancel does not apply"


def test_steps_are_safe_to_run_twice(acme, run_build):
    build = run_build(acme, ["openstack"])
    assert build.status == BuildStatus.SUCCEEDED, build.last_error
    before = list(build.artifacts.values_list("name", "sha256").order_by("name"))
    assert tasks.start_build(build.pk) is False            # already claimed
    assert tasks.prepare_build(build.pk) is False          # the build is over
    ImageBuild.objects.filter(pk=build.pk).update(status=BuildStatus.RUNNING)
    assert tasks.build_platform_task(build.pk, "openstack") is True
    assert list(build.artifacts.values_list("name", "sha256").order_by("name")) == before


def test_the_reaper_fails_builds_whose_worker_died(acme):
    from datetime import timedelta

    from django.utils import timezone

    build = ImageBuild.objects.create(organization=acme, version="1.0.0", channel="alpha", platforms=["qemu"],
                                      status=BuildStatus.RUNNING)
    fresh = ImageBuild.objects.create(organization=acme, version="1.0.1", channel="alpha", platforms=["qemu"],
                                      status=BuildStatus.RUNNING)
    ImageBuild.objects.filter(pk=build.pk).update(updated=timezone.now() - timedelta(hours=1))
    assert tasks.reap_builds() == 1
    build.refresh_from_db()
    fresh.refresh_from_db()
    assert build.status == BuildStatus.FAILED and "worker was lost" in build.last_error
    assert fresh.status == BuildStatus.RUNNING
