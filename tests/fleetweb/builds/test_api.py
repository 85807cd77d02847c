"""builds/ REST endpoints and the artifact downloads: personas, refusals, shapes (no real build here)."""
from __future__ import annotations

import hashlib

import pytest
from asgiref.sync import async_to_sync

from fleetweb.builds.choices import BuildStatus
from fleetweb.builds.models import BuildArtifact, ImageBuild

pytestmark = pytest.mark.django_db

def body_of(response) -> bytes:
    return async_to_sync(_read)(response)


async def _read(response) -> bytes:
    return b"".join([chunk async for chunk in response.streaming_content])


GOOD = {"version": "4.2.0", "channel": "alpha", "platforms": ["qemu", "gce"]}


@pytest.fixture
def finished_build(acme, media):
    build = ImageBuild.objects.create(organization=acme, version="4.2.0", channel="alpha",
                                      platforms=["qemu"], status=BuildStatus.SUCCEEDED, progress=100)
    build.workdir.mkdir(parents=True)
    data = bytes(range(256)) * 64
    path = build.workdir / "fleetweb_production_qemu_image.qcow2"
    path.write_bytes(data)
    BuildArtifact.objects.create(build=build, platform="qemu", name=path.name, size=len(data),
                                 sha256=hashlib.sha256(data).hexdigest(),
                                 path=str(path.relative_to(media)))
    build.append_log(["== prepare", "$ mkfs.ext4 ...", "done"])
    return build


