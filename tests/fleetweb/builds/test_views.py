"""Dashboard pages of builds: list + new build form, build page, cancel and publish buttons."""
from __future__ import annotations

import pytest
from django.test import Client

from fleetweb.builds.choices import BuildStatus
from fleetweb.builds.models import ImageBuild

from .test_api import finished_build  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db


def web(persona) -> Client:
    c = Client()
    c.force_login(persona.user)
    return c


def test_the_list_has_the_new_build_form_and_the_nav_entry(alice, finished_build):  # noqa: F811
    html = web(alice).get("/builds/").content.decode()
    assert 'aria-current="page">Builds</a>' in html
    assert 'name="version"' in html and 'value="vagrant"' in html and 'name="channel"' in html
    assert f'data-build="{finished_build.pk}"' in html and 'data-live="build"' in html


def test_an_operator_starts_a_build_from_the_form(operator, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        r = web(operator).post("/builds/", {"version": "5.0.0", "channel": "beta", "platforms": ["qemu", "pxe"]})
    build = ImageBuild.objects.get()
    assert r.status_code == 302 and r["Location"] == f"/builds/{build.pk}/"
    assert (build.platforms, build.channel, build.created_by) == (["pxe", "qemu"], "beta", "olga")


def test_the_form_shows_errors_and_stores_nothing(operator):
    r = web(operator).post("/builds/", {"version": "nope", "channel": "alpha"})
    assert r.status_code == 422 and not ImageBuild.objects.exists()
    assert "not a version" in r.content.decode() and "This field is required" in r.content.decode()


def test_a_viewer_cannot_start_or_cancel(bob, finished_build):  # noqa: F811
    assert web(bob).post("/builds/", {"version": "5.0.0", "channel": "beta", "platforms": ["qemu"]}).status_code == 403
    assert web(bob).post(f"/builds/{finished_build.pk}/cancel").status_code == 403


def test_an_outsider_gets_404(charlie, finished_build):  # noqa: F811
    c = web(charlie)
    for url in (f"/builds/{finished_build.pk}/", f"/builds/{finished_build.pk}/log",
                f"/builds/{finished_build.pk}/artifacts/fleetweb_production_qemu_image.qcow2"):
        assert c.get(url).status_code == 404, url


def test_the_build_page_shows_progress_steps_artifacts_log_and_publish(alice, finished_build):  # noqa: F811
    html = web(alice).get(f"/builds/{finished_build.pk}/").content.decode()
    assert 'role="progressbar" aria-valuenow="100"' in html
    assert 'data-step="prepare"' in html and 'data-step="qemu"' in html and 'data-step="sums"' in html
    assert 'data-artifact="fleetweb_production_qemu_image.qcow2"' in html
    assert f'href="/builds/{finished_build.pk}/artifacts/fleetweb_production_qemu_image.qcow2"' in html
    assert f'data-build-log="{finished_build.pk}"' in html and "$ mkfs.ext4 ..." in html and "build-log.js" in html
    assert 'data-action="publish"' in html and 'data-action="cancel"' not in html


def test_cancel_from_the_page(alice, acme):
    build = ImageBuild.objects.create(organization=acme, version="4.3.0", channel="beta", platforms=["pxe"],
                                      status=BuildStatus.RUNNING)
    c = web(alice)
    html = c.get(f"/builds/{build.pk}/").content.decode()
    assert 'data-action="cancel"' in html
    r = c.post(f"/builds/{build.pk}/cancel", HTTP_HX_REQUEST="true")
    assert r.status_code == 200 and "Cancelled" in r.content.decode()
    r = c.post(f"/builds/{build.pk}/cancel", HTTP_HX_REQUEST="true")
    assert r.status_code == 409 and "cannot be cancelled" in r.content.decode()


def test_publish_refusal_is_shown_in_place(alice, acme):
    build = ImageBuild.objects.create(organization=acme, version="4.3.0", channel="beta", platforms=["pxe"],
                                      status=BuildStatus.FAILED, last_error="mkfs.ext4 failed: no space")
    c = web(alice)
    assert "mkfs.ext4 failed: no space" in c.get(f"/builds/{build.pk}/").content.decode()
    r = c.post(f"/builds/{build.pk}/publish", {"channel": "alpha"}, HTTP_HX_REQUEST="true")
    assert r.status_code == 409 and "only a succeeded build" in r.content.decode()
