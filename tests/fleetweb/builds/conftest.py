"""Builds run the real imagebuilder (eager Celery, in this process) into a per-test media root."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.FLEET_MEDIA_ROOT = tmp_path / "media"
    return settings.FLEET_MEDIA_ROOT


@pytest.fixture
def run_build(django_capture_on_commit_callbacks):
    """Request a build and run its whole pipeline (the on-commit queueing included)."""

    def run(org, platforms, version="4.2.0", channel="alpha", actor="alice"):
        from fleetweb.builds.models import ImageBuild

        with django_capture_on_commit_callbacks(execute=True):
            build = ImageBuild.objects.request(org, version, channel, platforms, actor=actor)
        build.refresh_from_db()
        return build

    return run


@pytest.fixture
def alpha_group(acme):
    from fleetweb.fleet.models import Group

    return Group.objects.create(organization=acme, name="canary", slug="canary",
                                channel=acme.channels.get(name="alpha"))