def test_it_queues_a_build_and_answers_202(operator, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        r = operator.post("/api/v1/builds/", GOOD, format="json")
    assert r.status_code == 202, r.content
    body = r.json()
    assert body["status"] == "queued" and body["progress"] == 0 and body["artifacts"] == []
    assert body["platforms"] == ["gce", "qemu"]          # imagebuilder's order
    assert {"id", "version", "channel", "current_step", "timings", "last_error", "release"} <= set(body)
    assert body["created_by"] == "api-key:olga-key"
    assert len(callbacks) >= 1, "start_build is queued on commit"
    assert ImageBuild.objects.get(pk=body["id"]).status == BuildStatus.QUEUED


@pytest.mark.parametrize("body, field, message", [
    ({**GOOD, "version": "4"}, "version", "not a version"),
    ({**GOOD, "version": "latest"}, "version", "not a version"),
    ({**GOOD, "channel": "nightly"}, "channel", "not a valid choice"),
    ({**GOOD, "platforms": []}, "platforms", "empty"),
    ({**GOOD, "platforms": ["qemu", "amiga"]}, "platforms", "not a valid choice"),
    ({**GOOD, "platforms": ["qemu", "qemu"]}, "platforms", "listed twice"),
    ({**GOOD, "platforms": "qemu"}, "platforms", "list"),
    ({"channel": "alpha", "platforms": ["qemu"]}, "version", "required"),
])
def test_it_refuses_bad_input_storing_and_queueing_nothing(alice, body, field, message,
                                                           django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        r = alice.post("/api/v1/builds/", body, format="json")
    assert r.status_code == 400, r.content
    assert field in r.json()["errors"], r.json()
    assert message in r.json()["detail"] or message in str(r.json()["errors"]), r.json()
    assert not ImageBuild.objects.exists() and not callbacks


def test_the_model_refuses_the_same_inputs(acme):
    from fleetweb.builds.models import BuildRefused

    for bad in ({"platforms": ["qemu", "qemu"]}, {"platforms": []}, {"channel": "nightly"}, {"version": "x"},
                {"platforms": ["amiga"]}):
        with pytest.raises(BuildRefused):
            ImageBuild.objects.request(acme, **{**GOOD, **bad})
    assert not ImageBuild.objects.exists()


def test_a_viewer_reads_but_cannot_write(bob, finished_build):
    assert bob.get("/api/v1/builds/").status_code == 200
    assert bob.post("/api/v1/builds/", GOOD, format="json").status_code == 403
    assert bob.post(f"/api/v1/builds/{finished_build.pk}/cancel").status_code == 403
    assert bob.post(f"/api/v1/builds/{finished_build.pk}/publish", {"channel": "alpha"},
                    format="json").status_code == 403
    assert not ImageBuild.objects.exclude(pk=finished_build.pk).exists()


def test_an_outsider_gets_404(charlie, finished_build):
    assert charlie.get("/api/v1/builds/").json()["count"] == 0
    for url in (f"/api/v1/builds/{finished_build.pk}/", f"/api/v1/builds/{finished_build.pk}/log"):
        assert charlie.get(url).status_code == 404, url
    assert charlie.post(f"/api/v1/builds/{finished_build.pk}/cancel").status_code == 404
    assert charlie.post(f"/api/v1/builds/{finished_build.pk}/publish", {"channel": "alpha"},
                        format="json").status_code == 404
    art = f"/builds/{finished_build.pk}/artifacts/fleetweb_production_qemu_image.qcow2"
    assert charlie.get(art, HTTP_AUTHORIZATION=f"Bearer {charlie.api_key}").status_code == 404


def test_an_item_lists_its_artifacts_with_download_urls(alice, finished_build):
    body = alice.get(f"/api/v1/builds/{finished_build.pk}/").json()
    [a] = body["artifacts"]
    assert set(a) == {"platform", "name", "size", "sha256", "url"}
    assert a["url"] == f"http://testserver/builds/{finished_build.pk}/artifacts/{a['name']}"
    r = alice.get(a["url"])                                  # the API key works on the download
    data = body_of(r)
    assert r.status_code == 200 and hashlib.sha256(data).hexdigest() == a["sha256"]
    r = alice.get(a["url"], HTTP_RANGE="bytes=10-19")
    assert r.status_code == 206 and body_of(r) == bytes(range(10, 20))
    assert r["Content-Range"] == f"bytes 10-19/{a['size']}"
    assert alice.get(a["url"], HTTP_RANGE="bytes=999999-").status_code == 416
    assert alice.get(a["url"] + "x").status_code == 404


def test_downloads_need_a_login_or_a_key(client, finished_build):
    url = f"/builds/{finished_build.pk}/artifacts/fleetweb_production_qemu_image.qcow2"
    assert client.get(url).status_code == 302
    assert client.get(url, HTTP_AUTHORIZATION="Bearer fwk_nope").status_code == 401


def test_filters_by_status_and_channel(alice, acme, finished_build):
    ImageBuild.objects.create(organization=acme, version="4.3.0", channel="beta", platforms=["pxe"])
    assert [b["version"] for b in alice.get("/api/v1/builds/?status=succeeded").json()["results"]] == ["4.2.0"]
    assert [b["version"] for b in alice.get("/api/v1/builds/?channel=beta").json()["results"]] == ["4.3.0"]
    assert alice.get("/api/v1/builds/?status=bogus").status_code == 400


def test_cancel_is_refused_once_the_build_ended(alice, acme, finished_build):
    r = alice.post(f"/api/v1/builds/{finished_build.pk}/cancel")
    assert r.status_code == 409 and r.json()["detail"] == "build is succeeded: cannot cancel"
    queued = ImageBuild.objects.create(organization=acme, version="4.3.0", channel="beta", platforms=["pxe"])
    r = alice.post(f"/api/v1/builds/{queued.pk}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert alice.post(f"/api/v1/builds/{queued.pk}/cancel").status_code == 409


def test_publish_is_refused_unless_succeeded(alice, acme):
    queued = ImageBuild.objects.create(organization=acme, version="4.3.0", channel="beta", platforms=["pxe"])
    r = alice.post(f"/api/v1/builds/{queued.pk}/publish", {"channel": "alpha"}, format="json")
    assert r.status_code == 409 and "only a succeeded build" in r.json()["detail"]
    r = alice.post(f"/api/v1/builds/{queued.pk}/publish", {"channel": "nightly"}, format="json")
    assert r.status_code == 400


def test_the_log_is_text(alice, finished_build):
    r = alice.get(f"/api/v1/builds/{finished_build.pk}/log")
    assert r.status_code == 200 and r["Content-Type"].startswith("text/plain")
    assert r.content.decode() == "== prepare\n$ mkfs.ext4 ...\ndone\n"
    r = alice.get(f"/api/v1/builds/{finished_build.pk}/log?offset=11")
    assert r.content.decode() == "$ mkfs.ext4 ...\ndone\n" and r["X-Log-Offset"] == "32"
